"""Accuracy against labels and agreement with the FP32 reference, and the gates that judge them."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config.schema import Gates, Task
from ..data import Dataset
from ..backends import Runner
from ..similarity import output_problems, row_cosine


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Dict[str, float]:
    """Per-output error metrics of ``candidate`` against ``reference`` (both batch-first)."""
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    cosine = row_cosine(reference, candidate)
    difference = candidate - reference
    return {  # NaN where an output is not finite: written as null, and no gate passes on it
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_error": float(np.abs(difference).max()),
        "rel_l2_error": float(np.linalg.norm(difference) / max(np.linalg.norm(reference), 1e-30)),
    }


class CachedRunner(Runner):
    """Replays a runner's outputs for feeds it has seen (the FP32 reference during a search)."""

    def __init__(self, runner: Runner):
        self.runner, self.inputs, self.output_names = runner, runner.inputs, runner.output_names
        self._cache: Dict[bytes, Dict[str, np.ndarray]] = {}

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(feeds):
            digest.update(name.encode() + str(feeds[name].shape).encode() + np.ascontiguousarray(feeds[name]).tobytes())
        key = digest.digest()
        if key not in self._cache:
            self._cache[key] = self.runner.run(feeds)
        return self._cache[key]


def retrieval_agreement(reference: np.ndarray, candidate: np.ndarray, k: int = 5) -> Dict[str, float]:
    """Nearest-neighbour search among the samples themselves: does the candidate find FP32's?"""

    def neighbours(vectors: np.ndarray) -> np.ndarray:
        unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        similarity = unit @ unit.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1, kind="stable")[:, :k]

    want, got = neighbours(reference.astype(np.float64)), neighbours(candidate.astype(np.float64))
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(want, got)])
    return {"retrieval_agreement": float((want[:, 0] == got[:, 0]).mean()), f"retrieval_top{k}_overlap": float(overlap)}


def evaluate(
    candidate: Runner,
    reference: Runner,
    dataset: Dataset,
    indices: Sequence[int],
    task: Task = Task.classification,
    batch_size: int = 64,
    on_batch: Callable[[int], None] = lambda _: None,
) -> dict:
    """Run both models over ``indices``; return task metrics (if labelled) and agreement metrics."""
    outputs: Dict[str, List[np.ndarray]] = {}
    references: Dict[str, List[np.ndarray]] = {}
    for chunk, feeds in dataset.batches(indices, batch_size):
        got = candidate.run(feeds)
        want = reference.run(feeds)
        for name, value in got.items():
            outputs.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
        for name, value in want.items():
            references.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
        on_batch(len(chunk))
    per_output, problems = {}, []
    for name in candidate.output_names:
        if name not in references:
            continue
        want, got = np.concatenate(references[name]), np.concatenate(outputs[name])
        per_output[name] = compare_outputs(want, got)
        problems += output_problems(name, got, want)
    main_output = candidate.output_names[0]
    got_logits = np.concatenate(outputs[main_output])
    want_logits = np.concatenate(references[main_output])
    metrics: dict = {
        "num_samples": len(indices),
        "cosine_mean": per_output[main_output]["cosine_mean"],
        "cosine_min": per_output[main_output]["cosine_min"],
        "outputs": per_output,
        "output_problems": problems,
    }
    if task == Task.embedding:
        metrics.update(retrieval_agreement(want_logits, got_logits))
        return metrics
    metrics["top1_agreement"] = float((got_logits.argmax(axis=1) == want_logits.argmax(axis=1)).mean())
    if dataset.labels is not None:
        labels = dataset.labels[list(indices)]
        metrics["accuracy"] = float((got_logits.argmax(axis=1) == labels).mean() * 100.0)
        metrics["reference_accuracy"] = float((want_logits.argmax(axis=1) == labels).mean() * 100.0)
        metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
    return metrics


def with_headroom(gates: Gates, headroom: float) -> Gates:
    """Gates tightened by ``headroom`` of their distance to perfect (agreement and cosine 1.0, drop 0)."""
    def tighter(limit: Optional[float], perfect: float) -> Optional[float]:
        return None if limit is None else limit + (perfect - limit) * headroom

    return Gates(max_accuracy_drop=tighter(gates.max_accuracy_drop, 0.0), min_top1_agreement=tighter(gates.min_top1_agreement, 1.0),
                 min_cosine=tighter(gates.min_cosine, 1.0), min_retrieval_agreement=tighter(gates.min_retrieval_agreement, 1.0))


def check_gates(metrics: dict, gates: Gates) -> List[str]:
    """One message per missed gate, naming the metric, its value and the limit; broken outputs
    (NaN/Inf, constant) fail whatever the gates are."""
    failures = list(metrics.get("output_problems", []))

    def check(metric: str, limit: Optional[float], ok: Callable[[float, float], bool], relation: str) -> None:
        if limit is None:
            return
        value = metrics.get(metric)
        if value is None:
            failures.append(f"{metric}: not measured (no labels?), limit {relation} {limit}")
        elif not np.isfinite(value):
            failures.append(f"{metric} = {value} (outputs not finite), limit {relation} {limit}")
        elif not ok(value, limit):
            failures.append(f"{metric} = {value:.4f}, limit {relation} {limit}")

    check("accuracy_drop", gates.max_accuracy_drop, lambda v, lim: v <= lim, "<=")
    check("top1_agreement", gates.min_top1_agreement, lambda v, lim: v >= lim, ">=")
    check("cosine_mean", gates.min_cosine, lambda v, lim: v >= lim, ">=")
    check("retrieval_agreement", gates.min_retrieval_agreement, lambda v, lim: v >= lim, ">=")
    return failures
