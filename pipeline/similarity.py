"""Numeric comparisons shared by validation (evaluate) and the precision search (onnx_tools)."""
from __future__ import annotations

from typing import Optional, Sequence

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


def output_problems(name: str, candidate, reference) -> list:
    """What makes a candidate output unusable whatever its agreement metrics say: non-finite values;
    one answer for every sample where the reference varies (e.g. an engine that outputs zeros); or a
    reference that is itself the same for every sample, against which no comparison measures anything.
    ``candidate``/``reference``: batch-first arrays, or lists of per-sample arrays of differing shapes."""
    problems = []
    for label, values in (("the FP32 reference", reference), ("the candidate", candidate)):
        bad = sum(int((~np.isfinite(v)).sum()) for v in (values if isinstance(values, list) else [values]))
        if bad:
            size = sum(v.size for v in (values if isinstance(values, list) else [values]))
            problems.append(f"output '{name}' of {label} has {bad} NaN/Inf values of {size}")
    if len(candidate) > 1 and not problems:
        def constant(values) -> bool:
            return all(v.shape == values[0].shape and np.array_equal(v, values[0]) for v in values[1:])

        if constant(reference):
            problems.append(f"output '{name}' of the FP32 reference is the same for all {len(reference)} samples: comparing with it "
                            f"measures nothing (a model that answers alike for every input, or data that does not vary)")
        elif constant(candidate):
            problems.append(f"output '{name}' of the candidate is the same for all {len(candidate)} samples; the FP32 reference's is not")
    return problems


def class_axis_problem(name: str, shape: Sequence[int], axis: int, task: str) -> Optional[str]:
    """Why argmax over ``axis`` of an output of ``shape`` (batch first) measures nothing, or None."""
    if not -len(shape) <= axis < len(shape) or axis % len(shape) == 0:
        return (f"{task} takes the argmax over class_axis {axis}, which output '{name}' of shape {list(shape)} does not have "
                f"(axis 0 is the batch)")
    if shape[axis] == 1:
        return (f"{task} takes the argmax over class_axis {axis} of output '{name}' of shape {list(shape)}, which has size 1: "
                f"agreement would read 1.0 whatever the output; set the model's class_axis to the class scores' axis, or task: tensor "
                f"(per-output error gates)")
    return None
