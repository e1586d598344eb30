"""`python -m tools.demo [--events N] [--serve] [--json]`: what `make demo` runs, from a checkout.

The same command as `clickstream-loader demo`, which finds this package when the repository root
is on `sys.path`, as `python -m` puts it when run from there.
"""

import sys

from loader.cli import main

main(["demo", *sys.argv[1:]])
