"""Benchmarks: each module is a script (`python benchmarks/NAME.py`) that writes
`benchmarks/results/NAME.json`; the tests import some to assert bounds on the same measurements."""
