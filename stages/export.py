"""DVC stage `export@<model>`: PyTorch checkpoint -> ONNX with named inputs/outputs and a dynamic batch axis."""
from pipeline import steps
from pipeline.cli import model_stage

if __name__ == "__main__":
    model_stage(steps.export, __doc__)
