"""Process-wide settings changed for one call only, then restored: a library call that needs quiet
loggers or deterministic single-threaded torch must not change them for the caller. (The one
exception, portable_float_kernels, cannot be undone and says so.)"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def logger_levels(level: int, *names: str) -> Iterator[None]:
    """Set the named loggers ('' is the root logger) to ``level`` inside the block."""
    loggers = [logging.getLogger(name or None) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


@contextlib.contextmanager
def deterministic_torch(threads: int = 1) -> Iterator[None]:
    """One thread and deterministic algorithms inside the block (bitwise-reproducible training and
    BatchNorm statistics), the caller's torch settings after it."""
    import torch

    threads_before, deterministic_before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    onednn_before = torch.backends.mkldnn.enabled
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.backends.mkldnn.enabled = False  # oneDNN JIT-compiles its kernels per instruction set
    # NNPACK (ATen's pick for stride-1 convolutions on batches of 16+ once oneDNN is off) is a Winograd
    # path that runs or not, and blocks its sums, by what it detects of the CPU and its caches. Off,
    # convolutions run im2col + MKL GEMM, one code path on every CPU.
    nnpack_before = torch.backends.nnpack.set_flags(False)[0]
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
        torch.backends.mkldnn.enabled = onednn_before
        torch.backends.nnpack.set_flags(nnpack_before)


# ATen's generic kernels and MKL's branch that gives the same results on every x86-64 CPU.
PORTABLE_FLOAT_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def portable_float_kernels() -> bool:
    """Pin torch's CPU float kernels to one code path for every instruction set (AVX2, AVX-512, AMX),
    so the same training gives the same bits on any x86-64 machine, at some speed. ATen and MKL read
    these settings once, at their first use in the process, so this is process-wide and must come
    before torch computes anything; returns whether it took effect."""
    import os

    os.environ.update(PORTABLE_FLOAT_KERNELS)
    import torch

    return torch.backends.cpu.get_cpu_capability() == "DEFAULT"
