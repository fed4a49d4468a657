"""DVC stage `build@<build>`: the target backend's artifact (ORT optimized model, TensorRT plan) plus a sidecar JSON."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.build, __doc__)
