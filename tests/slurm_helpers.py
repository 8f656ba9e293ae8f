"""Helpers for the tests that use the real local SLURM cluster (slurm/start-local-cluster.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def require_slurm() -> None:
    """Skip where SLURM is absent (never in CI); fail where it is installed but not running."""
    if shutil.which("sbatch") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must run the SLURM tests: sbatch not found (did slurm/start-local-cluster.sh run?)")
        pytest.skip("sbatch not found: start the local cluster with slurm/start-local-cluster.sh (as root)")
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not probe.stdout.strip():
        pytest.fail(f"SLURM is installed but not answering (sinfo: {probe.stderr.strip()}); "
                    "run slurm/start-local-cluster.sh")
