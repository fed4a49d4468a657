"""prepare: the model's starting point, a PyTorch checkpoint or the user's ONNX file."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from ..console import console
from ..config.load import ModelContext
from ..config.schema import ModelSource, PipelineConfig
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..files import atomic_dir
from ..paths import model_paths


def prepare(cfg: PipelineConfig, ctx: ModelContext) -> None:
    """Train (digits_cnn), instantiate + re-estimate BatchNorm (torchvision), load (Hugging Face)
    into a checkpoint; or take in a bring-your-own ONNX file as it is."""
    paths = model_paths(cfg, ctx.name)
    with atomic_dir(paths.prepared) as out:
        if ctx.model.source == ModelSource.onnx:
            from ..onnx_tools.inspect import external_data_files, load_model

            source = _user_onnx(ctx.model.weights_path, f"model.{ctx.name}.weights_path")
            load_model(source, "bring-your-own ONNX")  # fail here, clearly, on a broken file
            shutil.copyfile(source, out / paths.source_onnx.name)
            for relative in external_data_files(source):  # weights kept beside the .onnx
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.parent / relative, out / relative)
            return
        from ..models import prepare_checkpoint

        dataset = load_dataset(ctx.dataset_name, ctx.dataset, ctx.model.inputs)
        splits = make_splits(dataset, ctx.dataset)
        prepare_checkpoint(ctx.model, dataset, splits, out / paths.checkpoint.name, progress=lambda line: console.print(f"  {line}"))


def _user_onnx(location: str, key: str) -> Path:
    """The user's ONNX file, or one error saying what the path is instead."""
    from ..data.resources import resolve_path

    if not location:
        raise PipelineError(f"{key} is not set: point it at your ONNX file")
    if not location.startswith("pkg://") and Path(location).is_symlink():
        try:
            Path(location).resolve(strict=True)
        except (RuntimeError, OSError) as exc:  # a loop: RuntimeError on Python 3.11, OSError(ELOOP) on 3.13
            if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
                raise PipelineError(f"{key} = {location} is a symbolic link loop; point it at your ONNX file") from exc
            raise PipelineError(f"{key} = {location} is a broken symbolic link ({os.readlink(location)} does not exist)") from exc
    path = resolve_path(location)
    if path.is_dir():
        raise PipelineError(f"{key} = {location} is a directory; point it at the .onnx file (external data files beside it come along)")
    if path.stat().st_size == 0:
        raise PipelineError(f"{key} = {location} is empty (0 bytes); point it at your ONNX file")
    return path
