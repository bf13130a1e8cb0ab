"""Developer tools: the benchmark (python -m benchmarks.bench)."""
