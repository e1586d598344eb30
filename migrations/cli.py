"""`clickstream-migrate`: Alembic's own command line, bound to the migrations installed with it.

A DBA who installed the wheel has no checkout and no `alembic.ini`, so this names the script
directory itself (the folder this file lives in) and leaves everything else to Alembic: the
same commands and options (`upgrade head`, `--sql`, `-x adopt_original_etl=true`, `downgrade -1`,
`current`, `check`), and `env.py` reads the same DW_PG_* settings as the loader.

The logging matches alembic.ini's (the migration steps at INFO on stderr, everything else at
WARNING), since there is no ini file for env.py to configure it from.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from loader.config import ConfigError

SCRIPT_LOCATION = Path(__file__).resolve().parent
PROG = "clickstream-migrate"

#: Commands that write revision files: they belong in a checkout, never in site-packages.
_AUTHORING_COMMANDS = frozenset({"init", "revision", "merge", "edit", "list_templates"})
_LOG_FORMAT = "%(asctime)s %(levelname)-5.5s [%(name)s] %(message)s"


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> None:
    try:  # only here, so a loader installed without the extra is told what to install
        from alembic.config import CommandLine, Config
    except ImportError:
        sys.exit(
            f"{PROG} needs Alembic, which the loader itself does not: "
            "pip install 'clickstream-loader[migrations]'"
        )

    cli = CommandLine(prog=PROG)
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    if options.config:
        cli.parser.error(
            "-c/--config does not apply: this runs the migrations installed with it "
            f"({SCRIPT_LOCATION}); use alembic from a checkout for another configuration"
        )
    if options.cmd[0].__name__ in _AUTHORING_COMMANDS:
        cli.parser.error(
            f"{options.cmd[0].__name__} writes revision files: run it with alembic in a checkout"
        )
    config = Config(ini_section=options.name, cmd_opts=options)
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.set_main_option("path_separator", "os")
    config.set_main_option("output_encoding", "utf-8")
    _configure_logging()
    try:
        cli.run_cmd(config, options)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
