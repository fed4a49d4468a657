"""benchmark: latency percentiles and throughput over the batch-size sweep; on CPU targets, an INT8/FP8
build timed side by side with its FP32 model (the performance gate), and the host's ISA recorded."""
from __future__ import annotations

import dataclasses

from ..backends import built_by
from ..evaluate.host import isa_report
from ..backends.onnxruntime_backend import load_onnx_runner
from ..cli import console
from ..config.load import BuildContext
from ..config.schema import Device, PrecisionMode
from ..data import load_dataset, make_splits
from ..errors import PipelineError
from ..evaluate.benchmark import length_bucketed, side_by_side, sweep
from ..io import write_json
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
        console.print(f"  {ctx.name} batch {row['batch_size']:>4}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['throughput']:.1f}/s{note}")

    # A model fixed to one sample is timed at batch 1 only.
    settings = dataclasses.replace(cfg.benchmark, batch_sizes=sorted({ctx.model.batch_size(b) for b in cfg.benchmark.batch_sizes}))
    backend = built_by(paths.engine_dir, ctx.target.candidate_runtimes)
    if ctx.target.device == Device.cuda:
        from ..evaluate.gpu_benchmark import gpu_benchmark_batch

        rows = []
        for batch_size in settings.batch_sizes:
            make_runner = lambda: backend.load(paths.engine_dir, cuda_graph=cfg.benchmark.cuda_graph, expect=ctx.artifact_identity())  # noqa: E731
            rows.append(gpu_benchmark_batch(make_runner, feeds(batch_size), batch_size, settings))
            report(rows[-1])
    else:
        host, warning = isa_report(ctx.entry.target, ctx.target.cpu_isa)
        if warning:
            console.print(f"  [yellow]{ctx.name}: {warning}[/]")
        with backend.load(paths.engine_dir, threads=cfg.benchmark.threads, expect=ctx.artifact_identity()) as runner:
            rows = sweep(runner, feeds, settings, on_row=report)
            guard = _quantized_vs_fp32(ctx, runner, feeds(max(settings.batch_sizes)), max(settings.batch_sizes))
            bucketed = _length_bucketed(ctx, runner, dataset, validation, rows[-1])
    metrics = {f"batch_{row['batch_size']}": row for row in rows}
    if ctx.target.device != Device.cuda:
        metrics["host"] = host
        if guard:
            metrics["quantized_vs_fp32"] = guard
        if bucketed:
            metrics["length_bucketed"] = bucketed
    write_json(paths.benchmark_metrics, metrics)
    if ctx.target.device != Device.cuda and guard and not guard["passed"]:
        raise PipelineError(f"benchmark gate failed for {ctx.name}: {ctx.precision_name} takes {guard['quantized_ms']:.2f} ms at batch "
                            f"{guard['batch_size']}, FP32 {guard['fp32_ms']:.2f} ms: {guard['speedup']:.2f}x, limit >= "
                            f"benchmark.min_quantized_speedup={guard['min_speedup']:g}x")
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


def _quantized_vs_fp32(ctx: BuildContext, runner, feeds: dict, batch_size: int) -> dict:
    """A quantized build against its FP32 model at the largest batch, timed side by side ({} when not quantized)."""
    limit = ctx.config.benchmark.min_quantized_speedup
    if ctx.precision.mode != PrecisionMode.qdq or limit is None:
        return {}
    # Loaded as the backend loads an FP32 build (every optimization at load time; the build's offline
    # level only decides what is baked into the file).
    reference = load_onnx_runner(model_paths(ctx.config, ctx.entry.model).simplified, threads=ctx.config.benchmark.threads)
    ms = side_by_side({"quantized": runner, "fp32": reference}, feeds)
    speedup = ms["fp32"] / ms["quantized"]
    console.print(f"  {ctx.name} vs FP32 at batch {batch_size}: {ms['quantized']:.2f} ms vs {ms['fp32']:.2f} ms ({speedup:.2f}x)")
    row = {"batch_size": batch_size, "quantized_ms": ms["quantized"], "fp32_ms": ms["fp32"], "speedup": speedup,
           "min_speedup": limit, "passed": bool(speedup >= limit)}
    if max(ms.values()) < JUDGEABLE_MS:  # a model this small is timed in call overhead, not in its arithmetic
        row.update(passed=True, judged=False, note=f"both under {JUDGEABLE_MS} ms: too small to judge INT8 against FP32 by speed")
        console.print(f"  [yellow]{ctx.name}: {row['note']}[/]")
    return row
