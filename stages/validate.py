"""DVC stage `validate@<build>`: accuracy and agreement with the FP32 reference on the held-out split; gates fail the stage."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.validate, __doc__)
