"""`python -m clickstream_migrations upgrade head`: the same as `clickstream-migrate`."""

from .cli import main

main()
