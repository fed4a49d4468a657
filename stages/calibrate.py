"""DVC stage `calibrate@<build>`: FP32 passthrough, FP16/BF16 AutoCast, or INT8 Q/DQ from seeded calibration samples, with a manifest."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.calibrate, __doc__)
