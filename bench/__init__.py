"""Benchmark scripts whose output goes into BENCHMARKS.md (``python bench/<name>.py``)."""
