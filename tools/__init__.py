"""Development tooling beside the runtime package: the demo and the local servers.

Never shipped (the Lambda zip and the wheel carry `loader/` only) and never imported by
`loader/`, except lazily by the CLI's `demo` subcommand. Importable from a checkout: pytest puts
the repository root on `sys.path`, and `make demo` runs `python -m tools.demo` from it.
"""
