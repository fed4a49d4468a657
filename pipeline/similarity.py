"""Numeric comparisons shared by validation (evaluate) and the precision search (onnx_tools)."""
from __future__ import annotations

import numpy as np


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each batch row of ``a`` and ``b``.

    Two all-zero rows are identical (1.0); a zero row against a non-zero row shares no direction
    (0.0); a row holding NaN or Inf has no cosine (NaN), so any mean over it is NaN, never a pass.
    """
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    finite = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    a, b = np.where(finite[:, None], a, 0.0), np.where(finite[:, None], b, 0.0)
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (norm_a == 0) & (norm_b == 0)
    cosine = (a * b).sum(axis=1) / np.maximum(norm_a * norm_b, 1e-300)
    cosine = np.where(both_zero, 1.0, np.clip(cosine, -1.0, 1.0))
    return np.where(finite, cosine, np.nan)


def output_problems(name: str, candidate: np.ndarray, reference: np.ndarray) -> list:
    """What makes a candidate output unusable whatever its agreement metrics say: non-finite values,
    or one answer for every sample where the reference varies (e.g. an engine that outputs zeros)."""
    problems = []
    for label, values in (("the FP32 reference", reference), ("the candidate", candidate)):
        bad = int((~np.isfinite(values)).sum())
        if bad:
            problems.append(f"output '{name}' of {label} has {bad} NaN/Inf values of {values.size}")
    if len(candidate) > 1 and not problems:
        constant = np.all(candidate == candidate[:1])
        if constant and not np.all(reference == reference[:1]):
            problems.append(f"output '{name}' of the candidate is the same for all {len(candidate)} samples; the FP32 reference's is not")
    return problems
