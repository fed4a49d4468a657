"""ONNX tools: export, simplify, quantize/convert, inspect."""
