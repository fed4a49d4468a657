"""The PyTorch models the pipeline starts from, made deterministically.

* ``digits_cnn``: a small CNN trained here on the digits training split (fixed seed, one thread,
  deterministic algorithms, and float kernels that give the same bits on every x86-64 CPU kind), so
  INT8-vs-FP32 accuracy is meaningful.
* ``torchvision``: an architecture by name. Without weights offline, weights are random and the
  BatchNorm statistics are re-estimated on real training images (on the same portable kernels) so
  outputs differ per image.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable

from ..config.schema import ModelConfig, ModelSource
from ..data import Dataset, Splits
from ..errors import PipelineError
from ..files import atomic_path
from ..scoped import deterministic_torch, portable_float_kernels


def _digits_cnn(num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes),
    )


def _hf_encoder(cfg: ModelConfig):
    """A Hugging Face encoder from a local directory, with the sentence-transformers head:
    mean pooling over the attention mask, then L2 normalisation."""
    from torch import nn
    from transformers import AutoModel

    from ..data.resources import resolve_path

    encoder = AutoModel.from_pretrained(str(resolve_path(cfg.weights_path)), attn_implementation="eager")
    input_names = [spec.name for spec in cfg.inputs]

    class MeanPooledEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, *inputs):
            named = dict(zip(input_names, inputs))
            hidden = self.encoder(**named).last_hidden_state
            mask = named["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1)

    return MeanPooledEncoder().eval()


def build_torch_model(cfg: ModelConfig):
    """The untrained architecture for ``cfg`` (weights seeded by ``cfg.seed``)."""
    import torch

    torch.manual_seed(cfg.seed)
    if cfg.source == ModelSource.digits_cnn:
        return _digits_cnn(cfg.num_classes)
    if cfg.source == ModelSource.hf_transformer:
        return _hf_encoder(cfg)
    if cfg.source == ModelSource.torchvision:
        import torchvision

        names = sorted(torchvision.models.list_models(module=torchvision.models))
        if cfg.architecture not in names:
            raise PipelineError(f"unknown torchvision architecture '{cfg.architecture}'; available: {', '.join(names)}")
        return torchvision.models.get_model(cfg.architecture, weights=None, num_classes=cfg.num_classes)
    raise PipelineError(f"model source '{cfg.source.value}' has no PyTorch model to prepare")


def _train(model, cfg: ModelConfig, dataset: Dataset, splits: Splits, progress: Callable[[str], None]) -> None:
    import torch

    if dataset.labels is None:
        raise PipelineError(f"model training needs a labelled dataset; '{dataset.name}' has no labels")
    images = torch.from_numpy(dataset.load(splits.train)[cfg.inputs[0].name])
    labels = torch.from_numpy(dataset.labels[splits.train])
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
    model.train()
    for epoch in range(cfg.train.epochs):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(order), cfg.train.batch_size):
            batch = order[start : start + cfg.train.batch_size]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        scheduler.step()
        progress(f"epoch {epoch + 1}/{cfg.train.epochs} loss {total / len(order):.4f}")
    model.eval()


def _recalibrate_batchnorm(model, cfg: ModelConfig, dataset: Dataset, splits: Splits) -> None:
    """Cumulative-average BatchNorm statistics over real training images (weights untouched)."""
    import torch

    batch_size = 32
    indices = splits.train[: cfg.bn_recalibration_batches * batch_size]
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average instead of exponential
    model.train()
    with torch.no_grad():
        for _, feeds in dataset.batches(indices, batch_size):
            model(torch.from_numpy(feeds[cfg.inputs[0].name]))
    model.eval()


def prepare_checkpoint(cfg: ModelConfig, dataset: Dataset, splits: Splits, out_path: Path, progress: Callable[[str], None] = lambda _: None) -> None:
    """Build the model, train or re-estimate it, and save its state_dict atomically."""
    # Training compounds last-bit differences over thousands of steps, and BatchNorm statistics are sums
    # over whole convolution outputs: both run on the portable kernels, so every x86-64 CPU gives the same
    # checkpoint (tests/test_reproducible.py holds its hash). Loading weights computes nothing.
    loads_weights = bool(cfg.weights_path) and cfg.source == ModelSource.torchvision
    computes = not loads_weights and (cfg.train is not None or cfg.bn_recalibration_batches > 0)
    if computes and not portable_float_kernels():
        progress("[yellow]torch computed before in this process, with its kernels for this CPU: the checkpoint may differ "
                 "in its last bits from one made on another CPU kind[/yellow]")
    import torch

    with deterministic_torch():  # bitwise-reproducible training and BatchNorm statistics
        model = build_torch_model(cfg)
        if loads_weights:
            model.load_state_dict(load_checkpoint(cfg.weights_path))
        elif cfg.train is not None:
            _train(model, cfg, dataset, splits, progress)
        elif cfg.bn_recalibration_batches > 0:
            _recalibrate_batchnorm(model, cfg, dataset, splits)
    model.eval()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_checkpoint(path: str | os.PathLike):
    import torch

    if not Path(path).is_file():
        raise PipelineError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for a bad file
        raise PipelineError(f"cannot read checkpoint {path}: {exc}") from exc
