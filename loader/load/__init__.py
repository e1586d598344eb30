"""Load: the warehouse. The engine and its failure classes, batch writes, quarantine, completion
records, the run ledger and the hour locks.

See docs/architecture.md: this stage imports only the foundation (`loader.common`,
`loader.config`, `loader.schema`, `loader.report`), never extract, transform or the pipeline.
"""
