"""The benchmarks behind bench.py, one module per concern (python bench.py --help)."""
