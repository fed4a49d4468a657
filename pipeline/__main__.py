"""Project commands: ``python -m pipeline compose [OVERRIDES...]`` and ``python -m pipeline check``.

compose: conf/ (+ Hydra overrides, e.g. ``precision=[fp32,int8] model=[digits_cnn]``) -> params.yaml,
         exactly as ``dvc exp run -S`` composes it, for ``dvc repro`` users.
check:   fail when params.yaml differs from the composition of conf/ (CI runs this).
"""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from .cli import console, run_stage
from .config import compose_yaml, write_params
from .errors import PipelineError


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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    compose = commands.add_parser("compose", help="compose conf/ into params.yaml")
    compose.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=[digits_cnn] precision=[fp32,int8]")
    compose.add_argument("--output", default="params.yaml")
    check = commands.add_parser("check", help="params.yaml must equal the composition of conf/")
    check.add_argument("overrides", nargs="*")
    check.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    if args.command == "compose":
        refuse_while_dvc_runs(Path(args.output).resolve().parent)
        text = write_params(args.output, args.overrides)
        console.print(f"wrote {args.output} ({len(text.splitlines())} lines)")
    else:
        expected = compose_yaml(args.overrides)
        path = Path(args.params)
        actual = path.read_text(encoding="utf-8") if path.is_file() else ""
        if actual != expected:
            diff = "".join(difflib.unified_diff(actual.splitlines(True), expected.splitlines(True), str(path), "composed conf/"))
            raise PipelineError(f"{path} is out of date with conf/; run `make params`:\n{diff}")
        console.print(f"{path} matches conf/")


if __name__ == "__main__":
    run_stage(main)
