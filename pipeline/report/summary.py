"""Collect every build's validate/benchmark metrics into one table, so a user can pick the fastest
precision inside the accuracy budget."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..config.schema import PipelineConfig
from ..errors import PipelineError
from ..io import read_json, write_json, write_text
from ..paths import build_paths


def collect(cfg: PipelineConfig) -> List[dict]:
    rows = []
    for name, entry in sorted(cfg.builds.items()):
        paths = build_paths(cfg, name)
        for needed in (paths.validate_metrics, paths.benchmark_metrics):
            if not needed.is_file():
                raise PipelineError(f"report needs {needed}; run the validate and benchmark stages of {name} first")
        validation = read_json(paths.validate_metrics)
        benchmark = read_json(paths.benchmark_metrics)
        by_batch = sorted(benchmark.values(), key=lambda row: row["batch_size"])
        smallest, largest = by_batch[0], by_batch[-1]
        rows.append({
            "build": name, "model": entry.model, "target": entry.target, "precision": entry.precision.value,
            "accuracy": validation.get("accuracy"), "accuracy_drop": validation.get("accuracy_drop"),
            # Classifiers agree on the top-1 class, embedding models on the nearest neighbour.
            "agreement_metric": "top-1" if "top1_agreement" in validation else "retrieval",
            "agreement": validation.get("top1_agreement", validation.get("retrieval_agreement")),
            "top1_agreement": validation.get("top1_agreement"), "cosine_mean": validation["cosine_mean"],
            "gates_passed": validation["gates_passed"],
            "latency_batch": smallest["batch_size"], "p50_ms": smallest["p50_ms"], "p99_ms": smallest["p99_ms"],
            "throughput_batch": largest["batch_size"], "throughput": largest["throughput"],
        })
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(rows: List[dict]) -> str:
    lines = ["# Precision report", "", "Per model and target; latency at the smallest benchmarked batch,",
             "throughput at the largest. Agreement and cosine are against the FP32 reference.", ""]
    for (model, target) in sorted({(r["model"], r["target"]) for r in rows}):
        group = [r for r in rows if r["model"] == model and r["target"] == target]
        baseline = next((r for r in group if r["precision"] == "fp32"), None)
        lines += [f"## {model} on {target}", "",
                  f"| precision | accuracy % | {group[0]['agreement_metric']} agreement | cosine | p50 ms | p99 ms | throughput /s | speed-up vs fp32 | gates |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            speedup = r["throughput"] / baseline["throughput"] if baseline else None
            lines.append(
                f"| {r['precision']} | {_fmt(r['accuracy'], '.2f')} | {_fmt(r['agreement'], '.4f')} | {r['cosine_mean']:.4f} "
                f"| {r['p50_ms']:.2f} (bs {r['latency_batch']}) | {r['p99_ms']:.2f} | {r['throughput']:.1f} (bs {r['throughput_batch']}) "
                f"| {_fmt(speedup, '.2f')}× | {'pass' if r['gates_passed'] else 'FAIL'} |"
            )
        lines.append("")
    return "\n".join(lines)


def write_report(cfg: PipelineConfig, markdown: Path, summary: Path, plot: Path) -> List[dict]:
    rows = collect(cfg)
    write_text(markdown, render_markdown(rows))
    write_json(summary, {r["build"]: r for r in rows})
    write_json(plot, rows)
    return rows
