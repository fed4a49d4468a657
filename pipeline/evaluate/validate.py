"""Accuracy against labels and agreement with the FP32 reference, and the gates that judge them."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config.schema import Gates
from ..data import Dataset
from ..backends import Runner


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(denominator > 0, (a * b).sum(axis=1) / np.maximum(denominator, 1e-30), 1.0)


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    """Per-output error metrics of ``candidate`` against ``reference`` (both batch-first)."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    cosine = _cosine(reference, candidate)
    difference = candidate - reference
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_error": float(np.abs(difference).max()),
        "rel_l2_error": float(np.linalg.norm(difference) / max(np.linalg.norm(reference), 1e-30)),
    }


def evaluate(
    candidate: Runner,
    reference: Runner,
    dataset: Dataset,
    indices: Sequence[int],
    batch_size: int = 64,
    on_batch: Callable[[int], None] = lambda _: None,
) -> dict:
    """Run both models over ``indices``; return task accuracy (if labelled) and agreement metrics."""
    input_name = candidate.inputs[0].name
    outputs: Dict[str, List[np.ndarray]] = {}
    references: Dict[str, List[np.ndarray]] = {}
    for chunk, batch in dataset.batches(indices, batch_size):
        got = candidate.run({input_name: batch})
        want = reference.run({reference.inputs[0].name: batch})
        for name, value in got.items():
            outputs.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
        for name, value in want.items():
            references.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
        on_batch(len(chunk))
    per_output = {}
    for name in candidate.output_names:
        if name not in references:
            continue
        per_output[name] = compare_outputs(np.concatenate(references[name]), np.concatenate(outputs[name]))
    main_output = candidate.output_names[0]
    got_logits = np.concatenate(outputs[main_output])
    want_logits = np.concatenate(references[main_output])
    metrics: dict = {
        "num_samples": len(indices),
        "top1_agreement": float((got_logits.argmax(axis=1) == want_logits.argmax(axis=1)).mean()),
        "cosine_mean": per_output[main_output]["cosine_mean"],
        "outputs": per_output,
    }
    if dataset.labels is not None:
        labels = dataset.labels[list(indices)]
        metrics["accuracy"] = float((got_logits.argmax(axis=1) == labels).mean() * 100.0)
        metrics["reference_accuracy"] = float((want_logits.argmax(axis=1) == labels).mean() * 100.0)
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
    return metrics


def check_gates(metrics: dict, gates: Gates) -> List[str]:
    """One message per missed gate, naming the metric, its value and the limit."""
    failures = []

    def check(metric: str, limit: Optional[float], ok: Callable[[float, float], bool], relation: str) -> None:
        if limit is None:
            return
        value = metrics.get(metric)
        if value is None:
            failures.append(f"{metric}: not measured (no labels?), limit {relation} {limit}")
        elif not ok(value, limit):
            failures.append(f"{metric} = {value:.4f}, limit {relation} {limit}")

    check("accuracy_drop", gates.max_accuracy_drop, lambda v, lim: v <= lim, "<=")
    check("top1_agreement", gates.min_top1_agreement, lambda v, lim: v >= lim, ">=")
    check("cosine_mean", gates.min_cosine, lambda v, lim: v >= lim, ">=")
    return failures
