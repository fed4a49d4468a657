"""DVC stage `environment@<target>`: the library versions and device the target's artifacts are tied to."""
from pipeline import steps
from pipeline.cli import run_stage, stage_args, stage_params
from pipeline.console import console
from pipeline.errors import PipelineError


def main() -> None:
    args = stage_args(__doc__, "target")
    with stage_params(args.params) as cfg:
        if args.target not in cfg.target:
            raise PipelineError(f"target '{args.target}' is not selected in {args.params}; selected: {sorted(cfg.target)}")
        found = steps.environment(cfg, args.target)
    console.print(f"  environment {args.target}: {found['engine']} {found['device']}")


if __name__ == "__main__":
    run_stage(main)
