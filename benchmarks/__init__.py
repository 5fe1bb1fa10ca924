"""Benchmarks: scripts that print comparable numbers (run them as `python benchmarks/<name>.py`)."""
