"""DVC stage `report`: one precision table and accuracy-vs-latency plot across all builds."""
from pathlib import Path

from pipeline.cli import load_stage_params, run_stage
from pipeline.report.summary import write_report


def main() -> None:
    cfg = load_stage_params("params.yaml")
    write_report(cfg, Path("reports/summary.md"), Path(cfg.metrics_dir) / "summary.json", Path(cfg.plots_dir) / "accuracy_vs_latency.json")


if __name__ == "__main__":
    run_stage(main)
