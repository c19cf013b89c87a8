"""Side-by-side measurements, run as modules from the repository root: python -m benchmarks.NAME."""
