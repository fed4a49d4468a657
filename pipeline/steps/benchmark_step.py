"""benchmark: latency percentiles and throughput over the batch-size sweep."""
from __future__ import annotations

import dataclasses

from ..backends import get_backend
from ..cli import console
from ..config.load import BuildContext
from ..config.schema import Device
from ..data import load_dataset, make_splits
from ..evaluate.benchmark import sweep
from ..io import write_json
from ..paths import build_paths


def benchmark(ctx: BuildContext) -> list:
    cfg = ctx.config
    paths = build_paths(cfg, ctx.name)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset)
    validation = make_splits(dataset, ctx.dataset).validation

    def feeds(batch_size: int) -> dict:
        return dataset.fixed_batch(validation, batch_size)

    def report(row: dict) -> None:
        note = "  [yellow]noisy: repeat medians differ by {:.0%}[/]".format(row["repeat_spread"]) if row["noisy"] else ""
        console.print(f"  {ctx.name} batch {row['batch_size']:>4}: p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  {row['throughput']:.1f}/s{note}")

    # A model fixed to one sample is timed at batch 1 only.
    settings = dataclasses.replace(cfg.benchmark, batch_sizes=sorted({ctx.model.batch_size(b) for b in cfg.benchmark.batch_sizes}))
    backend = get_backend(ctx.target.backend)
    if ctx.target.device == Device.cuda:
        from ..evaluate.gpu_benchmark import gpu_benchmark_batch

        rows = []
        for batch_size in settings.batch_sizes:
            make_runner = lambda: backend.load(paths.engine_dir, cuda_graph=cfg.benchmark.cuda_graph, expect=ctx.artifact_identity())  # noqa: E731
            rows.append(gpu_benchmark_batch(make_runner, feeds(batch_size), batch_size, settings))
            report(rows[-1])
    else:
        with backend.load(paths.engine_dir, threads=cfg.benchmark.threads, expect=ctx.artifact_identity()) as runner:
            rows = sweep(runner, feeds, settings, on_row=report)
    write_json(paths.benchmark_metrics, {f"batch_{row['batch_size']}": row for row in rows})
    write_json(paths.latency_plot, [{"build": ctx.name, **row} for row in rows])
    return rows
