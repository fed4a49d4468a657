"""INT8 vs plain FP32 on this host's CPU, from artifacts carried from another machine.

For measuring a CPU kind the development machine lacks (e.g. AMX on the lent GPU machine's host):
`make bench` builds there is not possible, so the ONNX files travel instead. DIR holds, per model,
<model>_fp32.onnx (the FP32 export), <model>_int8.onnx (the build's artifact), optionally
<model>_int8_sidecar.json (its ONNX Runtime settings) and <model>_feeds.npz (real samples; a batch
smaller than the largest one asked for is tiled). Prints one markdown table, naming the CPU.

    python scripts/cpu_speed.py DIR [--batches 1 32] [--rounds 5]
    taskset -c 0,1 python scripts/cpu_speed.py DIR        # a 2-core figure on a bigger host
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from pipeline.backends.onnxruntime_backend import load_onnx_runner
from pipeline.evaluate.benchmark import side_by_side
from pipeline.evaluate.host import host_cpu


def batch_of(feeds: dict, size: int) -> dict:
    """``size`` samples, cycling through the carried ones."""
    count = len(next(iter(feeds.values())))
    index = [i % count for i in range(size)]
    return {name: value[index] for name, value in feeds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime

    cores = len(os.sched_getaffinity(0))
    print(f"Host: {host_cpu().describe()}; this process may use {cores} cores; onnxruntime {onnxruntime.__version__}\n")
    print("| model | batch | plain ORT FP32 ms | INT8 ms | INT8 speed-up |")
    print("|---|---|---|---|---|")
    for fp32_path in sorted(args.dir.glob("*_fp32.onnx")):
        model = fp32_path.name[: -len("_fp32.onnx")]
        sidecar = args.dir / f"{model}_int8_sidecar.json"
        disabled = json.loads(sidecar.read_text()).get("disabled_optimizers", []) if sidecar.is_file() else []
        # One thread per core this process may use: ONNX Runtime's default counts the host's cores, not taskset's.
        runners = {"fp32": load_onnx_runner(fp32_path, threads=cores),
                   "int8": load_onnx_runner(args.dir / f"{model}_int8.onnx", threads=cores, disabled_optimizers=disabled)}
        feeds = dict(np.load(args.dir / f"{model}_feeds.npz"))
        for batch in args.batches:
            ms = side_by_side(runners, batch_of(feeds, batch), rounds=args.rounds)
            print(f"| {model} | {batch} | {ms['fp32']:.1f} | {ms['int8']:.1f} | {ms['fp32'] / ms['int8']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
