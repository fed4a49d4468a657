"""simplify: onnx-graphsurgeon cleanup and folding, with node counts as metrics."""
from __future__ import annotations

from ..config.load import ModelContext
from ..config.schema import PipelineConfig
from ..files import write_json
from ..paths import model_metrics, model_paths


def simplify(cfg: PipelineConfig, ctx: ModelContext) -> dict:
    from ..onnx_tools.simplify import simplify_file

    paths = model_paths(cfg, ctx.name)
    metrics = simplify_file(paths.exported, paths.simplified)
    write_json(model_metrics(cfg, ctx.name) / "simplify.json", metrics)
    return metrics
