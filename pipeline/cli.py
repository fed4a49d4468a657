"""Shared plumbing for the stage entry points: argument parsing, progress, clean error exits."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Callable, Iterator, Optional, Sequence

from rich.markup import escape

from .console import console
from .errors import PipelineError


def stage_args(description: str, key: str, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(f"--{key}", required=True, help=f"the {key} key in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="composed config (default: params.yaml)")
    return parser.parse_args(argv)


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage; a PipelineError becomes one red line and exit status 2, no traceback
    (PIPELINE_DEBUG=1 prints the traceback with the library error that caused it). SIGTERM unwinds like
    Ctrl-C, so temporaries, locks and servers are cleaned up on the way out."""
    import signal

    def terminated(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminated)
    try:
        main()
    except PipelineError as exc:
        if os.environ.get("PIPELINE_DEBUG"):
            console.print_exception()
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[bold red]interrupted[/]")
        sys.exit(130)


def load_stage_params(path: str):
    """params.yaml, typed and checked; then temporaries of killed earlier runs are removed."""
    from .config import load_params
    from .files import remove_stale_temporaries

    cfg = load_params(path)
    for folder in (cfg.artifacts_dir, cfg.metrics_dir, cfg.plots_dir):
        if os.path.isdir(folder):
            remove_stale_temporaries(folder)
    return cfg


@contextlib.contextmanager
def stage_params(path: str) -> Iterator:
    """params.yaml for a stage, held still while it runs: the stage holds the project's stages lock
    (compose is refused meanwhile), and fails if the file changed anyway (an editor), so DVC never
    records params the stage did not read."""
    from pathlib import Path

    from .files import project_lock, sha256_file

    params = Path(path)
    with project_lock(params.resolve().parent, exclusive=False):
        before = sha256_file(params) if params.is_file() else None
        yield load_stage_params(path)
        if (sha256_file(params) if params.is_file() else None) != before:
            raise PipelineError(f"{params} changed while this stage ran; what it wrote comes from the earlier params: "
                                f"run `dvc repro` again (it reruns this stage)")


def model_stage(step: Callable, description: str) -> None:
    """Entry point of a per-model stage: ``python -m stages.X --model NAME``."""

    def main() -> None:
        from .config import resolve_model

        args = stage_args(description, "model")
        with stage_params(args.params) as cfg:
            step(cfg, resolve_model(cfg, args.model))

    run_stage(main)


def build_stage(step: Callable, description: str) -> None:
    """Entry point of a per-build stage: ``python -m stages.X --build MODEL-TARGET-PRECISION``."""

    def main() -> None:
        from .config import resolve_build

        args = stage_args(description, "build")
        with stage_params(args.params) as cfg:
            step(resolve_build(cfg, args.build))

    run_stage(main)
