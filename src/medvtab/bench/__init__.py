"""Benchmark grids, the results store, executors and reports."""
