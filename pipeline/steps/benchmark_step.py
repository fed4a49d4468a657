"""benchmark: latency percentiles and throughput over the batch-size sweep (CUDA targets: the figures of
benchmark.gpu at every batch up to the model's largest); every build below FP32 timed side by side with its
FP32 model (the speed gate); on CPU targets the host's ISA recorded."""
from __future__ import annotations

import dataclasses

from ..backends import built_by
from ..evaluate.host import isa_report
from ..backends.onnxruntime_backend import load_onnx_runner
from ..console import console
from ..config.load import BuildContext
from ..config.schema import Backend, Device, PrecisionMode
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..evaluate.benchmark import length_bucketed, side_by_side, sweep
from ..files import write_json
from ..paths import build_paths, model_paths


# Below this a run's time is the runtime's call overhead (a few microseconds either way), not the model's
# arithmetic: the INT8-vs-FP32 speed gate says it cannot judge instead of failing on noise.
JUDGEABLE_MS = 0.02


def benchmark(ctx: BuildContext) -> list:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation

    def feeds(batch_size: int) -> dict:
        return dataset.fixed_batch(validation, batch_size)

    def report(row: dict) -> None:
        note = "  [yellow]noisy: repeat medians differ by {:.0%}[/]".format(row["repeat_spread"]) if row["noisy"] else ""
        beside = "".join(f"  {figure} {row[figure]['throughput']:.1f}/s" for figure in ("eager", "overlapped", "serial") if figure in row)
        gpu = f"  [{row['figure']}; SM {row['sm_utilization_mean']:.0f}%]" if "figure" in row and "sm_utilization_mean" in row else ""
        console.print(f"  {ctx.name} batch {row['batch_size']:>4}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['throughput']:.1f}/s"
                      f"{gpu}{beside}{note}")
        for key in ("graph_error", "nvml_note"):
            if key in row:
                console.print(f"  [yellow]{ctx.name} batch {row['batch_size']}: {row[key]}[/]")

    backend = built_by(paths.engine_dir, ctx.target.candidate_runtimes)
    bucketed: dict = {}
    if ctx.target.device == Device.cuda:
        from ..evaluate.gpu_benchmark import gpu_batch_sizes, gpu_benchmark_batch

        gpu = cfg.benchmark.gpu

        def load(graph: bool):
            return backend.load(paths.engine_dir, cuda_graph=graph, expect=ctx.artifact_identity())

        rows = []
        for batch_size in gpu_batch_sizes(gpu.batch_sizes, ctx.model.largest_batch):
            rows.append(gpu_benchmark_batch(load, feeds(batch_size), batch_size, gpu, cfg.benchmark.repeats, cfg.benchmark.spread_warning))
            report(rows[-1])
        largest = rows[-1]["batch_size"]
        with backend.load(paths.engine_dir, expect=ctx.artifact_identity()) as runner:
            guard = _vs_fp32(ctx, runner, feeds(largest), largest)
    else:
        # A model fixed to one sample is timed at batch 1 only.
        settings = dataclasses.replace(cfg.benchmark, batch_sizes=sorted({ctx.model.batch_size(b) for b in cfg.benchmark.batch_sizes}))
        largest = max(settings.batch_sizes)
        host, warning = isa_report(ctx.entry.target, ctx.target.cpu_isa)
        if warning:
            console.print(f"  [yellow]{ctx.name}: {warning}[/]")
        with backend.load(paths.engine_dir, threads=cfg.benchmark.threads, expect=ctx.artifact_identity()) as runner:
            rows = sweep(runner, feeds, settings, on_row=report)
            guard = _vs_fp32(ctx, runner, feeds(largest), largest)
            bucketed = _length_bucketed(ctx, runner, dataset, validation, rows[-1])
    metrics = {f"batch_{row['batch_size']}": row for row in rows}
    if ctx.target.device == Device.cuda:
        best = max(rows, key=lambda row: row["throughput"])
        # The sweep's peak, where a user reads how much of the GPU the build uses.
        metrics["best"] = {key: best[key] for key in ("batch_size", "throughput", "p50_ms", "figure", "sm_utilization_mean", "nvml_samples") if key in best}
    else:
        metrics["host"] = host
    if guard:
        metrics["vs_fp32"] = guard
    if bucketed:
        metrics["length_bucketed"] = bucketed
    write_json(paths.benchmark_metrics, metrics)
    if guard and not guard["passed"]:
        raise PipelineError(f"benchmark gate failed for {ctx.name}: {ctx.precision_name} takes {guard['precision_ms']:.2f} ms at batch "
                            f"{guard['batch_size']}, FP32 {guard['fp32_ms']:.2f} ms: {guard['speedup']:.2f}x, limit >= "
                            f"benchmark.min_quantized_speedup={guard['min_speedup']:g}x (waive it for this build: "
                            f"benchmark.speed_gate_waived=[{ctx.name}])")
    return rows


def _length_bucketed(ctx: BuildContext, runner, dataset, validation: list, fixed_row: dict) -> dict:
    """Sequence models: the validation text in length-sorted batches padded to their longest, beside
    the fixed padded shape of the sweep's largest batch ({} for models without an attention mask)."""
    if "attention_mask" not in {spec.name for spec in ctx.model.inputs} or ctx.model.batch_size(2) == 1:
        return {}
    row = length_bucketed(runner, dataset.load, list(validation), fixed_row["batch_size"])
    row["vs_fixed_shape_throughput"] = row["throughput"] / fixed_row["throughput"]
    console.print(f"  {ctx.name} length-bucketed batches of {row['batch_size']} ({row['mean_padded_tokens']:.0f} padded tokens per sentence, "
                  f"{row['mean_tokens']:.0f} real): {row['throughput']:.1f}/s, {row['tokens_per_s']:.0f} tokens/s "
                  f"({row['vs_fixed_shape_throughput']:.2f}x the padded fixed shape)")
    return row


def _fp32_reference(ctx: BuildContext, runner):
    """The FP32 model run as the build's runtime family runs an FP32 build (every optimization at load
    time), or None where that cannot be done here (TensorRT: an FP32 engine would have to be built)."""
    simplified = model_paths(ctx.config, ctx.entry.model).simplified
    if ctx.target.device == Device.cpu:
        return load_onnx_runner(simplified, threads=ctx.config.benchmark.threads)
    if ctx.target.candidate_runtimes == [Backend.onnxruntime]:
        from ..backends.onnxruntime_backend import load_onnx_cuda_runner

        return load_onnx_cuda_runner(simplified, runner.inputs, runner.output_names, ctx.target.build.cuda_provider_options)
    return None


def _vs_fp32(ctx: BuildContext, runner, feeds: dict, batch_size: int) -> dict:
    """A build below FP32 (INT8, FP8, FP16, BF16) against its FP32 model at the largest batch, timed side by
    side on the same device ({} for FP32 builds or with the gate off): a lower precision that is slower
    fails the benchmark gate, unless the build is in ``benchmark.speed_gate_waived``."""
    bench = ctx.config.benchmark
    if ctx.precision.mode == PrecisionMode.passthrough or bench.min_quantized_speedup is None:
        return {}
    reference = _fp32_reference(ctx, runner)
    if reference is None:
        return {"batch_size": batch_size, "passed": True, "judged": False, "note": f"no FP32 {ctx.target.backend.value} reference runs here"}
    with reference:
        ms = side_by_side({"precision": runner, "fp32": reference}, feeds)
    speedup = ms["fp32"] / ms["precision"]
    console.print(f"  {ctx.name} vs FP32 at batch {batch_size}: {ms['precision']:.2f} ms vs {ms['fp32']:.2f} ms ({speedup:.2f}x)")
    row = {"batch_size": batch_size, "precision_ms": ms["precision"], "fp32_ms": ms["fp32"], "speedup": speedup,
           "min_speedup": bench.min_quantized_speedup, "passed": bool(speedup >= bench.min_quantized_speedup)}
    if max(ms.values()) < JUDGEABLE_MS:  # a model this small is timed in call overhead, not in its arithmetic
        row.update(passed=True, judged=False, note=f"both under {JUDGEABLE_MS} ms: too small to judge {ctx.precision_name} against FP32 by speed")
        console.print(f"  [yellow]{ctx.name}: {row['note']}[/]")
    elif not row["passed"] and ctx.name in bench.speed_gate_waived:
        row.update(passed=True, waived=True, note=f"below benchmark.min_quantized_speedup={bench.min_quantized_speedup:g}x, waived (benchmark.speed_gate_waived)")
        console.print(f"  [yellow]{ctx.name}: {row['note']}[/]")
    return row
