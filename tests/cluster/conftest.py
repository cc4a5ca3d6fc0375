"""Fixtures for tests/cluster: a real single-node SLURM cluster for the session, and the demo data.

Debian's ``slurm-wlm`` and ``munge`` are installed with apt-get when missing (CI runs as root on a fresh
machine); the tests skip, saying why, only where slurmctld cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from slurm_cluster import Cluster, install_slurm, start, stop


@pytest.fixture(scope="session")
def slurm() -> Cluster:
    """A running single-node SLURM cluster (partitions debug, low: preemptible, high: preempts low)."""
    reason = install_slurm()
    if reason:
        pytest.skip(reason)
    # Not under pytest's basetemp: that is private to its user (0700), and munged runs as user munge.
    state = Path(tempfile.mkdtemp(prefix="mmmed-slurm-"))
    state.chmod(0o755)
    previous_conf = os.environ.get("SLURM_CONF")
    try:
        yield start(state)
    finally:
        stop(state)
        shutil.rmtree(state, ignore_errors=True)
        if previous_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous_conf


@pytest.fixture(scope="session")
def cluster_demo_root() -> Path:
    """The 30-patient demo of tests/test_train.py (24 training records), where conf/data/ptbxl_demo.yaml keeps
    it in the cache: made once, then reused by later sessions (the jobs read it from there too)."""
    cache = Path(os.environ.get("MMMED_CACHE", Path.home() / ".cache" / "mmmed"))
    return ensure_demo_ptbxl(cache / "demo" / "ptbxl-demo-p30x1-seed0", num_patients=30, records_per_patient=1, seed=0)
