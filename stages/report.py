"""DVC stage `report`: one precision table across all builds, and the data of the project's plots."""
from pathlib import Path

from pipeline.cli import run_stage, stage_params
from pipeline.report.summary import write_report


def main() -> None:
    with stage_params("params.yaml") as cfg:
        # The plots stage renders the images the report embeds, into reports/plots.
        write_report(cfg, Path("reports/summary.md"), Path(cfg.metrics_dir) / "summary.json", Path(cfg.plots_dir), images="plots")


if __name__ == "__main__":
    run_stage(main)
