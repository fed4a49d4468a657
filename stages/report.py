"""DVC stage `report`: one precision table across all builds, and the data of the project's plots."""
from pathlib import Path

from pipeline.cli import load_stage_params, run_stage
from pipeline.report.summary import write_report


def main() -> None:
    cfg = load_stage_params("params.yaml")
    # The plots stage renders the images the report embeds, into reports/plots.
    write_report(cfg, Path("reports/summary.md"), Path(cfg.metrics_dir) / "summary.json", Path(cfg.plots_dir), images="plots")


if __name__ == "__main__":
    run_stage(main)
