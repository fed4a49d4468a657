"""Evaluate layer: accuracy/agreement against the FP32 reference, gates, latency benchmarks."""
