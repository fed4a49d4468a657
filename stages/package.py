"""DVC stage `package@<build>`: Triton model repositories for the build (native and Python-backend forms)."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.package, __doc__)
