"""`python -m loader`: the same command line as `clickstream-loader`."""

from loader.cli import main

main()
