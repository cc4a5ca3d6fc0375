"""build_once: write a demo set once, atomically, even for racing processes; refuse other settings; replace an older
generator's set."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmmed_datasets.demo.demo_folder import MANIFEST, build_once


def writer(text: str, calls: list):
    def write(folder):
        calls.append(folder)
        (folder / "data.txt").write_text(text)
    return write


def test_writes_once_then_reuses(tmp_path):
    calls = []
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("a", calls))
    assert (root / "data.txt").read_text() == "a" and json.loads((root / MANIFEST).read_text()) == {"seed": 0, "version": 1}
    assert build_once(root, {"seed": 0, "version": 1}, writer("b", calls)) == root
    assert len(calls) == 1 and (root / "data.txt").read_text() == "a"


def test_an_older_generator_version_is_regenerated_in_place(tmp_path):
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("old", []))
    (root / "stale-only-in-v1.txt").write_text("x")
    build_once(root, {"seed": 0, "version": 2}, writer("new", []))
    assert sorted(p.name for p in root.iterdir()) == sorted([MANIFEST, "data.txt"])
    assert (root / "data.txt").read_text() == "new" and json.loads((root / MANIFEST).read_text())["version"] == 2
    # no temporary or old folder left; the lock file stays (deleting it could let two builders in)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.lock"]


def test_other_settings_are_refused_and_a_failed_rebuild_keeps_the_old_set(tmp_path):
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("old", []))
    with pytest.raises(ValueError, match="was generated with"):
        build_once(root, {"seed": 1, "version": 1}, writer("x", []))

    def broken(folder):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_once(root, {"seed": 0, "version": 2}, broken)
    assert (root / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.lock"]


# Builds the demo set at argv[1]; the writer records that it ran (argv[2]/<me>) and holds the lock
# until the other process has logged that it waits for it, so the two really collide.
RACER = """
import logging, os, sys, time
from pathlib import Path
os.umask(0o002)
from mmmed_datasets.demo.demo_folder import build_once

root, runs, waiting, me = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]

class MarkWaiting(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Waiting for another process building"):
            (waiting / me).touch()

logging.getLogger("mmmed.atomic_files").addHandler(MarkWaiting())
logging.getLogger("mmmed.atomic_files").setLevel(logging.INFO)

def write(folder):
    (runs / me).touch()
    deadline = time.monotonic() + 240  # hang guard only
    while not any(waiting.iterdir()):
        if time.monotonic() > deadline:
            raise TimeoutError("the other process never waited for the lock")
        time.sleep(0.01)
    (folder / "records").mkdir()
    (folder / "records" / "r1.txt").write_text("signal")

build_once(root, {"seed": 0, "version": 1}, write)
"""


def test_two_processes_starting_at_once_generate_the_set_once(tmp_path):
    root, runs, waiting = tmp_path / "demo", tmp_path / "runs", tmp_path / "waiting"
    runs.mkdir()
    waiting.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(RACER), str(root), str(runs), str(waiting), me],
                              cwd=Path(__file__).resolve().parents[3], env=env, stderr=subprocess.PIPE, text=True)
             for me in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=300)  # hang guard; each child takes well under a second
        assert proc.returncode == 0, err
    assert len(list(runs.iterdir())) == 1 and len(list(waiting.iterdir())) == 1
    assert (root / "records" / "r1.txt").read_text() == "signal"
    assert json.loads((root / MANIFEST).read_text()) == {"seed": 0, "version": 1}
    # umask 002: a group sharing the demo data can read and replace it (mkdtemp alone would give 0700)
    found = {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *sorted(root.rglob("*"))]}
    assert found == {".": 0o775, MANIFEST: 0o664, "records": 0o775, "records/r1.txt": 0o664}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.lock", "runs", "waiting"]
