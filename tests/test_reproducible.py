"""Same commit, another CPU kind, same bytes: what the README promises across machines."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from pipeline.config import write_params
from pipeline.io import sha256_file
from pipeline.onnx_tools.quantize import RANGE_BITS, portable_range

from .conftest import REPO

# What torch's CPU dispatch picks by itself on an AVX2-only machine and on an AVX-512 one: ATen's
# vectorized kernels, MKL's code path and oneDNN's JIT level (each library's own override variable).
CPU_KINDS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}


@pytest.mark.slow
def test_training_gives_the_same_checkpoint_on_avx2_and_avx512_kernels(tmp_path):
    """The digits CNN trained by the real prepare stage under each kind's kernel choice: the same bytes.
    (Without portable_float_kernels these two differ; this host has AVX-512, so both paths run here.)"""
    checkpoints = {}
    for kind, dispatch in CPU_KINDS.items():
        params = tmp_path / f"{kind}.yaml"
        write_params(params, ["model=[digits_cnn]", "dataset=[digits]", f"artifacts_dir={tmp_path / kind}", f"metrics_dir={tmp_path / kind / 'm'}"])
        env = {key: value for key, value in os.environ.items() if key not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
        result = subprocess.run([sys.executable, "-m", "stages.prepare", "--model", "digits_cnn", "--params", str(params)], cwd=REPO,
                                env={**env, **dispatch}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        checkpoints[kind] = sha256_file(tmp_path / kind / "models" / "digits_cnn" / "prepared" / "checkpoint.pt")
    assert checkpoints["avx2"] == checkpoints["avx512"]


def test_calibration_ranges_round_outward_and_absorb_last_bit_noise():
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.0, 3.0, size=2000) * rng.choice([-1.0, 1.0], size=2000)
    stable = 0
    for value in values:
        low, high = portable_range(-abs(value), abs(value))
        assert low <= -abs(value) and high >= abs(value), "a range only widens"
        assert high - abs(value) <= abs(value) * 2.0 ** (1 - RANGE_BITS), "by at most one step of RANGE_BITS bits"
        noisy = abs(value) * (1 + 4e-7 * rng.standard_normal())  # a few float32 ulps, as another ISA's kernels give
        stable += portable_range(-noisy, noisy) == (low, high)
    assert stable >= 0.99 * len(values), f"only {stable}/{len(values)} ranges survived last-bit noise"
    assert portable_range(0.0, 0.0) == (0.0, 0.0)
