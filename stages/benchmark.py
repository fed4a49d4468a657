"""DVC stage `benchmark@<build>`: latency percentiles and throughput over the configured batch-size sweep."""
from pipeline import steps
from pipeline.cli import build_stage

if __name__ == "__main__":
    build_stage(steps.benchmark, __doc__)
