"""atomic_files: a folder is built once by racing processes, readers never see a torn file, modes follow the umask.

The races run in real processes (``python -c``), synchronised through marker files, never through
sleeps whose length matters: a builder holds the lock until every other process has said it waits.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mmmed.atomic_files import build_folder_once, current_umask, file_lock, follow_umask, lock_path, write_file_atomic

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 300  # only a broken lock makes a child wait this long; a passing run takes ~1 s per child


def run_together(children: list[tuple[str, list[str]]]) -> list[str]:
    """Start one ``python -c script argv...`` per (script, argv) at once; their stdouts, failing on any error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *argv], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for script, argv in children]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=HANG_GUARD_S)
        assert proc.returncode == 0, f"child failed:\n{err}"
        outputs.append(out)
    return outputs


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file below ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def modes(root: Path) -> dict[str, int]:
    """Permission bits of ``root`` and everything below it, by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *sorted(root.rglob("*"))]}


# A racer: records that it runs the builder (runs/<me>), and holds the lock inside the builder until
# every other racer has logged that it waits for the lock, so the processes really do collide.
RACER = """
import hashlib, json, logging, os, sys, tempfile, time
from pathlib import Path

umask, me, racers = int(sys.argv[1], 8), sys.argv[5], int(sys.argv[6])
target, runs, waiting = Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
os.umask(umask)
from mmmed import atomic_files

class MarkWaiting(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("Waiting for another process building"):
            (waiting / me).touch()

logger = logging.getLogger("mmmed.atomic_files")
logger.addHandler(MarkWaiting())
logger.setLevel(logging.INFO)

def build(tmp):
    (runs / me).touch()
    deadline = time.monotonic() + 240  # hang guard only
    while len(list(waiting.iterdir())) < racers - 1:
        if time.monotonic() > deadline:
            raise TimeoutError("the other racers never waited for the lock")
        time.sleep(0.01)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "data.txt").write_text("payload")
    fd, name = tempfile.mkstemp(dir=tmp)  # a private 0600 file, as tempfile makes them
    os.write(fd, b"private")
    os.close(fd)
    os.rename(name, tmp / "made-by-mkstemp")

built = atomic_files.build_folder_once(target, build, is_complete=lambda t: (t / "sub" / "data.txt").is_file())
files = {str(p.relative_to(target)): hashlib.sha256(p.read_bytes()).hexdigest()
         for p in sorted(target.rglob("*")) if p.is_file()}
print(json.dumps({"built": built, "files": files}))
"""


@pytest.mark.parametrize(("umask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664)],
                         ids=["umask022", "umask002"])
def test_racing_processes_build_a_folder_once_with_modes_per_umask(tmp_path, umask, dir_mode, file_mode):
    target, runs, waiting = tmp_path / "cache" / "entry", tmp_path / "runs", tmp_path / "waiting"
    runs.mkdir()
    waiting.mkdir()
    racers = 3
    outs = run_together([(RACER, [oct(umask), str(target), str(runs), str(waiting), f"p{k}", str(racers)])
                         for k in range(racers)])
    reports = [json.loads(out) for out in outs]
    assert sorted(r["built"] for r in reports) == [False, False, True]
    assert len(list(runs.iterdir())) == 1  # the builder ran exactly once
    assert len(list(waiting.iterdir())) == racers - 1  # the others really waited on the lock
    expected = {name: hashlib.sha256(data).hexdigest()
                for name, data in {"made-by-mkstemp": b"private", "sub/data.txt": b"payload"}.items()}
    assert all(r["files"] == expected for r in reports) and tree_digest(target) == expected
    assert modes(target) == {".": dir_mode, "made-by-mkstemp": file_mode, "sub": dir_mode, "sub/data.txt": file_mode}
    assert sorted(p.name for p in target.parent.iterdir()) == ["entry", "entry.lock"]  # no temporary folder left


# Takes the lock, leaves a half-built temporary folder, says so, and waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from mmmed.atomic_files import file_lock

target = Path(sys.argv[1])
with file_lock(target):
    (target.parent / (target.name + ".tmp-dead")).mkdir()
    (target.parent / "holding").touch()
    time.sleep(600)  # killed by the test long before
"""


def test_a_killed_builder_neither_blocks_the_next_nor_leaves_its_folder(tmp_path):
    target = tmp_path / "entry"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(target)], cwd=REPO)
    try:
        while not (tmp_path / "holding").exists():
            assert holder.poll() is None, "the lock holder died before taking the lock"
            os.sched_yield()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=HANG_GUARD_S)
    assert (tmp_path / "entry.tmp-dead").is_dir()
    assert build_folder_once(target, lambda tmp: (tmp / "x").write_text("x"), lambda t: (t / "x").is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "entry.lock", "holding"]


def test_an_incomplete_folder_is_replaced_and_a_failed_build_changes_nothing(tmp_path):
    target = tmp_path / "entry"
    target.mkdir()
    (target / "stale").write_text("old")
    assert build_folder_once(target, lambda tmp: (tmp / "done").write_text("new"), lambda t: (t / "done").is_file())
    assert tree_digest(target) == {"done": hashlib.sha256(b"new").hexdigest()}
    assert not build_folder_once(target, lambda tmp: pytest.fail("built again"), lambda t: (t / "done").is_file())

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_folder_once(tmp_path / "other", broken, lambda t: t.exists())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry", "entry.lock", "other.lock"]


# Rewrites one file atomically, again and again, until the reader has read it 500 times (and at
# least 200 versions are written): the two overlap whatever the scheduling.
WRITER = """
import hashlib, os, sys
from pathlib import Path
os.umask(0o022)
from mmmed.atomic_files import write_file_atomic

target, sync = Path(sys.argv[1]), Path(sys.argv[2])

def version(i):
    payload = f"{i}:".encode() * (4000 + 997 * (i % 13))  # 16-80 kB, sizes differ between versions
    return hashlib.sha256(payload).hexdigest().encode() + b"\\n" + payload

i = 1
write_file_atomic(target, lambda handle: handle.write(version(i)))
(sync / "first-written").touch()
while i < 200 or not (sync / "reader-enough").exists():
    i += 1
    write_file_atomic(target, lambda handle: handle.write(version(i)))
(sync / "writer-done").write_text(str(i))
"""

READER = """
import hashlib, json, os, sys
from pathlib import Path

target, sync = Path(sys.argv[1]), Path(sys.argv[2])
reads, torn, seen = 0, [], set()

def read():
    global reads
    data = target.read_bytes()
    reads += 1
    digest, _, payload = data.partition(b"\\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        torn.append(len(data))
        return None
    return int(payload.split(b":", 1)[0])

while not (sync / "first-written").exists():
    os.sched_yield()
while not (sync / "writer-done").exists():
    seen.add(read())
    if reads == 500:
        (sync / "reader-enough").touch()
last = read()
print(json.dumps({"reads": reads, "torn": torn, "last": last, "versions_seen": len(seen)}))
"""


def test_a_reader_never_sees_a_torn_file_while_a_writer_rewrites_it(tmp_path):
    target, sync = tmp_path / "data" / "value.bin", tmp_path / "sync"
    sync.mkdir()
    writer_out, reader_out = run_together([(WRITER, [str(target), str(sync)]), (READER, [str(target), str(sync)])])
    report = json.loads(reader_out)
    last_version = int((sync / "writer-done").read_text())
    assert report["torn"] == [] and report["reads"] >= 501 and last_version >= 200
    assert report["last"] == last_version  # after the writer is done, the reader sees its last version
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # umask 022, although mkstemp makes 0600 files
    assert sorted(p.name for p in target.parent.iterdir()) == ["value.bin"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "value.bin"
    write_file_atomic(target, lambda handle: handle.write(b"old"))

    def broken(handle) -> None:
        handle.write(b"half of the new")
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        write_file_atomic(target, broken)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["value.bin"]


def test_umask_is_read_without_changing_it_and_applied_to_a_tree(tmp_path):
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027 and current_umask() == 0o027  # reading did not change it
        (tmp_path / "tree" / "sub").mkdir(parents=True)
        (tmp_path / "tree" / "script.sh").write_text("#!/bin/sh\n")
        os.chmod(tmp_path / "tree" / "script.sh", 0o700)
        (tmp_path / "tree" / "sub" / "data").write_text("x")
        os.chmod(tmp_path / "tree" / "sub" / "data", 0o600)
        os.chmod(tmp_path / "tree", 0o700)
        follow_umask(tmp_path / "tree")
    finally:
        os.umask(old)
    assert modes(tmp_path / "tree") == {".": 0o750, "script.sh": 0o750, "sub": 0o750, "sub/data": 0o640}


def test_the_lock_is_exclusive_and_released_after_the_block(tmp_path):
    target = tmp_path / "entry"
    assert lock_path(target) == tmp_path / "entry.lock"

    def try_lock() -> bool:
        """Whether another open file description can take the lock now (flock conflicts even in one process)."""
        fd = os.open(lock_path(target), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    with file_lock(target):
        assert not try_lock()
    assert try_lock()
