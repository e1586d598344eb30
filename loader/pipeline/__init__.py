"""Pipeline: one UTC hour through extract → transform → load, and the runs made of hours
(scheduled runs and their lookback, day runs, the fan-out's finalize).

See docs/architecture.md: the only package that knows all three stages; entry points sit above.
"""
