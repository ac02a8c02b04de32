"""Harness shared by the demo, the tests and the benchmarks: a tiny local model, generated
demo data, a scorer started as a background process, and a fake scorer for unit tests.

Both services may be driven by it; neither service imports it.
"""
