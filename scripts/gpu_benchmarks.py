"""GPU part of the pipeline on the lent H200: ResNet-50 through the h200_ort target (fp32, fp16),
validated against FP32 and benchmarked against the independent baselines of
shared/docs/environment.md. Writes results.json and gpu_benchmarks.md into --out."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import steps  # noqa: E402
from pipeline.backends import get_backend  # noqa: E402
from pipeline.config import load_params, resolve_build, resolve_model, write_params  # noqa: E402
from pipeline.data import load_dataset, make_splits  # noqa: E402
from pipeline.evaluate.gpu_benchmark import gpu_benchmark_batch  # noqa: E402
from pipeline.paths import build_paths  # noqa: E402

BASELINES = {"fp16_bs128_img_s": 9448.0, "fp32_bs128_img_s": 7158.0, "torch_graph_speedup_bs1": 6.96 / 1.05}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/gpu_work"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.workdir
    write_params(work / "params.yaml", ["model=[resnet50]", "target=[h200_ort]", "precision=[fp32,fp16]",
                                        f"artifacts_dir={work}/a", f"metrics_dir={work}/m", f"plots_dir={work}/p"])
    cfg = load_params(work / "params.yaml")
    results: dict = {"baselines": BASELINES, "timings": {}, "validate": {}, "benchmarks": {}, "errors": {}}
    started = time.perf_counter()
    model = resolve_model(cfg, "resnet50")
    for step in (steps.prepare, steps.export, steps.simplify):
        step(cfg, model)
    for precision in ("fp32", "fp16"):
        build = resolve_build(cfg, f"resnet50-h200_ort-{precision}")
        steps.calibrate(build)
        steps.build(build)
        results["validate"][precision] = {k: v for k, v in steps.validate(build).items() if k != "outputs"}
    results["timings"]["pipeline_seconds"] = time.perf_counter() - started

    dataset = load_dataset("photo_crops", cfg.dataset["photo_crops"])
    validation = make_splits(dataset, cfg.dataset["photo_crops"]).validation

    def feeds(batch: int) -> dict:
        return dataset.load([validation[i % len(validation)] for i in range(batch)])

    def measure(name: str, precision: str, batch: int, **overrides) -> None:
        bench = dataclasses.replace(cfg.benchmark, warmup=5, iterations=30, repeats=3, **overrides)
        engine = build_paths(cfg, f"resnet50-h200_ort-{precision}").engine_dir
        try:
            row = gpu_benchmark_batch(lambda: get_backend("onnxruntime").load(engine, cuda_graph=bench.cuda_graph), feeds(batch), batch, bench)
            results["benchmarks"][name] = row
            print(f"{name}: p50 {row['p50_ms']:.3f} ms, {row['throughput']:.0f} img/s, SM util {row.get('sm_utilization_mean', 0):.0f}%", flush=True)
        except Exception as exc:  # keep measuring the rest; the error is reported, not hidden
            results["errors"][name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"{name}: FAILED {results['errors'][name]}", flush=True)

    measure("fp16_bs128_transfers_excluded", "fp16", 128, include_transfers=False)
    measure("fp32_bs128_transfers_excluded", "fp32", 128, include_transfers=False)
    measure("fp16_bs128_transfers_included", "fp16", 128, include_transfers=True)
    measure("fp16_bs128_2_streams_transfers_excluded", "fp16", 128, include_transfers=False, streams=2)
    measure("fp16_bs1_no_graph", "fp16", 1, include_transfers=False)
    measure("fp16_bs1_cuda_graph", "fp16", 1, include_transfers=False, cuda_graph=True)
    measure("fp32_bs1_no_graph", "fp32", 1, include_transfers=False)
    measure("fp32_bs1_cuda_graph", "fp32", 1, include_transfers=False, cuda_graph=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str))
    print(json.dumps({k: results[k] for k in ("validate", "errors", "timings")}, indent=1, default=str))


if __name__ == "__main__":
    main()
