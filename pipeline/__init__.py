"""trt-pipeline: declarative PyTorch -> ONNX -> calibrated engine pipeline.

Layers, each importing only from those above it:
config -> data -> onnx_tools -> backends -> evaluate -> report.
"""
__version__ = "0.1.0"
