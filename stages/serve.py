"""DVC stage `serve@<build>`: the build on a real Triton server: readiness, served-vs-offline agreement, p99 and throughput under load."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.serve, __doc__)
