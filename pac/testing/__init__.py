"""Helpers for tests and benchmarks: tiny random-weight models with real tokenizers."""
