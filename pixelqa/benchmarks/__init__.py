"""Benchmarks: timed comparisons printed as `name: value` lines (python -m pixelqa.bench <name>)."""
