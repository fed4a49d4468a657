"""The serving floors: resnet18 INT8 on the embedded Triton server, against the offline benchmark of
the same artifact, in one run. A section of docs/benchmarks.md, written by `make bench`
(`scripts/benchmarks.py --serving`), or on its own: `python scripts/serving_benchmarks.py --update docs/benchmarks.md`.

- the batching search (tuned configuration) and, at it, Triton's throughput against the offline
  runner's at the mean batch size the server formed (floor: >= 70%);
- dynamic batching on (tuned) vs off at concurrency 16, in alternating blocks (floor: >= 1.5x);
- server start to model-ready (floor: <= 15 s);
- a deploy of a new version while a client sends requests throughout (floor: no failed request).
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path

from pipeline.backends import get_backend
from pipeline.config import resolve_build
from pipeline.config.schema import BatchingSearch
from pipeline.data import load_dataset, make_splits
from pipeline.evaluate.host import host_cpu
from pipeline.paths import build_paths
from pipeline.serving.load_generator import closed_loop, infer_inputs
from pipeline.serving.repository import VERSION, Batching, live_copy, read_config
from pipeline.serving.server import TritonServer, serving_environment
from pipeline.serving.tune import describe, search_batching
from pipeline.steps.deploy_step import deploy

BUILD = "resnet18-cpu-int8"
SEARCH = BatchingSearch(enabled=True, instances=[1, 2], max_queue_delay_us=[5000, 20000], preferred_batch_sizes=[[], [16, 32]],
                        concurrency=[16, 32], seconds_per_trial=4.0)
SECONDS = 5.0  # per measurement block


def offline_throughput(engine_dir: Path, expect: dict, batches: dict, seconds: float, rounds: int = 2) -> dict:
    """Samples per second of the pipeline's own runner at each batch size (``batches``: size -> feeds),
    run back to back, in alternating rounds."""
    runs = {size: [] for size in batches}
    with get_backend("onnxruntime").load(engine_dir, expect=expect) as runner:
        for _ in range(rounds):
            for size, feeds in batches.items():
                runner.run(feeds)
                count, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds:
                    runner.run(feeds)
                    count += 1
                runs[size].append(count * size / (time.perf_counter() - start))
    return {size: statistics.mean(values) for size, values in runs.items()}


def start_to_ready(package: Path, work: Path, env: Path, times: int = 3) -> list:
    seconds = []
    for attempt in range(times):
        repository = work / f"ready-{attempt}"
        live_copy(package, repository, VERSION, env)
        with TritonServer(repository, work / f"ready-{attempt}.log") as server:
            seconds.append(server.startup_seconds + server.wait_model_ready(BUILD))
    return seconds


def deploy_under_load(ctx, work: Path, feeds: dict) -> dict:
    """v1, then v2 while a client sends requests throughout: every answer and error counted."""
    import tritonclient.grpc as grpcclient

    repository = work / "live"
    repository.mkdir()
    answers, stop = [], threading.Event()
    with TritonServer(repository, work / "deploy.log", explicit_models=True) as server:
        deploy(ctx, repository, server.http, server.grpc, name="resnet18")

        def client() -> None:
            connection = grpcclient.InferenceServerClient(server.grpc)
            (request,) = infer_inputs(grpcclient, [feeds])
            while not stop.is_set():
                try:
                    answers.append(connection.infer("resnet18", request).get_response().model_version)
                except Exception as error:  # counted: the floor is that there are none
                    answers.append(f"error: {error}")
            connection.close()

        thread = threading.Thread(target=client)
        thread.start()
        try:
            deploy(ctx, repository, server.http, server.grpc, name="resnet18")
            time.sleep(1.0)
        finally:
            stop.set()
            thread.join()
    return {"requests": len(answers), "failed": sum(a.startswith("error") for a in answers),
            "v1": answers.count("1"), "v2": answers.count("2"), "last": answers[-1] if answers else None}


def serving_section(cfg, budget_ms: float) -> list:
    ctx = resolve_build(cfg, BUILD)
    paths = build_paths(cfg, BUILD)
    dataset = load_dataset(ctx.entry.dataset, ctx.dataset, ctx.model.inputs)
    validation = make_splits(dataset, ctx.dataset).validation
    samples = [dataset.load([i]) for i in validation[:64]]
    package, env = paths.serving_dir / "python" / BUILD, serving_environment()
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as folder:
        work = Path(folder)
        ready = start_to_ready(package, work, env)
        print(f"start to ready: {ready}")
        search = search_batching(package, work / "search", env, samples, SEARCH, budget_ms, 120.0, report=lambda r: print(describe(r)))
        winner = search["winner"]
        tuned = Batching(winner["instances"], winner["max_queue_delay_us"], winner["preferred_batch_sizes"])

        repository = work / "side-by-side"
        live_copy(package, repository, VERSION, env)
        base = read_config(repository / BUILD / "config.pbtxt")
        with_batching, without = type(base)(), type(base)()
        with_batching.CopyFrom(base)
        tuned.apply(with_batching)
        without.CopyFrom(base)
        without.ClearField("dynamic_batching")  # each request runs alone
        without.instance_group[0].count = tuned.instances
        levels = sorted({winner["concurrency"], 16})
        tuned_rows, plain_rows = {level: [] for level in levels}, []
        with TritonServer(repository, work / "side-by-side.log", explicit_models=True) as server:
            for _ in range(2):  # alternating blocks: drift hits both alike
                server.load_model(BUILD, with_batching, timeout_s=120)
                for level in levels:
                    tuned_rows[level].append(closed_loop(server.grpc, BUILD, samples, level, SECONDS))
                server.load_model(BUILD, without, timeout_s=120)
                plain_rows.append(closed_loop(server.grpc, BUILD, samples, 16, SECONDS))
        mean_batch = statistics.mean(r["mean_batch_size"] for r in tuned_rows[winner["concurrency"]])
        batch = max(1, int(round(mean_batch)))
        largest = read_config(package / "config.pbtxt").max_batch_size
        offline_by_batch = offline_throughput(paths.engine_dir, ctx.artifact_identity(),
                                              {size: dataset.load(validation[:size]) for size in sorted({1, batch, largest})}, SECONDS)
        offline = offline_by_batch[batch]
        ceiling = offline_by_batch[largest] / offline_by_batch[1]  # the most any batcher can gain over batch 1
        served = statistics.mean(r["throughput"] for r in tuned_rows[winner["concurrency"]])
        tuned16 = statistics.mean(r["throughput"] for r in tuned_rows[16])
        plain16 = statistics.mean(r["throughput"] for r in plain_rows)
        delivery = deploy_under_load(ctx, work, samples[0])

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**missed**"

    lines = ["## Serving (resnet18 INT8 on the embedded Triton server)", "",
             f"Machine: {host_cpu().describe()}. Command: `python scripts/serving_benchmarks.py --update docs/benchmarks.md` "
             "(also part of `make bench`), after `make run`.", "",
             "Triton 2.51 from the nvidia-pytriton wheel, Python-backend form running the pipeline's ONNX Runtime runner;",
             "the load generator (tritonclient gRPC, async callbacks) shares the machine's cores with the server.", "",
             f"Batching search ({len(search['trials'])} trials over instances {SEARCH.instances}, max queue delay {SEARCH.max_queue_delay_us} us, "
             f"preferred batches {SEARCH.preferred_batch_sizes}, concurrency {SEARCH.concurrency}; p99 budget {budget_ms:g} ms) chose: "
             f"{winner['instances']} instance(s), max queue delay {winner['max_queue_delay_us']} us, preferred batches "
             f"{winner['preferred_batch_sizes'] or 'any'}, concurrency {winner['concurrency']}.", "",
             "| measurement | throughput | p99 ms | mean batch |", "|---|---|---|---|",
             *[f"| Triton, tuned, concurrency {level} | {statistics.mean(r['throughput'] for r in rows):.1f} req/s | "
               f"{max(r['p99_ms'] for r in rows):.1f} | {statistics.mean(r['mean_batch_size'] for r in rows):.1f} |" for level, rows in tuned_rows.items()],
             f"| Triton, no dynamic batching, concurrency 16 | {plain16:.1f} req/s | {max(r['p99_ms'] for r in plain_rows):.1f} | 1.0 |",
             *[f"| offline runner at batch {size}{' (the server' + chr(39) + 's mean)' if size == batch else ''} | {value:.1f} img/s | | {size} |"
               for size, value in offline_by_batch.items()], "",
             f"- Triton at the tuned configuration / offline at the mean batch: {served / offline:.2f} (floor ≥ 0.70: {verdict(served / offline >= 0.7)}).",
             f"- Dynamic batching / none at concurrency 16: {tuned16 / plain16:.2f}× (floor ≥ 1.5×: {verdict(tuned16 / plain16 >= 1.5)}). "
             f"The ceiling for any batcher is what batching gains offline: batch {largest} / batch 1 = {ceiling:.2f}× on this machine"
             + (" (one request already keeps every core busy)." if ceiling < 1.5 else "."),
             f"- Server start to model ready: median {statistics.median(ready):.1f} s of {', '.join(f'{s:.1f}' for s in ready)} "
             f"(floor ≤ 15 s: {verdict(statistics.median(ready) <= 15)}).",
             f"- Deploying version 2 while a client sent {delivery['requests']} requests back to back: {delivery['failed']} failed "
             f"({delivery['v1']} answered by v1, {delivery['v2']} by v2; floor: none lost: {verdict(delivery['failed'] == 0 and delivery['last'] == '2')}).", ""]
    return lines


def replace_section(document: str, section: list) -> str:
    """``document`` with its '## Serving' section replaced by ``section`` (appended if it has none)."""
    lines = document.splitlines()
    heading = section[0]
    if heading not in lines:
        return "\n".join(lines + [""] + section)
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start] + section + lines[end:])


def main() -> None:
    import argparse

    from pipeline.config import load_params

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--update", metavar="MARKDOWN", help="replace the serving section of this file (e.g. docs/benchmarks.md)")
    args = parser.parse_args()
    cfg = load_params(args.params)
    section = serving_section(cfg, cfg.serving.p99_budget_ms)
    print("\n".join(section))
    if args.update:
        path = Path(args.update)
        path.write_text(replace_section(path.read_text(), section))


if __name__ == "__main__":
    main()
