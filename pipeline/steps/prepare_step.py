"""prepare: the model's starting point, a PyTorch checkpoint or the user's ONNX file."""
from __future__ import annotations

import shutil

from ..cli import console
from ..config.load import ModelContext
from ..config.schema import ModelSource, PipelineConfig
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..io import atomic_dir
from ..paths import model_paths


def prepare(cfg: PipelineConfig, ctx: ModelContext) -> None:
    """Train (digits_cnn), instantiate + re-estimate BatchNorm (torchvision), load (Hugging Face)
    into a checkpoint; or take in a bring-your-own ONNX file as it is."""
    paths = model_paths(cfg, ctx.name)
    with atomic_dir(paths.prepared) as out:
        if ctx.model.source == ModelSource.onnx:
            from ..data.resources import resolve_path
            from ..onnx_tools.inspect import external_data_files, load_model

            if not ctx.model.weights_path:
                raise PipelineError(f"model.{ctx.name}.weights_path is not set: point it at your ONNX file")
            source = resolve_path(ctx.model.weights_path)
            load_model(source, "bring-your-own ONNX")  # fail here, clearly, on a broken file
            shutil.copyfile(source, out / paths.source_onnx.name)
            for relative in external_data_files(source):  # weights kept beside the .onnx
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / relative, out / relative)
            return
        from ..models import prepare_checkpoint

        dataset = load_dataset(ctx.dataset_name, ctx.dataset)
        splits = make_splits(dataset, ctx.dataset)
        prepare_checkpoint(ctx.model, dataset, splits, out / paths.checkpoint.name, progress=lambda line: console.print(f"  {line}"))
