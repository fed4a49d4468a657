"""Triton on the GPU: ResNet-50 fp16 through the h200_ort target, served by the
nvidia-pytriton wheel's Triton 2.51 in the Python-backend form, which runs the pipeline's ONNX Runtime
CUDA runner on the GPU its instance group gives it.

1. The build is made and packaged by the pipeline's own steps. The CUDA runner is timed with the batch size
   changing at every run against each size run over and over (one session, and a session per shape, as a
   served instance has). Then the pipeline's serve step runs on the build (served answers against the
   offline runner, closed-loop levels, the server scenario, the p99 gate).
2. Load: real photo crops as single-image requests from several client processes (closed loop; one
   Python client tops out below what the GPU serves), dynamic batching up to 128. Per configuration and
   concurrency: throughput, p50/p99, the batches the server formed, and NVML's SM and memory-bandwidth
   utilisation of each GPU during the window. Beside it, the offline runner at the batch sizes served.
3. With two GPUs visible: instances on GPU 0 only against the same instances on GPUs 0 and 1 (one
   instance group listing both), same load: the scaling ratio per instance count, each configuration at
   its highest throughput within the p99 budget.

Run on the lent machine after scripts/gpu_setup.sh (it makes the serving environment, numpy < 2):

    python3 scripts/gpu_serving.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


BUILD = "resnet50-h200_ort-fp16"
SERVING = ["serving.precisions=[fp16]", "serving.max_batch_size=128", "serving.preferred_batch_sizes=[32,64,128]",
           "serving.max_queue_delay_us=2000", "serving.concurrency=[1,16]", "serving.agreement_samples=32"]
# The Python backend passes tensors through shared memory: a region that holds a batch of 128 images
# (77 MB) from the start, instead of growing 1 MB at a time.
SHM = ["python,shm-default-byte-size=134217728", "python,shm-growth-byte-size=67108864"]
P99_BUDGET_MS = 200.0  # NVIDIA's guidance for online serving


def build_and_package(work: Path):
    """The build through the pipeline's steps (prepare to package); its BuildContext."""
    from pipeline.steps.chain import build_through, prepare_model
    from pipeline.config import load_params, write_params

    write_params(work / "params.yaml", ["model=[resnet50]", "dataset=[photo_crops]", "target=[h200_ort]", "precision=[fp16]",
                                        f"artifacts_dir={work}/a", f"metrics_dir={work}/m", f"plots_dir={work}/p", *SERVING])
    cfg = load_params(work / "params.yaml")
    prepare_model(cfg, "resnet50")
    return build_through(cfg, BUILD, "package")


def shape_change_study(engine_dir: Path, expect: dict, images: dict, sizes=(64, 32, 16), rounds: int = 6) -> dict:
    """Milliseconds per run of the CUDA runner when the batch size changes at every run, against the same
    sizes each run over and over: one session (the benchmark's runner, exhaustive cuDNN search), one
    session with heuristic search, and a session per shape (what a served instance gets)."""
    from pipeline.backends import get_backend

    feeds = {size: {name: array[:size] for name, array in images.items()} for size in sizes}
    mixed_order = [size for _ in range(rounds) for size in sizes]

    def ms_per_run(runner, order) -> float:
        started = time.perf_counter()
        for size in order:
            runner.run(feeds[size])
        return (time.perf_counter() - started) * 1000.0 / len(order)

    def study(runner) -> dict:
        for size in sizes:  # every shape met (and its algorithms chosen) before anything is timed
            runner.run(feeds[size])
        fixed = {}
        for size in sizes:
            runner.run(feeds[size])  # the change of shape paid here, not inside the timed runs
            fixed[size] = ms_per_run(runner, [size] * rounds)
        for _ in range(2):  # copy in, compute, copy out of a run that meets no change of shape
            runner.run(feeds[sizes[0]])
        stages = getattr(runner, "last_timing", {})
        mixed = ms_per_run(runner, mixed_order)
        same_sizes = sum(fixed[size] for size in mixed_order) / len(mixed_order)
        return {"fixed_ms": fixed, "mixed_ms": mixed, "mixed_over_fixed": mixed / same_sizes,
                f"batch_{sizes[0]}_gpu_ms": stages}

    backend, result = get_backend("onnxruntime"), {"sizes": list(sizes), "rounds": rounds}
    with backend.load(engine_dir, expect=expect) as runner:
        result["one session, exhaustive search"] = study(runner)
    with backend.load(engine_dir, expect=expect, varying_shapes=True) as runner:
        runner.max_shapes = 0  # every shape on the one shared session
        result["one session, heuristic search"] = study(runner)
    with backend.load(engine_dir, expect=expect, varying_shapes=True) as runner:
        result["a session per shape, heuristic search"] = study(runner)
    for label, row in result.items():
        if isinstance(row, dict):
            print(f"  {label}: fixed {', '.join(f'{s}: {ms:.1f}' for s, ms in row['fixed_ms'].items())} ms; "
                  f"sizes in turn {row['mixed_ms']:.1f} ms a run ({row['mixed_over_fixed']:.2f}x); batch {sizes[0]} on the GPU "
                  + ", ".join(f"{k} {v:.1f}" for k, v in row[f"batch_{sizes[0]}_gpu_ms"].items()), flush=True)
    return result


def measure(server, config, samples: list, levels: list, seconds: float, processes: int, gpus: list) -> list:
    """Load ``config``, then a closed-loop window per concurrency level with NVML sampling every GPU listed."""
    from contextlib import ExitStack

    from pipeline.backends.cuda_runtime import NvmlSampler
    from pipeline.serving.load_generator import closed_loop

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


def summarize(runs: list) -> dict:
    """Per configuration (GPUs, instances per GPU), the highest throughput within the p99 budget with no
    failed request; and per instance count, two GPUs over one: the same instances on each GPU, so the
    ratio measures the second GPU, not a different number of instances."""
    best = {}
    for run in runs:
        rows = [row for row in run["rows"] if row["errors"] == 0 and row["p99_ms"] <= P99_BUDGET_MS]
        if rows:
            row = max(rows, key=lambda r: r["throughput"])
            best[f"{run['label']}, {run['instances_per_gpu']} per GPU"] = {
                "gpus": run["gpus"], "instances_per_gpu": run["instances_per_gpu"], "concurrency": row["concurrency"],
                "throughput": row["throughput"], "p99_ms": row["p99_ms"],
                "sm_utilization_mean": {gpu: stats.get("sm_utilization_mean") for gpu, stats in row["gpus"].items()}}
    scaling = {}
    for key, two in best.items():
        one = best.get(key.replace("two GPUs", "one GPU"))
        if len(two["gpus"]) == 2 and one:
            scaling[f"{two['instances_per_gpu']} per GPU"] = two["throughput"] / one["throughput"]
    return {"best": best, "scaling": scaling}


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
    parser.add_argument("--instances", type=int, nargs="+", default=[1, 2], help="instances per GPU to try")
    parser.add_argument("--processes", type=int, default=max(2, min(12, (os.cpu_count() or 4) // 2)), help="client processes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)

    from pipeline import steps
    from pipeline.backends.cuda_runtime import import_pycuda
    from pipeline.data import load_dataset, make_splits
    from pipeline.errors import PipelineError
    from pipeline.evaluate.host import host_cpu
    from pipeline.files import read_json
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
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation

    print("batch size changing at every run, on the CUDA runner:", flush=True)
    result["shape_change"] = shape_change_study(paths.engine_dir, ctx.artifact_identity(), dataset.load(validation[:64]))
    try:
        steps.serve(ctx)  # the pipeline's serve stage, as `dvc repro serve@...` runs it
        result["serve_step"] = read_json(paths.serve_metrics)
    except PipelineError as error:  # recorded (with the metrics it wrote); the load measurements below still run
        print(f"serve step: {error}", flush=True)
        result["serve_step_error"] = str(error)
        if paths.serve_metrics.is_file():
            result["serve_step"] = read_json(paths.serve_metrics)

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

    result.update(summarize(result["runs"]))
    result["total_s"] = round(time.perf_counter() - started, 1)
    (args.out / "gpu_serving.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("best", "scaling", "offline_img_per_s", "total_s") if k in result}, indent=1))


if __name__ == "__main__":
    main()
