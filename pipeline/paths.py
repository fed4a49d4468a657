"""Where every artifact lives. One place, so stages, dvc.yaml and tests agree."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config.schema import PipelineConfig


@dataclass(frozen=True)
class ModelPaths:
    root: Path

    @property
    def prepared(self) -> Path:  # what export starts from: a PyTorch checkpoint or the user's ONNX
        return self.root / "prepared"

    @property
    def checkpoint(self) -> Path:
        return self.prepared / "checkpoint.pt"

    @property
    def source_onnx(self) -> Path:
        return self.prepared / "source.onnx"

    @property
    def exported(self) -> Path:
        return self.root / "model.onnx"

    @property
    def simplified(self) -> Path:
        return self.root / "simplified.onnx"


@dataclass(frozen=True)
class BuildPaths:
    root: Path
    metrics: Path

    @property
    def calibrated_dir(self) -> Path:  # model.onnx, manifest.json, report.json, and what the precision adds
        return self.root / "calibrated"

    @property
    def calibration_report(self) -> Path:  # what calibrate did: method, Q/DQ counts, fusions, layers kept float
        return self.calibrated_dir / "report.json"

    @property
    def exclusions(self) -> Path:  # the nodes the build keeps in float (configured, speed guard, accuracy search)
        return self.calibrated_dir / "exclusions.json"

    @property
    def search_report(self) -> Path:  # the accuracy search's steps and layer ranking
        return self.calibrated_dir / "search.json"

    @property
    def calibration_cache(self) -> Path:  # TensorRT 10 targets: the native calibration cache
        return self.calibrated_dir / "calibration.cache"

    @property
    def calibrated(self) -> Path:
        return self.calibrated_dir / "model.onnx"

    @property
    def manifest(self) -> Path:
        return self.calibrated_dir / "manifest.json"

    @property
    def engine_dir(self) -> Path:
        return self.root / "engine"

    @property
    def serving_dir(self) -> Path:  # Triton model repositories: native/<build>, python/<build>
        return self.root / "serving"

    @property
    def serve_metrics(self) -> Path:
        return self.metrics / "serve.json"

    @property
    def batching_metrics(self) -> Path:  # the batching package wrote: configured, or the search's winner and trials
        return self.metrics / "batching.json"

    @property
    def build_metrics(self) -> Path:  # the runtime chosen, each candidate's build time and latency
        return self.metrics / "build.json"

    @property
    def calibrate_metrics(self) -> Path:  # how long calibration took: varies run to run, so not in the artifact
        return self.metrics / "calibrate.json"

    @property
    def validate_metrics(self) -> Path:
        return self.metrics / "validate.json"

    @property
    def benchmark_metrics(self) -> Path:
        return self.metrics / "benchmark.json"


def model_paths(cfg: PipelineConfig, model: str) -> ModelPaths:
    return ModelPaths(Path(cfg.artifacts_dir) / "models" / model)


def model_metrics(cfg: PipelineConfig, model: str) -> Path:
    return Path(cfg.metrics_dir) / "models" / model


def environment_file(cfg: PipelineConfig, target: str) -> Path:
    """What the target's artifacts are tied to (library versions, device): a dependency of calibrate onwards."""
    return Path(cfg.artifacts_dir) / "environment" / f"{target}.json"


def build_paths(cfg: PipelineConfig, build: str) -> BuildPaths:
    return BuildPaths(
        root=Path(cfg.artifacts_dir) / "builds" / build,
        metrics=Path(cfg.metrics_dir) / "builds" / build,
    )
