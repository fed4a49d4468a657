"""The build matrix split across machines by target, through DVC's remote and run-cache.

`python -m pipeline run --target T` runs here only what target T needs (its environment probe, its
builds' stages, and the model stages they depend on, unless the run-cache already holds them),
after fetching the run-cache from the default remote, and pushes what it made. Stages that need a
device this machine lacks (validating and benchmarking a GPU engine without the GPU) are left to a
machine that has it. `python -m pipeline run --report` fetches every target's results and writes
the one report. DVC's run-cache is what keeps a stage from running twice on different machines.

DVC restores a stage from the run-cache only when dvc.lock does not already name its outputs: with a
lock entry it pulls exactly those outputs and, when no cache or remote has them (a dvc.lock committed
from a machine that never pushed, or from another CPU kind), runs the stage. So both commands first
forget the lock entries whose outputs are nowhere, and the run-cache answers for those stages.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List, Sequence

from .backends import get_backend
from .console import console
from .config.schema import Device, PipelineConfig
from .errors import PipelineError

BUILD_STAGES = ("calibrate", "build", "package")
DEVICE_STAGES = ("validate", "benchmark")  # they run the engine: only where its device is


def _dvc(repo: Path, *args: str, what: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        reason = next((line for line in reversed(said) if "ERROR" in line), said[-1] if said else f"exit {done.returncode}")
        hint = ""
        if "remote" in reason.lower() or "no such file" in reason.lower() or "nonexistent" in reason.lower():
            hint = " (the default remote is `shared` in .dvc/config: `dvc remote list` shows it, `dvc remote modify shared url <url>` moves it)"
        raise PipelineError(f"{what} failed: {reason}{hint}")
    return done


def _config_value(repo: Path, key: str) -> str:
    """A DVC config value, merged over every level (repo, local, user); "" when unset."""
    done = subprocess.run([sys.executable, "-m", "dvc", "config", key], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def check_remote(repo: Path) -> str:
    """The default remote's URL; one clear error when none is configured or a local one is not mounted."""
    name = _config_value(repo, "core.remote")
    if not name:
        raise PipelineError("no default DVC remote is configured: `dvc remote add -d shared <url>` (the project ships "
                            "`shared` in .dvc/config; `dvc remote list` shows what this clone has)")
    url = _config_value(repo, f"remote.{name}.url")
    if "://" not in url:
        # Relative URLs in the repo's config are relative to .dvc/.
        path = Path(url) if Path(url).is_absolute() else (repo / ".dvc" / url).resolve()
        # The folder itself is created by the first push; a missing parent is storage that is not there (not mounted).
        if not path.parent.is_dir():
            raise PipelineError(f"the DVC remote '{name}' is unreachable: {path.parent} does not exist (is the shared storage "
                                f"mounted?); `dvc remote modify {name} url <url>` points it elsewhere")
    return url


def can_run_device(cfg: PipelineConfig, target: str) -> bool:
    """Whether engines of ``target`` run here (CPU targets always; GPU targets where CUDA sees a GPU)."""
    if cfg.target[target].device == Device.cpu:
        return True
    from .backends.cuda_runtime import gpu_identity

    return gpu_identity() is not None


def target_stages(cfg: PipelineConfig, target: str) -> List[str]:
    """The DVC stages a machine runs for ``target``; refuses a target whose engine library is missing here."""
    if target not in cfg.target:
        raise PipelineError(f"target '{target}' is not selected in params.yaml; selected: {sorted(cfg.target)} "
                            f"(compose it in: make params OVERRIDES='target=[...]')")
    settings = cfg.target[target]
    missing = {}
    for runtime in settings.candidate_runtimes:  # one is enough: a target that measures runtimes builds with those it has
        try:
            get_backend(runtime).check_available()
        except PipelineError as exc:
            missing[runtime.value] = str(exc)
    if len(missing) == len(settings.candidate_runtimes):
        raise PipelineError(f"this machine cannot build target '{target}': {'; '.join(missing.values())}. Run it on a machine that has "
                            f"{' or '.join(missing)} (CI: the runner labelled for it, .github/workflows/pipeline.yml)")
    device_too = can_run_device(cfg, target)
    stages = [f"environment@{target}"]
    for build, entry in sorted(cfg.builds.items()):
        if entry.target == target:
            stages += [f"{stage}@{build}" for stage in BUILD_STAGES + (DEVICE_STAGES if device_too else ())]
    stages += [f"serve@{build}" for build, entry in sorted(cfg.servable.items()) if entry.target == target]
    return stages


def forget_unobtainable_results(repo: Path, targets: Sequence[str]) -> List[str]:
    """Drop from dvc.lock the entries, among ``targets`` and the stages they depend on, whose outputs are
    in neither this clone's cache nor the default remote; returns the stages dropped."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = {stage.addressing: stage for target in targets for stage in dvc_repo.stage.collect(target, with_deps=True)}
        # Outputs kept out of the cache (the environment probe's, `cache: false`) are remade by their stage.
        locked = {name: [out.hash_info.value for out in stage.outs if out.use_cache] for name, stage in stages.items()
                  if any(out.use_cache for out in stage.outs) and all(out.hash_info for out in stage.outs)}
        wanted = {oid for oids in locked.values() for oid in oids}
        present = set(dvc_repo.cache.local.oids_exist(list(wanted)))
        if wanted - present:
            present |= set(dvc_repo.cloud.get_remote_odb(None, command="run").oids_exist(list(wanted - present)))
        dropped = sorted(name for name, oids in locked.items() if not set(oids) <= present)
        for name in dropped:
            stages[name].dvcfile._lockfile.remove_stage(stages[name])
    if dropped:
        console.print(f"{len(dropped)} stages: dvc.lock names results that no cache or remote holds (made on another machine, "
                      f"never pushed?); looking them up in the run-cache instead: {', '.join(dropped)}")
    return dropped


def forget_remembered_hashes(repo: Path) -> None:
    """DVC remembers each file's hash by its inode, size and modification time, so an edit that keeps all
    three (a same-size rewrite with the old time put back) is not seen. Forgetting them makes the next
    `dvc status` / `dvc repro` hash every dependency again (slow on large data, once)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        dvc_repo.state.hashes.clear()
    console.print("DVC's remembered file hashes are cleared: its next run hashes every dependency again")


def run_targets(cfg: PipelineConfig, targets: Sequence[str], repo: Path = Path("."), share: bool = True) -> List[str]:
    """Fetch the run-cache, reproduce the targets' stages, push the results; returns the stages asked for."""
    stages = [stage for target in targets for stage in target_stages(cfg, target)]
    if share:
        check_remote(repo)
        _dvc(repo, "fetch", "--run-cache", what="fetching results from the remote")
        forget_unobtainable_results(repo, stages)
    console.print(f"running {len(stages)} stages for {', '.join(targets)} (the run-cache restores what another machine made)")
    # --pull: a stage found in the run-cache takes its outputs from the remote instead of running.
    done = _dvc(repo, "repro", *(["--pull"] if share else []), *stages, what="dvc repro")
    sys.stdout.write(done.stdout)
    if share:
        _dvc(repo, "push", "--run-cache", what="pushing results to the remote")
    return stages


def report(repo: Path = Path("."), share: bool = True) -> None:
    """Every target's results from the remote into one report (reports/summary.md)."""
    if share:
        check_remote(repo)
        _dvc(repo, "fetch", "--run-cache", what="fetching results from the remote")
        forget_unobtainable_results(repo, ["report"])
    done = _dvc(repo, "repro", *(["--pull"] if share else []), "report", what="dvc repro report")
    sys.stdout.write(done.stdout)
