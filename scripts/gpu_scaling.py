"""Two GPUs, one runner each: ResNet-50 fp16 through the h200_ort target, batch 128,
transfers included and overlapped; throughput with one GPU and with two, their ratio, and each GPU's
NVML utilisation during the load.

Each runner is its own process pinned to one GPU with CUDA_VISIBLE_DEVICES (one CUDA context and one
Python interpreter per GPU, as a Triton instance group gives each instance its own); the processes
load and warm up, then start together at an agreed time and count the batches they finish in the window.
Run on the two-GPU kind of the lent machine after scripts/gpu_setup.sh:

    python3 scripts/gpu_scaling.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


BATCH = 128


def build_engine(work: Path) -> Path:
    """The resnet50-h200_ort-fp16 engine, made by the pipeline's own steps (once)."""
    from pipeline.backends import SIDECAR
    from pipeline.steps.chain import build_through, prepare_model
    from pipeline.config import load_params, write_params
    from pipeline.paths import build_paths

    write_params(work / "params.yaml", ["model=[resnet50]", "target=[h200_ort]", "precision=[fp16]",
                                        f"artifacts_dir={work}/a", f"metrics_dir={work}/m", f"plots_dir={work}/p"])
    cfg = load_params(work / "params.yaml")
    engine = build_paths(cfg, "resnet50-h200_ort-fp16").engine_dir
    if not (engine / SIDECAR).is_file():
        prepare_model(cfg, "resnet50")
        build_through(cfg, "resnet50-h200_ort-fp16", "build")
    return engine


def worker(engine: Path, physical_index: int, start_at: float, seconds: float) -> dict:
    """Runs in a process that sees one GPU: load, fill two slots, wait for ``start_at``, count batches."""
    import numpy as np

    from pipeline.backends import get_backend
    from pipeline.backends.cuda_runtime import NvmlSampler

    runner = get_backend("onnxruntime").load(engine)
    feeds = {"input": np.random.default_rng(physical_index).standard_normal((BATCH, 3, 224, 224)).astype(np.float32)}
    pipe = runner.overlapped({"input": feeds["input"].shape})
    for _ in range(20):  # warm-up, and every slot holds a batch
        np.copyto(pipe.acquire()["input"], feeds["input"], casting="same_kind")
        pipe.submit()
    pipe.drain()
    time.sleep(max(0.0, start_at - time.time()))
    batches = 0
    with NvmlSampler(0.02, index=physical_index) as nvml:
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            pipe.acquire()
            pipe.submit()
            batches += 1
        pipe.drain()
        wall = time.perf_counter() - started
    runner.close()  # pops the CUDA context pycuda pushed: it aborts at exit otherwise
    return {"gpu": physical_index, "batches": batches, "seconds": wall, "throughput": batches * BATCH / wall, **nvml.summary()}


def run_on(gpus: list, engine: Path, seconds: float) -> dict:
    start_at = time.time() + 30.0  # every process loaded and warm by then
    processes = [subprocess.Popen([sys.executable, __file__, "--worker", str(gpu), "--engine", str(engine), "--start-at", str(start_at),
                                   "--seconds", str(seconds)], env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)},
                                  stdout=subprocess.PIPE, text=True) for gpu in gpus]
    results = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"worker failed ({process.returncode}): {out}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"gpus": gpus, "throughput": sum(r["throughput"] for r in results), "per_gpu": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/gpu_out"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--engine", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.engine, args.worker, args.start_at, args.seconds)), flush=True)
        return
    import pynvml

    pynvml.nvmlInit()
    count = pynvml.nvmlDeviceGetCount()
    names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    pynvml.nvmlShutdown()
    if count < 2:
        raise SystemExit(f"this machine has {count} GPU(s); run on the two-GPU kind")
    args.out.mkdir(parents=True, exist_ok=True)
    engine = build_engine(Path("/tmp/gpu_scaling"))
    one = run_on([0], engine, args.seconds)
    two = run_on([0, 1], engine, args.seconds)
    result = {"gpus": [n.decode() if isinstance(n, bytes) else n for n in names], "batch": BATCH, "seconds": args.seconds,
              "one_gpu": one, "two_gpus": two, "scaling": two["throughput"] / one["throughput"]}
    (args.out / "gpu_scaling.json").write_text(json.dumps(result, indent=1))
    print(f"one GPU: {one['throughput']:,.0f} img/s; two GPUs: {two['throughput']:,.0f} img/s; scaling {result['scaling']:.2f}x")
    for row in two["per_gpu"]:
        print(f"  GPU {row['gpu']}: {row['throughput']:,.0f} img/s, SM util {row.get('sm_utilization_mean', 0):.0f}%, "
              f"memory-bandwidth util {row.get('memory_bandwidth_utilization_mean', 0):.0f}%")


if __name__ == "__main__":
    main()
