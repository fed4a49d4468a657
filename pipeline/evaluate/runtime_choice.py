"""Choosing a runtime by measurement, as Triton Model Navigator does: every candidate runtime's artifact
is gated against the FP32 reference and timed side by side with the others on the same feeds; the fastest
that passes wins. A near-tie keeps the listed order, so reruns on one host choose the same runtime."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..backends import Runner
from ..config.schema import Gates, ModelConfig, RuntimeSelection
from ..data.datasets import Dataset
from .benchmark import side_by_side
from .validate import CachedRunner, check_gates, evaluate


@dataclass
class Candidate:
    runtime: str
    runner: Optional[Runner] = None  # None: it could not be built or loaded (``error`` says why)
    error: str = ""
    build_seconds: float = 0.0
    gate_failures: List[str] = field(default_factory=list)
    metrics: Dict[str, float] = field(default_factory=dict)
    ms: Dict[int, float] = field(default_factory=dict)  # median latency per batch size

    @property
    def passed(self) -> bool:
        return self.runner is not None and not self.gate_failures

    def as_metrics(self) -> dict:
        row = {"runtime": self.runtime, "build_seconds": self.build_seconds, "passed": self.passed}
        if self.error:
            row["error"] = self.error
        if self.runner is not None:
            row.update(gate_failures=self.gate_failures, gate_metrics=self.metrics,
                       ms={f"batch_{b}": ms for b, ms in sorted(self.ms.items())})
        return row


def gate_candidates(candidates: Sequence[Candidate], reference: Runner, dataset: Dataset, samples: Sequence[int],
                    model: ModelConfig, gates: Gates) -> None:
    """Each built candidate's outputs on ``samples`` against the reference's (computed once), by the model's gates."""
    cached = CachedRunner(reference)
    for candidate in candidates:
        if candidate.runner is None:
            continue
        metrics = evaluate(candidate.runner, cached, dataset, samples, model, batch_size=model.batch_size(64))
        candidate.metrics = {k: metrics[k] for k in ("cosine_mean", "top1_agreement", "accuracy_drop", "retrieval_agreement",
                                                     "topk_agreement") if k in metrics}
        candidate.gate_failures = check_gates(metrics, gates)


def time_candidates(candidates: Sequence[Candidate], feeds: Callable[[int], Dict[str, np.ndarray]],
                    batch_sizes: Sequence[int], on_batch: Callable[[int, Dict[str, float]], None] = lambda *_: None) -> None:
    """The candidates that passed, timed in alternating blocks at each batch size (short blocks: this
    ranks runtimes that differ by tens of percent; the benchmark stage measures the winner properly)."""
    runners = {c.runtime: c.runner for c in candidates if c.passed}
    if len(runners) < 2:
        return
    for batch_size in batch_sizes:
        ms = side_by_side(runners, feeds(batch_size), rounds=2, block=2, block_seconds=0.05)
        for candidate in candidates:
            if candidate.runtime in ms:
                candidate.ms[batch_size] = ms[candidate.runtime]
        on_batch(batch_size, ms)


def choose(candidates: Sequence[Candidate], selection: RuntimeSelection) -> tuple:
    """(the chosen candidate, why in words), or (None, why none could be chosen). Candidates are in the
    target's order of preference; a later one must beat the current choice by ``min_gain`` (geometric
    mean of the latency ratios over the batch sizes)."""
    passed = [c for c in candidates if c.passed]
    if not passed:
        return None, "; ".join(f"{c.runtime}: {c.error or 'gates missed: ' + '; '.join(c.gate_failures)}" for c in candidates)
    chosen = passed[0]
    for challenger in passed[1:]:
        if _gain(chosen, challenger) >= selection.min_gain:
            chosen = challenger
    others = [c for c in candidates if c is not chosen]
    if not others:
        return chosen, f"{chosen.runtime} is the only candidate"
    reasons = []
    for other in others:
        if not other.passed:
            reasons.append(f"{other.runtime} {'could not be built: ' + other.error if other.error else 'missed the gates'}")
        else:
            gain = _gain(other, chosen)
            reasons.append(f"{gain:.2f}x {other.runtime}'s speed" + ("" if gain >= 1.0 else
                           f" (within min_gain {selection.min_gain:g}: listed first)"))
    batches = ", ".join(str(b) for b in sorted(chosen.ms)) or "-"
    return chosen, f"{chosen.runtime}: passes the gates, {'; '.join(reasons)} (geometric mean over batches {batches})"


def _gain(current: Candidate, challenger: Candidate) -> float:
    """How many times faster ``challenger`` ran than ``current`` (geometric mean over shared batch sizes)."""
    shared = sorted(set(current.ms) & set(challenger.ms))
    if not shared:
        return 1.0
    return math.exp(sum(math.log(current.ms[b] / challenger.ms[b]) for b in shared) / len(shared))
