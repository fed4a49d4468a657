"""build: the engine for one build, through its target's runtime; where the target lists several runtimes
that can build the precision, each is built, gated and timed on this host, and the fastest that passes
is the artifact (its times in the build metrics, the choice in the sidecar)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

import numpy as np

from ..backends import SIDECAR, BuildRequest, get_backend
from ..console import console
from ..config.checks import runtimes_for
from ..config.load import BuildContext
from ..config.schema import ModelSource
from ..errors import PipelineError
from ..files import atomic_dir, read_json, require_file, scratch_dir, sha256_json, write_json
from ..paths import build_paths, model_paths


def build(ctx: BuildContext) -> dict:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    source = require_file(paths.calibrated, "calibrated ONNX")
    runtimes = runtimes_for(ctx.target, ctx.precision_name, ctx.model)
    config_hash = sha256_json(ctx.config_fingerprint())
    # Runtimes that compile the PyTorch source (aoti) start from the prepared checkpoint, not the ONNX.
    checkpoint = model_paths(cfg, ctx.entry.model).checkpoint if ctx.model.source != ModelSource.onnx else None

    def request(out_dir: Path) -> BuildRequest:
        return BuildRequest(
            onnx_path=source, out_dir=out_dir, target_name=ctx.entry.target, target=ctx.target, model=ctx.model,
            precision=ctx.precision_name, config_hash=config_hash, build_name=ctx.name, checkpoint=checkpoint,
        )

    # Every build starts from an empty timing cache: a cache shared between builds would make engine
    # bytes depend on build order, an input DVC cannot see. The build's own cache is in its artifact.
    with atomic_dir(paths.engine_dir) as out:
        if len(runtimes) == 1:
            backend = get_backend(runtimes[0])
            backend.check_available()  # the library that builds; running on the device is checked at load
            started = time.perf_counter()
            with console.status(_building(ctx, runtimes[0])):
                sidecar = backend.build(request(out))
            metrics = {"runtime": runtimes[0], "candidates": [{"runtime": runtimes[0], "build_seconds": time.perf_counter() - started}]}
        else:
            with scratch_dir(paths.engine_dir) as scratch:
                chosen, metrics = _choose_runtime(ctx, runtimes, request, scratch)
                for item in (scratch / chosen).iterdir():
                    os.replace(item, out / item.name)
            sidecar = read_json(out / SIDECAR)
            # The choice, not the timings: those vary run to run and live in the metrics, so an unchanged
            # choice leaves the artifact byte-identical and DVC skips what follows.
            sidecar["runtime_selection"] = {"candidates": runtimes, "chosen": chosen,
                                            "rule": "the fastest that passes the model's gates; see the build metrics"}
        # Whoever serves the artifact must feed it as it was calibrated and validated.
        preprocess = ctx.image_preprocess()
        if preprocess is not None:
            sidecar["preprocess"] = preprocess
        write_json(out / SIDECAR, sidecar)
    write_json(paths.build_metrics, metrics)
    return sidecar


def _choose_runtime(ctx: BuildContext, runtimes: List[str], request, scratch: Path) -> tuple:
    """Build every candidate under ``scratch/<runtime>``, gate and time them; (the chosen runtime, metrics)."""
    from ..backends.onnxruntime_backend import load_onnx_runner
    from ..data import load_dataset, make_splits
    from ..evaluate.runtime_choice import Candidate, choose, gate_candidates, time_candidates

    selection = ctx.target.selection
    candidates = []
    try:  # every runner made is closed, whatever happens after it
        for runtime in runtimes:
            backend, folder = get_backend(runtime), scratch / runtime
            folder.mkdir()
            started = time.perf_counter()
            try:
                backend.check_available()
                with console.status(_building(ctx, runtime)):
                    backend.build(request(folder))
                runner = backend.load(folder, expect=ctx.artifact_identity())
            except PipelineError as exc:  # a runtime that cannot take this model is a lost candidate, not a failed build
                candidates.append(Candidate(runtime, error=str(exc), build_seconds=time.perf_counter() - started))
                console.print(f"  [yellow]{ctx.name}: {runtime} cannot build it: {exc}[/]")
                continue
            candidates.append(Candidate(runtime, runner=runner, build_seconds=time.perf_counter() - started))
        dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
        samples = _gate_samples(ctx, dataset, make_splits(dataset, ctx.dataset).train)
        reference = load_onnx_runner(model_paths(ctx.config, ctx.entry.model).simplified)
        gate_candidates(candidates, reference, dataset, samples, ctx.model, ctx.model.gates)
        batch_sizes = sorted({ctx.model.batch_size(b) for b in selection.batch_sizes})
        time_candidates(candidates, lambda b: dataset.fixed_batch(samples, b), batch_sizes,
                        on_batch=lambda b, ms: console.print(f"  {ctx.name} batch {b}: " + ", ".join(f"{r} {v:.2f} ms" for r, v in ms.items())))
    finally:
        for candidate in candidates:
            if candidate.runner is not None:
                candidate.runner.close()
    chosen, why = choose(candidates, selection)
    if chosen is None:
        raise PipelineError(f"no runtime of target '{ctx.entry.target}' passes for {ctx.name}: {why}")
    console.print(f"  {ctx.name}: chose {why}")
    metrics = {"runtime": chosen.runtime, "why": why, "gate_samples": len(samples),
               "candidates": [c.as_metrics() for c in candidates]}
    return chosen.runtime, metrics


def _building(ctx: BuildContext, runtime: str) -> str:
    """The progress line while a runtime builds (compilers take minutes, autotuning ones longer)."""
    slow = {"aoti": "AOTInductor compiles the PyTorch source" + (", autotuning its kernels" if ctx.target.build.inductor_max_autotune else ""),
            "tensorrt": "TensorRT times its tactics", "tensorrt_rtx": "TensorRT-RTX builds ahead of time"}
    return f"{ctx.name}: building with {runtime}" + (f" ({slow[runtime]})" if runtime in slow else "")


def _gate_samples(ctx: BuildContext, dataset, train: List[int]) -> List[int]:
    """Samples the candidates are gated on, never validation ones: the accuracy search's split where
    calibrate drew one (calibration data stays out of it), else the training split; a seeded draw."""
    manifest = read_json(build_paths(ctx.config, ctx.name).manifest)
    pool = [s["index"] for s in manifest.get("search", {}).get("samples", [])] or list(train)
    count = min(ctx.target.selection.gate_samples, len(pool))
    picked = np.random.default_rng([ctx.dataset.seed, 2]).choice(np.asarray(pool), size=count, replace=False)
    return sorted(int(i) for i in picked)
