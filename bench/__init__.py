"""Benchmarks: `python -m bench` writes BENCHMARKS.md."""
