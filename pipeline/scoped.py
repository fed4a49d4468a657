"""Process-wide settings changed for one call only, then restored: a library call that needs quiet
loggers or deterministic single-threaded torch must not change them for the caller."""
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
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
