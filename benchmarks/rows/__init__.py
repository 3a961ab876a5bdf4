"""Benchmark rows, one module per group. Each module defines ``ROWS``: an ordered mapping of row name
to a function ``(Settings) -> Row`` (or ``-> list[Row]``). benchmarks/run.py runs the modules in
file-name order."""
