"""DVC stage `simplify@<model>`: onnx-graphsurgeon constant folding, clean-up, toposort, shape inference; node counts to metrics."""
from pipeline import steps
from pipeline.cli import model_stage

if __name__ == "__main__":
    model_stage(steps.simplify, __doc__)
