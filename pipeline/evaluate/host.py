"""The host CPU and the instruction-set levels CPU targets are built for.

INT8 speed, and even INT8 numerics, depend on the ISA: without VNNI, ONNX Runtime's u8s8 kernels
multiply in 16 bits and saturate (hence 7-bit weights on the avx2 target); with VNNI (AVX512-VNNI or
AVX-VNNI) full 8-bit weights are exact and fast; AMX adds tile matrix units for INT8.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Tuple

from ..backends.base import cpuinfo
from ..config.schema import option_value

# Each level and the /proc/cpuinfo flags that provide it (any one of them), from the newest down.
ISA_FLAGS: Dict[str, Tuple[str, ...]] = {
    "amx": ("amx_int8",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "avx2": ("avx2",),
    "x86_64": (),
}
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class HostCpu:
    model: str
    cores: int
    flags: Tuple[str, ...]  # the REPORTED_FLAGS this CPU has

    def supports(self, isa: Optional[str]) -> bool:
        """Whether this CPU runs code built for ``isa`` (None or x86_64: any x86-64 CPU)."""
        needed = ISA_FLAGS.get(isa or "x86_64", ())
        return not needed or any(flag in self.flags for flag in needed)

    @property
    def best_isa(self) -> str:
        return next(isa for isa in ISA_FLAGS if self.supports(isa))

    def describe(self) -> str:
        return f"{self.model}, {self.cores} cores, ISA: {', '.join(self.flags) or 'baseline x86-64'}"


@lru_cache(maxsize=None)
def host_cpu() -> HostCpu:
    fields = cpuinfo()
    model = fields.get("model name") or platform.processor() or "unknown CPU"
    flags = set(fields.get("flags", "").split())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return HostCpu(model, cores, tuple(f for f in REPORTED_FLAGS if f in flags))


def isa_report(target_name: str, target_isa) -> Tuple[dict, str]:
    """What validate and benchmark record (the host, and whether it has the target's ISA), and a
    warning to print when it has not ('' when it has)."""
    host, isa = host_cpu(), option_value(target_isa) if target_isa else "x86_64"
    report = {"host_cpu": host.model, "host_isa": list(host.flags), "target_isa": isa, "target_isa_on_host": host.supports(isa)}
    warning = "" if report["target_isa_on_host"] else (
        f"target {target_name} is built for {isa}; this host ({host.model}: {', '.join(host.flags) or 'baseline x86-64'}) "
        f"lacks it, so these figures are not the target's")
    return report, warning


def matching_targets(targets: Dict[str, Optional[str]]) -> List[str]:
    """The CPU targets (name -> ISA) this host can run, the most specific first."""
    host, order = host_cpu(), list(ISA_FLAGS)
    usable = [(order.index(isa or "x86_64"), name) for name, isa in targets.items() if host.supports(isa)]
    return [name for _, name in sorted(usable)]
