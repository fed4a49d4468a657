"""Accuracy against labels and agreement with the FP32 reference, and the gates that judge them."""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from ..config.schema import Gates, ModelConfig, OutputGate, Task
from ..data import Dataset
from ..backends import Runner
from ..errors import PipelineError
from ..similarity import class_axis_problem, output_problems, row_cosine


Samples = Union[np.ndarray, List[np.ndarray]]  # batch-first array, or one array per sample where shapes differ


def compare_outputs(reference: Samples, candidate: Samples) -> Dict[str, float]:
    """Per-output error metrics of ``candidate`` against ``reference`` (batch-first, or per sample)."""
    if isinstance(reference, np.ndarray) and isinstance(candidate, np.ndarray):
        reference, candidate = reference.astype(np.float64), candidate.astype(np.float64)
        cosine = row_cosine(reference, candidate)
        difference = candidate - reference
        max_abs, diff_norm, ref_norm = np.abs(difference).max(), np.linalg.norm(difference), np.linalg.norm(reference)
    else:  # samples of different shapes: the same metrics, one sample at a time
        pairs = [(r.astype(np.float64), c.astype(np.float64)) for r, c in zip(reference, candidate)]
        cosine = np.array([row_cosine(r[None], c[None])[0] for r, c in pairs])
        max_abs = max(float(np.abs(c - r).max()) for r, c in pairs)
        diff_norm = float(np.sqrt(sum(float(((c - r) ** 2).sum()) for r, c in pairs)))
        ref_norm = float(np.sqrt(sum(float((r ** 2).sum()) for r, _ in pairs)))
    return {  # NaN where an output is not finite: written as null, and no gate passes on it
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "max_abs_error": float(max_abs),
        "rel_l2_error": float(diff_norm / max(ref_norm, 1e-30)),
    }


def _argmax(values: Samples, axis: int) -> List[np.ndarray]:
    """Per sample, the argmax over the output's ``axis`` (counted with the batch axis)."""
    if isinstance(values, np.ndarray):
        return list(values.argmax(axis=axis))
    return [row.argmax(axis=axis - 1 if axis > 0 else axis) for row in values]


def _topk_agreement(reference: Samples, candidate: Samples, k: int) -> float:
    """Mean overlap of each sample's k highest scores' indices (flattened), FP32 against the candidate."""
    overlaps = []
    for want, got in zip(reference, candidate):
        want, got = want.reshape(-1), got.reshape(-1)
        top = min(k, want.size)
        overlaps.append(len(set(np.argsort(-want, kind="stable")[:top]) & set(np.argsort(-got, kind="stable")[:top])) / top)
    return float(np.mean(overlaps))


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


def _join(parts: List[np.ndarray]) -> Samples:
    """Batches of one output joined: one array where every sample has the same shape, else per sample."""
    if len({p.shape[1:] for p in parts}) == 1:
        return np.concatenate(parts)
    return [row for part in parts for row in part]


def evaluate(
    candidate: Runner,
    reference: Runner,
    dataset: Dataset,
    indices: Sequence[int],
    model: ModelConfig = ModelConfig(),
    batch_size: int = 64,
    on_batch: Callable[[int], None] = lambda _: None,
) -> dict:
    """Run both models over ``indices``; return every output's error against FP32, the model's task
    metrics (agreement, accuracy with labels) and what makes an output unusable whatever the gates."""
    task, class_axis, score_output, top_k = model.task, model.class_axis, model.score_output, model.top_k
    outputs: Dict[str, List[np.ndarray]] = {}
    references: Dict[str, List[np.ndarray]] = {}
    order: List[int] = []
    for chunk, feeds in dataset.batches(indices, batch_size):
        order += chunk
        for runner, store in ((candidate, outputs), (reference, references)):
            for name, value in runner.run(feeds).items():
                value = np.asarray(value, dtype=np.float32)
                if len(chunk) == 1 and (value.ndim == 0 or value.shape[0] != 1):
                    value = value[None]  # a one-sample model's output without a batch axis (a returned state)
                store.setdefault(name, []).append(value)
        on_batch(len(chunk))
    per_output, problems = {}, []
    got_all, want_all = {}, {}
    for name in candidate.output_names:
        if name not in references:
            continue
        want_all[name], got_all[name] = _join(references[name]), _join(outputs[name])
        per_output[name] = compare_outputs(want_all[name], got_all[name])
        problems += output_problems(name, got_all[name], want_all[name])
    main_output = score_output if task == Task.detection and score_output else candidate.output_names[0]
    if main_output not in got_all:
        raise PipelineError(f"score_output '{main_output}' is not an output of the model; its outputs are {list(got_all)}")
    got, want = got_all[main_output], want_all[main_output]
    metrics: dict = {
        "num_samples": len(indices),
        "cosine_mean": per_output[main_output]["cosine_mean"],
        "cosine_min": per_output[main_output]["cosine_min"],
        "outputs": per_output,
        "output_problems": problems,
    }
    if task == Task.embedding:
        metrics.update(retrieval_agreement(np.asarray(want), np.asarray(got)))
    elif task in (Task.classification, Task.sequence):
        shape = want.shape if isinstance(want, np.ndarray) else (len(want), *want[0].shape)
        problem = class_axis_problem(main_output, shape, class_axis, task.value)
        if problem:
            raise PipelineError(problem)
        got_ids, want_ids = _argmax(got, class_axis), _argmax(want, class_axis)
        matches = [g == w for g, w in zip(got_ids, want_ids)]
        metrics["top1_agreement"] = float(np.concatenate([np.ravel(m) for m in matches]).mean())
        if task == Task.sequence:  # a recognizer's whole reading, every step alike
            metrics["sequence_exact_match"] = float(np.mean([bool(np.all(m)) for m in matches]))
        if dataset.labels is not None and all(np.ndim(w) == 0 for w in want_ids):
            labels = dataset.labels[order]
            metrics["accuracy"] = float((np.array(got_ids) == labels).mean() * 100.0)
            metrics["reference_accuracy"] = float((np.array(want_ids) == labels).mean() * 100.0)
            metrics["accuracy_drop"] = metrics["reference_accuracy"] - metrics["accuracy"]
    elif task == Task.detection and score_output:
        metrics["topk_agreement"] = _topk_agreement(want, got, top_k)
    return metrics


def with_headroom(gates: Gates, headroom: float) -> Gates:
    """Gates tightened by ``headroom`` of their distance to perfect (agreement and cosine 1.0, drop 0)."""
    def tighter(limit: Optional[float], perfect: float) -> Optional[float]:
        return None if limit is None else limit + (perfect - limit) * headroom

    def output_gate(gate: OutputGate) -> OutputGate:
        return OutputGate(min_cosine=tighter(gate.min_cosine, 1.0), max_rel_l2=tighter(gate.max_rel_l2, 0.0),
                          max_abs_error=tighter(gate.max_abs_error, 0.0))

    return Gates(max_accuracy_drop=tighter(gates.max_accuracy_drop, 0.0), min_top1_agreement=tighter(gates.min_top1_agreement, 1.0),
                 min_cosine=tighter(gates.min_cosine, 1.0), min_retrieval_agreement=tighter(gates.min_retrieval_agreement, 1.0),
                 min_topk_agreement=tighter(gates.min_topk_agreement, 1.0), every_output=output_gate(gates.every_output),
                 outputs={name: output_gate(gate) for name, gate in gates.outputs.items()})


def check_gates(metrics: dict, gates: Gates) -> List[str]:
    """One message per missed gate, naming the metric, its value and the limit; broken outputs
    (NaN/Inf, constant) fail whatever the gates are."""
    failures = list(metrics.get("output_problems", []))

    def check(metric: str, limit: Optional[float], ok: Callable[[float, float], bool], relation: str, source: Optional[dict] = None) -> None:
        if limit is None:
            return
        value = (metrics if source is None else source).get(metric)
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
    check("topk_agreement", gates.min_topk_agreement, lambda v, lim: v >= lim, ">=")
    unknown = sorted(set(gates.outputs) - set(metrics.get("outputs", {})))
    if unknown and metrics.get("outputs"):
        failures.append(f"gates.outputs names {unknown}, which the model does not output; its outputs are {sorted(metrics['outputs'])}")
    for name, errors in metrics.get("outputs", {}).items():  # every output bounded: a wrecked second output fails too
        gate = gates.for_output(name)
        before = len(failures)
        check("cosine_mean", gate.min_cosine, lambda v, lim: v >= lim, ">=", errors)
        check("rel_l2_error", gate.max_rel_l2, lambda v, lim: v <= lim, "<=", errors)
        check("max_abs_error", gate.max_abs_error, lambda v, lim: v <= lim, "<=", errors)
        failures[before:] = [f"output '{name}' {failure}" for failure in failures[before:]]
    return failures
