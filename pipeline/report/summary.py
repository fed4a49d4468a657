"""Collect every build's validate/benchmark metrics into one table, so a user can pick the fastest
precision inside the accuracy budget."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ..config.schema import PipelineConfig
from ..errors import PipelineError
from ..files import read_json, write_json, write_text
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
        by_batch = sorted((row for key, row in benchmark.items() if key.startswith("batch_")), key=lambda row: row["batch_size"])
        # GPU sweeps name their peak ("best"): throughput there, not at the largest batch, which may be past it.
        smallest, largest = by_batch[0], benchmark.get("best", by_batch[-1])
        built = read_json(paths.build_metrics) if paths.build_metrics.is_file() else {}
        vs_fp32 = benchmark.get("vs_fp32", {})
        rows.append({
            "build": name, "model": entry.model, "target": entry.target, "precision": entry.precision.value,
            "runtime": built.get("runtime"), "runtime_why": built.get("why"),
            "accuracy": validation.get("accuracy"), "accuracy_drop": validation.get("accuracy_drop"),
            # Classifiers agree on the top-1 class, embedding models on the nearest neighbour.
            "agreement_metric": "top-1" if "top1_agreement" in validation else "retrieval",
            "agreement": validation.get("top1_agreement", validation.get("retrieval_agreement")),
            "top1_agreement": validation.get("top1_agreement"), "cosine_mean": validation["cosine_mean"],
            "gates_passed": validation["gates_passed"],
            # The speed gate: a precision below FP32 that is slower than it fails, unless waived (then marked).
            "speed_vs_fp32": vs_fp32.get("speedup"), "speed_gate": ("waived" if vs_fp32.get("waived") else "failed" if vs_fp32 and not vs_fp32["passed"]
                                                                    else "passed" if vs_fp32.get("speedup") else None),
            "latency_batch": smallest["batch_size"], "p50_ms": smallest["p50_ms"], "p99_ms": smallest["p99_ms"],
            "throughput_batch": largest["batch_size"], "throughput": largest["throughput"],
        })
    return rows


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _gates(row: dict) -> str:
    """Accuracy gates, and the speed gate where it is not simply passed."""
    text = "pass" if row["gates_passed"] else "FAIL"
    if row.get("speed_gate") in ("failed", "waived"):
        text += f"; speed gate {'FAIL' if row['speed_gate'] == 'failed' else 'waived'} at {row['speed_vs_fp32']:.2f}× FP32"
    return text


def render_markdown(rows: List[dict]) -> str:
    lines = ["# Precision report", "", "Per model and target; latency at the smallest benchmarked batch,",
             "throughput at the largest. Agreement and cosine are against the FP32 reference.", ""]
    for (model, target) in sorted({(r["model"], r["target"]) for r in rows}):
        group = [r for r in rows if r["model"] == model and r["target"] == target]
        baseline = next((r for r in group if r["precision"] == "fp32"), None)
        lines += [f"## {model} on {target}", "",
                  f"| precision | runtime | accuracy % | {group[0]['agreement_metric']} agreement | cosine | p50 ms | p99 ms | throughput /s | speed-up vs fp32 | gates |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            speedup = r["throughput"] / baseline["throughput"] if baseline else None
            lines.append(
                f"| {r['precision']} | {r['runtime'] or '-'} | {_fmt(r['accuracy'], '.2f')} | {_fmt(r['agreement'], '.4f')} | {r['cosine_mean']:.4f} "
                f"| {r['p50_ms']:.2f} (bs {r['latency_batch']}) | {r['p99_ms']:.2f} | {r['throughput']:.1f} (bs {r['throughput_batch']}) "
                f"| {_fmt(speedup, '.2f')}× | {_gates(r)} |"
            )
        chosen = [f"- {r['precision']}: {r['runtime_why']}" for r in group if r.get("runtime_why")]
        if chosen:  # a target that measures runtimes: what each build chose and why
            lines += ["", "Runtime chosen by measurement:"] + chosen
        lines.append("")
    return "\n".join(lines)


def collect_serving(cfg: PipelineConfig) -> List[dict]:
    """The serve stage's figures for each served build (and the batching its package carries)."""
    rows = []
    for name in sorted(cfg.servable):
        paths = build_paths(cfg, name)
        if not paths.serve_metrics.is_file():  # the library used without the serve stage: said, not hidden
            rows.append({"build": name, "missing": f"not served yet: `dvc repro serve@{name}`"})
            continue
        served = read_json(paths.serve_metrics)
        levels = sorted((v for k, v in served.items() if k.startswith("concurrency_")), key=lambda row: row["concurrency"])
        batching = read_json(paths.batching_metrics) if paths.batching_metrics.is_file() else {}
        rows.append({"build": name, "ready_seconds": served["ready_seconds"], "max_abs_difference": served["agreement"]["max_abs_difference"],
                     "top": levels[-1], "max_rate": served.get("server_scenario", {}).get("max_rate_within_budget"),
                     "batching": batching.get("batching"), "searched": batching.get("searched", False), "gates_passed": served["gates_passed"]})
    return rows


def render_serving(rows: List[dict]) -> str:
    lines = ["## Served on Triton", "", "The Python-backend package on the embedded Triton server: served vs offline outputs, the",
             "closed-loop sweep's highest concurrency, and MLPerf's server scenario (highest Poisson arrival rate within the p99 budget).", "",
             "| build | ready s | max served-offline diff | concurrency | req/s | p99 ms | mean batch | max rate within p99 /s | batching | gates |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "missing" in r:
            lines.append(f"| {r['build']} | {r['missing']} |" + " |" * 8)
            continue
        top, b = r["top"], r["batching"]
        batching = "-" if not b else (f"{b['instances']} inst., delay {b['max_queue_delay_us']} us, preferred {b['preferred_batch_sizes'] or 'any'}"
                                      + (" (searched)" if r["searched"] else ""))
        lines.append(f"| {r['build']} | {r['ready_seconds']:.1f} | {r['max_abs_difference']:.2g} | {top['concurrency']} | {top['throughput']:.1f} "
                     f"| {top['p99_ms']:.1f} | {top['mean_batch_size']:.1f} | {_fmt(r['max_rate'], '.1f')} | {batching} | {'pass' if r['gates_passed'] else 'FAIL'} |")
    return "\n".join(lines + [""])


def latency_rows(cfg: PipelineConfig) -> List[dict]:
    """Every build's benchmark sweep, one row per batch size: the data of the latency and throughput plots."""
    rows = []
    for name, entry in sorted(cfg.builds.items()):
        benchmark = read_json(build_paths(cfg, name).benchmark_metrics)
        for row in sorted((v for k, v in benchmark.items() if k.startswith("batch_")), key=lambda row: row["batch_size"]):
            rows.append({"build": name, "model": entry.model, "target": entry.target, "precision": entry.precision.value,
                         "batch_size": row["batch_size"], "p50_ms": row["p50_ms"], "p99_ms": row["p99_ms"], "throughput": row["throughput"]})
    return rows


def serving_rows(cfg: PipelineConfig) -> List[dict]:
    """Every served build's closed-loop sweep, one row per client concurrency."""
    rows = []
    for name in sorted(cfg.servable):
        path = build_paths(cfg, name).serve_metrics
        if path.is_file():
            served = read_json(path)
            for level in sorted((v for k, v in served.items() if k.startswith("concurrency_")), key=lambda row: row["concurrency"]):
                rows.append({"build": name, "model": cfg.builds[name].model, "concurrency": level["concurrency"],
                             "throughput": level["throughput"], "p99_ms": level["p99_ms"]})
    return rows


def write_report(cfg: PipelineConfig, markdown: Path, summary: Path, plots_dir: Path, images: str = "") -> List[dict]:
    """The markdown report, the summary metrics, and the data of the project's plots (dvc.yaml's
    top-level plots draw them; ``images``, relative to the markdown, is where their rendered
    images are, embedded beside the tables)."""
    rows = collect(cfg)
    serving = collect_serving(cfg)
    figures = ""
    if images:
        figures = "\n".join(["## Plots", "", f"![latency vs batch size]({images}/latency.svg)", "",
                              f"![throughput vs batch size]({images}/throughput.svg)", "",
                              f"![accuracy vs latency]({images}/accuracy_vs_latency.svg)", ""]
                             + ([f"![served throughput vs concurrency]({images}/serving_throughput.svg)", "",
                                 f"![served p99 vs concurrency]({images}/serving_p99.svg)", ""] if serving else []))
    write_text(markdown, render_markdown(rows) + ("\n" + render_serving(serving) if serving else "") + ("\n" + figures if figures else ""))
    write_json(summary, {r["build"]: r for r in rows})
    write_json(plots_dir / "accuracy_vs_latency.json", [{**r, "label": f"{r['precision']} ({r['target']})"} for r in rows])
    write_json(plots_dir / "latency.json", latency_rows(cfg))
    write_json(plots_dir / "serving.json", serving_rows(cfg))
    return rows
