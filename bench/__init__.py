"""Benchmarks: side-by-side ratios, run as scripts (python bench/NAME.py)."""
