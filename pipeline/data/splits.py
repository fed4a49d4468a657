"""Deterministic train/validation splits, seeded calibration draws, and sample manifests."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

from ..config.schema import DatasetConfig
from ..errors import PipelineError
from .datasets import Dataset


@dataclass
class Splits:
    train: List[int]  # training, BatchNorm re-estimation and calibration draw from here
    validation: List[int]  # held out for the validate stage only


def make_splits(dataset: Dataset, cfg: DatasetConfig) -> Splits:
    count = len(dataset)
    if not 0 < cfg.num_validation < count:
        raise PipelineError(
            f"dataset '{dataset.name}': num_validation={cfg.num_validation} must be between 1 and {count - 1}"
        )
    order = np.random.default_rng(cfg.seed).permutation(count)
    validation = sorted(int(i) for i in order[: cfg.num_validation])
    train = sorted(int(i) for i in order[cfg.num_validation :])
    return Splits(train=train, validation=validation)


def calibration_indices(splits: Splits, num_samples: int, seed: int, dataset_name: str = "dataset") -> List[int]:
    """Exactly ``num_samples`` seeded draws (without replacement) from the training split."""
    available = len(splits.train)
    if num_samples <= 0:
        raise PipelineError(f"calibration.num_samples must be positive, got {num_samples}")
    if num_samples > available:
        raise PipelineError(
            f"calibration.num_samples={num_samples} but the calibration split of '{dataset_name}' "
            f"has only {available} samples; lower calibration.num_samples to at most {available}"
        )
    picked = np.random.default_rng(seed).choice(np.asarray(splits.train), size=num_samples, replace=False)
    return sorted(int(i) for i in picked)


def search_indices(splits: Splits, calibration: Sequence[int], num_samples: int, seed: int, dataset_name: str = "dataset") -> List[int]:
    """The accuracy search's own samples: seeded draws from the training split left after
    calibration, so neither calibration nor validation data chooses which layers stay in float."""
    left = sorted(set(splits.train) - set(calibration))
    if num_samples > len(left):
        raise PipelineError(
            f"calibration.search.num_samples={num_samples} but only {len(left)} samples of '{dataset_name}' are left "
            f"after the {len(calibration)} calibration samples; lower calibration.search.num_samples (null: the validation "
            f"split's size) or calibration.num_samples, or give the dataset more samples"
        )
    picked = np.random.default_rng([seed, 1]).choice(np.asarray(left), size=num_samples, replace=False)
    return sorted(int(i) for i in picked)


def check_disjoint(dataset: Dataset, calibration: Sequence[int], validation: Sequence[int]) -> None:
    """Calibration and validation must share no sample, by index and by content."""
    shared = sorted(set(calibration) & set(validation))
    if shared:
        raise PipelineError(
            f"calibration and validation splits of '{dataset.name}' overlap in {len(shared)} samples "
            f"(first: {dataset.ids[shared[0]]}); they must be disjoint"
        )
    validation_hashes = {dataset.sample_hash(i) for i in validation}
    for index in calibration:
        if dataset.sample_hash(index) in validation_hashes:
            raise PipelineError(
                f"calibration sample {dataset.ids[index]} has the same content as a validation "
                f"sample of '{dataset.name}'; the splits must be disjoint"
            )


def make_manifest(dataset: Dataset, indices: Sequence[int], split: str, seed: int) -> dict:
    """Which samples were used: index in the dataset, id (the file, for the user's data) and content hash
    (sha256 of the sample: the file's bytes, float32 pixels or UTF-8 text)."""
    samples = [{"index": i, "id": dataset.ids[i], "sha256": dataset.sample_hash(i)} for i in indices]
    return {"dataset": dataset.name, "split": split, "seed": seed, "num_samples": len(samples), "samples": samples}
