"""Transform: raw object bodies → warehouse rows. Pure functions: no I/O, no clock, no randomness.

See docs/architecture.md: this stage imports only the foundation (`loader.common`), never
extract, load or the pipeline.
"""
