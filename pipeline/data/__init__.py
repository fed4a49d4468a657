"""Data layer: real offline datasets, deterministic splits, calibration draws and manifests."""
from .datasets import Dataset, load_dataset
from .splits import Splits, calibration_indices, check_disjoint, make_manifest, make_splits, search_indices

__all__ = ["Dataset", "Splits", "calibration_indices", "check_disjoint", "load_dataset", "make_manifest", "make_splits", "search_indices"]
