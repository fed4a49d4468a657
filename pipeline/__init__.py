"""trt-pipeline: declarative PyTorch -> ONNX -> calibrated engine pipeline.

Layers, each importing only from those above it:
config -> data -> models -> onnx_tools -> backends -> evaluate -> serving -> report; steps/ on top.
"""
import os

# The pipeline runs offline: ONNX Runtime's telemetry (1.32 on Linux) would try the network and
# leave a session file in the system temp folder on every import.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
