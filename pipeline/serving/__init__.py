"""Serving layer: Triton model repositories for a build, a real Triton Inference Server process,
and light load generation through Triton's client. Above backends and evaluate; called by steps."""
