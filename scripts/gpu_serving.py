"""Triton on the GPU (issue 15, steps 3 and 4): ResNet-50 fp16 through the h200_ort target, served by the
nvidia-pytriton wheel's Triton 2.51 in the Python-backend form, which runs the pipeline's ONNX Runtime
CUDA runner on the GPU its instance group gives it.

1. The build is made and packaged by the pipeline's own steps, then the pipeline's serve step runs on it
   (served answers against the offline runner, closed-loop levels, the server scenario, the p99 gate).
2. Load: real photo crops as single-image requests from several client processes (closed loop; one
   Python client tops out below what the GPU serves), dynamic batching up to 128. Per configuration and
   concurrency: throughput, p50/p99, the batches the server formed, and NVML's SM and memory-bandwidth
   utilisation of each GPU during the window. Beside it, the offline runner at the batch sizes served.
3. With two GPUs visible: instances on GPU 0 only against the same instances on GPUs 0 and 1 (one
   instance group listing both), same load: the scaling ratio.

Run on the lent machine after scripts/gpu_setup.sh (it makes the serving environment, numpy < 2):

    python3 scripts/gpu_serving.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUILD = "resnet50-h200_ort-fp16"
SERVING = ["serving.precisions=[fp16]", "serving.max_batch_size=128", "serving.preferred_batch_sizes=[32,64,128]",
           "serving.max_queue_delay_us=2000", "serving.concurrency=[1,16]", "serving.agreement_samples=32"]
# The Python backend passes tensors through shared memory: a region that holds a batch of 128 images
# (77 MB) from the start, instead of growing 1 MB at a time.
SHM = ["python,shm-default-byte-size=134217728", "python,shm-growth-byte-size=67108864"]
P99_BUDGET_MS = 200.0  # NVIDIA's guidance for online serving


def build_and_package(work: Path):
    """The build through the pipeline's steps (prepare to package); its BuildContext."""
    from pipeline import steps
    from pipeline.steps.chain import prepare_model
    from pipeline.config import load_params, resolve_build, write_params

    write_params(work / "params.yaml", ["model=[resnet50]", "dataset=[photo_crops]", "target=[h200_ort]", "precision=[fp16]",
                                        f"artifacts_dir={work}/a", f"metrics_dir={work}/m", f"plots_dir={work}/p", *SERVING])
    cfg = load_params(work / "params.yaml")
    prepare_model(cfg, "resnet50")
    ctx = resolve_build(cfg, BUILD)
    steps.calibrate(ctx)
    steps.build(ctx)
    steps.package(ctx)
    return ctx


def measure(server, config, samples: list, levels: list, seconds: float, processes: int, gpus: list) -> list:
    """Load ``config``, then a closed-loop window per concurrency level with NVML sampling every GPU listed."""
    from contextlib import ExitStack

    from pipeline.backends.cuda_runtime import NvmlSampler
    from pipeline.serving.load import closed_loop

    server.load_model(BUILD, config, timeout_s=300)
    closed_loop(server.grpc, BUILD, samples, levels[0], 2.0, processes)  # a warm-up window, not reported
    rows = []
    for level in levels:
        with ExitStack() as stack:
            samplers = {gpu: stack.enter_context(NvmlSampler(0.05, index=gpu)) for gpu in gpus}
            row = closed_loop(server.grpc, BUILD, samples, level, seconds, processes)
        row["gpus"] = {str(gpu): sampler.summary() for gpu, sampler in samplers.items()}
        rows.append(row)
        print(f"  concurrency {level}: {row['throughput']:.0f} img/s, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
              f"mean batch {row['mean_batch_size']:.1f}, errors {row['errors']}, "
              + ", ".join(f"GPU {g} SM {s.get('sm_utilization_mean', 0):.0f}% mem-bw {s.get('memory_bandwidth_utilization_mean', 0):.0f}%"
                          for g, s in row["gpus"].items()), flush=True)
    return rows


def configured(base, gpus: list, count: int):
    """The packaged config with one GPU instance group: ``count`` instances on each of ``gpus``."""
    config = type(base)()
    config.CopyFrom(base)
    del config.instance_group[:]
    config.instance_group.add(kind=base.instance_group[0].kind, gpus=gpus, count=count)
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu_out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu_serving"))
    parser.add_argument("--seconds", type=float, default=8.0, help="load window per concurrency level")
    parser.add_argument("--levels", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2, 4], help="instances per GPU to try")
    parser.add_argument("--processes", type=int, default=max(2, min(12, (os.cpu_count() or 4) // 2)), help="client processes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    from pipeline import steps
    from pipeline.backends.cuda_runtime import import_pycuda
    from pipeline.data import load_dataset, make_splits
    from pipeline.errors import PipelineError
    from pipeline.evaluate.host import host_cpu
    from pipeline.io import read_json
    from pipeline.paths import build_paths
    from pipeline.serving.repository import VERSION, live_copy, read_config
    from pipeline.serving.server import TritonServer, serving_environment
    from serving_benchmarks import offline_throughput  # scripts/, this script's folder

    cuda = import_pycuda()
    cuda.init()
    gpu_count = cuda.Device.count()
    result = {"gpu": cuda.Device(0).name(), "gpus_visible": gpu_count, "host": host_cpu().describe(), "build": BUILD,
              "client_processes": args.processes, "seconds_per_level": args.seconds, "serving_overrides": SERVING}
    print(f"{result['gpu']} x {gpu_count}; host {result['host']}", flush=True)

    started = time.perf_counter()
    ctx = build_and_package(args.work)
    result["build_and_package_s"] = round(time.perf_counter() - started, 1)
    paths = build_paths(ctx.config, ctx.name)
    try:
        steps.serve(ctx)  # the pipeline's serve stage, as `dvc repro serve@...` runs it
        result["serve_step"] = read_json(paths.serve_metrics)
    except PipelineError as error:  # recorded (with the metrics it wrote); the load measurements below still run
        print(f"serve step: {error}", flush=True)
        result["serve_step_error"] = str(error)
        if paths.serve_metrics.is_file():
            result["serve_step"] = read_json(paths.serve_metrics)

    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    validation = make_splits(dataset, ctx.dataset).validation
    samples = [dataset.load([i]) for i in validation[:64]]
    package = paths.serving_dir / "python" / BUILD
    repository = args.work / "live"
    live_copy(package, repository, VERSION, serving_environment())
    base = read_config(repository / BUILD / "config.pbtxt")

    plans = [("one GPU", [0], count) for count in args.instances]
    if gpu_count >= 2:
        plans += [("two GPUs", [0, 1], count) for count in args.instances]
    result["runs"] = []
    with TritonServer(repository, args.out / "tritonserver.log", explicit_models=True, startup_timeout_s=120, backend_config=SHM) as server:
        for label, gpus, count in plans:
            print(f"{label}: {count} instance(s) per GPU on {gpus}", flush=True)
            rows = measure(server, configured(base, gpus, count), samples, args.levels, args.seconds, args.processes, gpus)
            result["runs"].append({"label": label, "gpus": gpus, "instances_per_gpu": count, "rows": rows})
            (args.out / "gpu_serving.json").write_text(json.dumps(result, indent=1))

    batches = [1, 4, 16, 64, 128]  # among the sizes GPU instances pad batches to (powers of two up to 128)
    rates = offline_throughput(paths.engine_dir, ctx.artifact_identity(), {size: dataset.load(validation[:size]) for size in batches}, 3.0)
    result["offline_img_per_s"] = {str(size): rate for size, rate in rates.items()}

    def best(label: str) -> dict:
        """The highest throughput of a configuration within the p99 budget, no errors."""
        rows = [(run, row) for run in result["runs"] if run["label"] == label for row in run["rows"]
                if row["errors"] == 0 and row["p99_ms"] <= P99_BUDGET_MS]
        run, row = max(rows, key=lambda pair: pair[1]["throughput"]) if rows else (None, None)
        return {"instances_per_gpu": run["instances_per_gpu"], "concurrency": row["concurrency"], "throughput": row["throughput"],
                "p99_ms": row["p99_ms"]} if run else {}

    result["best"] = {label: best(label) for label in {run["label"] for run in result["runs"]}}
    if gpu_count >= 2 and result["best"].get("one GPU") and result["best"].get("two GPUs"):
        result["scaling"] = result["best"]["two GPUs"]["throughput"] / result["best"]["one GPU"]["throughput"]
    result["total_s"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu_serving.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("best", "offline_img_per_s", "total_s") if k in result}, indent=1))
    if "scaling" in result:
        print(f"two GPUs / one GPU: {result['scaling']:.2f}x")


if __name__ == "__main__":
    main()
