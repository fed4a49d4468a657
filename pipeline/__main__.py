"""Project commands: ``python -m pipeline compose|check|serve|deploy|cpu-target|plots|run``, one function each.

compose: conf/ (+ Hydra overrides, e.g. ``precision=[fp32,int8] model=[digits_cnn]``) -> params.yaml,
         exactly as ``dvc exp run -S`` composes it, for ``dvc repro`` users.
check:   fail when params.yaml differs from the composition of conf/ (CI runs this); ``--rehash`` also
         makes DVC hash every dependency again (an edit that kept a file's size and time is otherwise unseen).
serve:   serve one packaged build on a real Triton server in the foreground until Ctrl-C.
deploy:  promote a packaged build to the next version of a live repository on a running Triton server
         (explicit model control), checked first; ``--rollback`` serves the previous good version again.
cpu-target: this host's CPU, its instruction sets, and the CPU targets it runs (the most specific first).
plots:   dvc.yaml's plots, as DVC fills them, rendered to SVG, PNG and offline HTML in reports/plots.
run:     the build matrix split by target: ``run --target T`` fetches the run-cache from the default remote,
         reproduces only target T's stages here and pushes the results; ``run --report`` gathers every
         target's results from the remote into one report.
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from .cli import run_stage
from .console import console
from .dvc_file import core_module_problems, write_core_modules
from .config import compose_yaml, write_params
from .errors import PipelineError
from .files import project_lock


def refuse_while_dvc_runs(project: Path) -> None:
    """A `dvc repro` reads params.yaml while it runs: rewriting it then mixes two configurations."""
    import fcntl

    for folder in (project, *project.parents):
        lock = folder / ".dvc" / "tmp" / "lock"
        if not lock.is_file():
            continue
        with open(lock, "a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # DVC holds it exclusively while it runs
            except BlockingIOError:
                raise PipelineError(f"DVC is running in {folder} (it holds {lock}); compose params.yaml after it finishes") from None
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return


def compose_command(args) -> None:
    project = Path(args.output).resolve().parent
    refuse_while_dvc_runs(project)
    with project_lock(project, exclusive=True, refusal=f"a stage of {project} is running; compose params.yaml after it finishes"):
        text = write_params(args.output, args.overrides)
        if (project / "dvc.yaml").is_file() and write_core_modules(project / "dvc.yaml"):
            console.print(f"wrote the core modules of every stage into {project / 'dvc.yaml'}")
    console.print(f"wrote {args.output} ({len(text.splitlines())} lines)")


def check_command(args) -> None:
    if args.rehash:
        from .matrix import forget_remembered_hashes

        forget_remembered_hashes(Path(args.params).resolve().parent)
    expected = compose_yaml(args.overrides, project=Path(args.params).resolve().parent)
    path = Path(args.params)
    actual = path.read_text(encoding="utf-8") if path.is_file() else ""
    if actual != expected:
        diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), str(path), "composed conf/"))
        raise PipelineError(f"{path} is out of date with conf/; run `make params`:\n{diff}")
    dvc_yaml = path.resolve().parent / "dvc.yaml"
    problems = core_module_problems(dvc_yaml) if dvc_yaml.is_file() else []
    if problems:
        raise PipelineError("; ".join(problems))
    console.print(f"{path} matches conf/" + ("; dvc.yaml declares the core modules in every stage" if dvc_yaml.is_file() else ""))


def serve_command(args) -> None:
    import time

    from .config import load_params, resolve_build
    from .steps.serve_step import served

    ctx = resolve_build(load_params(args.params), args.build)
    with served(ctx, args.http_port, args.grpc_port, args.metrics_port) as (server, _):
        console.print(f"serving {ctx.name}: gRPC {server.grpc}, HTTP {server.http}, metrics {server.metrics_url}")
        console.print(f"  liveness  probe: GET http://{server.http}/v2/health/live")
        console.print(f"  readiness probe: GET http://{server.http}/v2/health/ready  (model: /v2/models/{ctx.name}/ready)")
        console.print("  Ctrl-C stops the server")
        while server.process.poll() is None:
            time.sleep(0.5)
        raise PipelineError(f"Triton exited with status {server.process.returncode}; log tail:\n{server.log_tail()}")


def deploy_command(args) -> None:
    from .serving.deploy import rollback
    from .steps.deploy_step import deploy as deploy_build

    if args.rollback:
        entry = rollback(Path(args.repository), args.build, args.http)
    else:
        from .config import load_params, resolve_build

        entry = deploy_build(resolve_build(load_params(args.params), args.build), Path(args.repository), args.http, args.grpc, args.name)
    console.print(f"{args.build}: version {entry['version']} ({entry['build']}) {entry['outcome']}")


def cpu_target_command(args) -> None:
    from .config import cpu_target_isas
    from .evaluate.host import host_cpu, matching_targets

    host = host_cpu()
    targets = cpu_target_isas()
    usable = matching_targets(targets)
    console.print(f"this host: {host.describe()}")
    console.print(f"CPU targets it runs, the most specific first: {', '.join(f'{t} ({targets[t]})' for t in usable)}")
    console.print(f"build for it: make params OVERRIDES='target=[{usable[0]}]'   (or dvc exp run -S 'target=[{usable[0]}]')", markup=False)


def plots_command(args) -> None:
    from .report.plots import filled_specs, render_images

    written = render_images(filled_specs(Path(".")), Path(args.out))
    console.print(f"{len(written) // 2} plots rendered to {args.out}: SVG and PNG each, {args.out}/index.html opens offline")


def run_command(args) -> None:
    from . import matrix
    from .config import load_params

    if not args.target and not args.report:
        raise PipelineError("run needs --target NAME (repeatable) and/or --report")
    if args.target:
        matrix.run_targets(load_params(args.params), args.target, share=not args.no_share)
    if args.report:
        matrix.report(share=not args.no_share)


def parser() -> argparse.ArgumentParser:
    """Every command with its arguments; each sets ``handler``, the function that runs it."""
    main_parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main_parser.add_subparsers(dest="command", required=True)
    compose = commands.add_parser("compose", help="compose conf/ into params.yaml")
    compose.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=[digits_cnn] precision=[fp32,int8]")
    compose.add_argument("--output", default="params.yaml")
    compose.set_defaults(handler=compose_command)
    check = commands.add_parser("check", help="params.yaml must equal the composition of conf/")
    check.add_argument("overrides", nargs="*")
    check.add_argument("--params", default="params.yaml")
    check.add_argument("--rehash", action="store_true",
                       help="forget DVC's remembered file hashes, so its next run hashes every dependency again")
    check.set_defaults(handler=check_command)
    serve = commands.add_parser("serve", help="serve a packaged build on Triton until Ctrl-C")
    serve.add_argument("build")
    serve.add_argument("--params", default="params.yaml")
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.set_defaults(handler=serve_command)
    deploy = commands.add_parser("deploy", help="deploy a packaged build to a running Triton server, with rollback")
    deploy.add_argument("build", help="the build to deploy, or with --rollback the served model's name")
    deploy.add_argument("--repository", required=True, help="the live model repository the server serves")
    deploy.add_argument("--http", default="127.0.0.1:8000")
    deploy.add_argument("--grpc", default="127.0.0.1:8001")
    deploy.add_argument("--name", default="", help="the served model's name (default: the build's model, e.g. resnet18)")
    deploy.add_argument("--rollback", action="store_true", help="serve the previous good version again")
    deploy.add_argument("--params", default="params.yaml")
    deploy.set_defaults(handler=deploy_command)
    commands.add_parser("cpu-target", help="this host's CPU and the CPU targets it runs").set_defaults(handler=cpu_target_command)
    plots = commands.add_parser("plots", help="render dvc.yaml's plots to images (no network needed)")
    plots.add_argument("--out", default="reports/plots")
    plots.set_defaults(handler=plots_command)
    run = commands.add_parser("run", help="run one target's share of the matrix, through the DVC remote")
    run.add_argument("--target", action="append", default=[], help="a selected target (repeat for several)")
    run.add_argument("--report", action="store_true", help="fetch every target's results and write the report")
    run.add_argument("--no-share", action="store_true", help="no fetch/push: this machine only")
    run.add_argument("--params", default="params.yaml")
    run.set_defaults(handler=run_command)
    return main_parser


def main() -> None:
    args = parser().parse_args()
    args.handler(args)


if __name__ == "__main__":
    run_stage(main)
