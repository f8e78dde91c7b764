"""Benchmarks of the pipeline (issue 7); not tests. `make bench` (`python -m benchmarks.run`) runs them all.

Each benchmark is `benchmarks/<name>.py`, runnable as `python -m benchmarks.<name> [--quick] [--repeats N]`,
and writes `benchmarks/results/<name>.json` (every repeat, settings, machine) and `<name>.md` (a section with
a table of medians and PASS/MISS against the issue's targets). Measurements run in temporary clones of the
project, never in the checkout's own mlflow.db, data/ or models/. See benchmarks/README.md.
"""
