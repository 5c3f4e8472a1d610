"""Benchmarks of the protocol core (run ``python -m bench.run``; see bench/README.md)."""
