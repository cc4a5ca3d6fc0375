"""A real single-node SLURM cluster for tests/cluster: munged, slurmctld and slurmd started by hand (no
systemd) with all state in one folder, and stopped by their PID files.

Debian's ``slurm-wlm`` and ``munge`` are installed with apt-get when missing (CI runs as root on a fresh
machine). The tests skip, saying why, only where slurmctld cannot be installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PACKAGES = ["slurm-wlm", "slurm-client", "munge"]
DAEMONS = ("slurmctld", "slurmd", "munged")


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def install_slurm() -> str | None:
    """Install the Debian packages if a daemon is missing; None when they are there, else why not."""
    if all(_which(d) for d in DAEMONS):
        return None
    if os.geteuid() != 0 or not _which("apt-get"):
        return "slurmctld is not installed and cannot be: apt-get install slurm-wlm munge needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *PACKAGES]
    proc = subprocess.run(install, env=env, capture_output=True, text=True)
    if proc.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
    missing = [d for d in DAEMONS if not _which(d)]
    if missing:
        return f"slurmctld could not be installed (apt-get install {' '.join(PACKAGES)}): {proc.stderr[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _memory_mb() -> int:
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    return int(total_kb / 1024 * 0.8)


@dataclass
class Cluster:
    """The running cluster: its state folder, config, CPUs, and helpers around the SLURM commands."""

    state: Path
    conf: Path
    cpus: int

    def run(self, *cmd: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, **kwargs)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
        return proc

    def sbatch(self, *args: str, cwd: Path = REPO, env: dict[str, str] | None = None) -> str:
        """Submit; returns the job id."""
        return self.run("sbatch", "--parsable", *args, cwd=cwd, env=env).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); completed jobs stay 10 min."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def wait(self, job_id: str, states: tuple[str, ...] = ("COMPLETED",), timeout: float = 600) -> dict[str, str]:
        """Wait until the job is in one of ``states`` or has ended; returns its last ``job()``."""
        ended = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job_id)
            if info["JobState"] in states or info["JobState"] in ended or time.monotonic() > deadline:
                return info
            time.sleep(1)

    def log(self, daemon: str) -> str:
        path = self.state / "slurm" / "log" / f"{daemon}.log"
        return path.read_text() if path.exists() else ""


def start(state: Path) -> Cluster:
    munge = state / "munge"
    for sub in ("etc", "run", "log", "lib"):
        (munge / sub).mkdir(parents=True)
    for sub in ("etc", "state", "spool", "run", "log"):
        (state / "slurm" / sub).mkdir(parents=True)
    key = munge / "etc" / "munge.key"
    key.write_bytes(os.urandom(1024))
    for path in [munge, *munge.iterdir(), key]:
        shutil.chown(path, "munge", "munge")
        # the socket's folder must be searchable by every user that submits jobs
        path.chmod(0o400 if path == key else 0o755 if path.name in ("munge", "run") else 0o700)
    cpus = max(2, os.cpu_count() or 2)  # the DDP test runs two tasks of one CPU each
    conf = state / "slurm" / "etc" / "slurm.conf"
    conf.write_text((HERE / "slurm.conf.in").read_text().format(
        state=state, ctld_port=_free_port(), slurmd_port=_free_port(), cpus=cpus, memory_mb=_memory_mb()))
    os.environ["SLURM_CONF"] = str(conf)  # sbatch, squeue, scontrol here and in the jobs use this cluster

    cluster = Cluster(state=state, conf=conf, cpus=cpus)
    cluster.run("runuser", "-u", "munge", "--", _which("munged"), f"--socket={munge}/run/munge.socket.2",
                f"--key-file={key}", f"--log-file={munge}/log/munged.log", f"--pid-file={munge}/run/munged.pid",
                f"--seed-file={munge}/lib/munged.seed")
    cluster.run(_which("slurmctld"))
    cluster.run(_which("slurmd"), "-N", "localhost")
    deadline = time.monotonic() + 60
    while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the SLURM node never became idle:\n{cluster.log('slurmctld')[-3000:]}")
        time.sleep(0.5)
    return cluster


def stop(state: Path) -> None:
    """Cancel what is left, then stop exactly the daemons started above, by their PID files."""
    subprocess.run(["scancel", "--full", f"--user={os.getuid()}"], capture_output=True)
    pid_files = [state / "slurm/run/slurmd-localhost.pid", state / "slurm/run/slurmctld.pid",
                 state / "munge/run/munged.pid"]
    for pid_file in pid_files:
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text().split()[0])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):  # up to 10 s
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)


def job_env() -> dict[str, str]:
    """What SLURM jobs inherit: this Python's venv first on PATH, W&B offline, no hub access."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "WANDB_MODE": "offline",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
