"""Write a file or a folder once, atomically, under an inter-process file lock.

Caches and demo sets are built on first use, often by several processes at once (DDP ranks, a sweep's
jobs, two users sharing one cache). The rules every writer here follows:

* A folder is built in a temporary sibling (``<name>.tmp-XXXX``) and renamed into place while the
  builder holds an exclusive lock on ``<name>.lock``; after taking the lock it checks again whether
  another process finished first, and then builds nothing. So a folder is built once, and a reader
  sees either no folder or a complete one.
* A single file is written to a temporary file in the same folder, fsync'ed and renamed over the
  target (``os.replace``): a reader opens either the old or the new file, never a torn one.
* Permissions follow the process's umask (dirs ``0o777 & ~umask``, files ``0o666 & ~umask``), as if
  the files had been created in place: ``tempfile`` makes private 0700 folders and 0600 files, which
  would otherwise lock other users of a shared cache out.

The lock is ``fcntl.flock``, which holds across processes on local disks and on NFSv4 (Linux emulates
flock with whole-file POSIX locks there; NFSv3 needs a working lockd). Lock files are never deleted:
removing one while another process waits on it would let a third process lock a new file of the same
name and build concurrently.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import logging
import os
import shutil
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

log = logging.getLogger(__name__)

_UMASK_LOCK = threading.Lock()  # os.umask is process-global: never let two threads swap it at once


def file_sha256(path: str | os.PathLike, piece_bytes: int = 16 * 2**20) -> str:
    """Hex sha256 of a file's bytes, read ``piece_bytes`` at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(piece_bytes), b""):
            digest.update(piece)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask, read without changing it when the kernel reports it (Linux >= 4.7)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    # Fallback: set and restore. Another thread creating a file between the two calls would get mode
    # 0o666; the lock at least keeps two callers here from restoring each other's zero.
    with _UMASK_LOCK:
        old = os.umask(0)
        os.umask(old)
    return old


def follow_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (and, for a folder, everything below it) the modes the umask gives new files.

    Dirs become ``0o777 & ~umask``; files ``0o666 & ~umask``, or ``0o777 & ~umask`` when the owner may
    execute them (a script stays executable). Symlinks are left alone.
    """
    umask = current_umask()
    path = Path(path)

    def fix(item: Path) -> None:
        mode = os.lstat(item).st_mode
        if stat.S_ISLNK(mode):
            return
        if stat.S_ISDIR(mode):
            os.chmod(item, 0o777 & ~umask)
        else:
            os.chmod(item, (0o777 if mode & stat.S_IXUSR else 0o666) & ~umask)

    fix(path)
    if path.is_dir() and not path.is_symlink():
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                fix(Path(folder) / name)


def _fsync_files(folder: Path) -> None:
    """Flush every file below ``folder`` to disk, so a crash after the rename never leaves empty files."""
    for parent, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(parent, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk: without this a power cut can undo the rename."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_path(target: str | os.PathLike) -> Path:
    """The lock file that guards ``target``: ``<target>.lock`` beside it."""
    target = Path(target)
    return target.with_name(target.name + ".lock")


@contextmanager
def file_lock(target: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``target`` (``fcntl.flock`` on ``<target>.lock``).

    Blocks until the lock is free, logging once that it waits. The lock is released when the block
    ends, or by the kernel when the process dies, so a killed builder never blocks the next one.
    """
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        # Another user's lock file that the umask made read-only for us: flock takes an exclusive lock
        # on a read-only descriptor on local disks (NFS needs write access: the error below says so).
        fd = os.open(path, os.O_RDONLY)
    try:
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Waiting for another process building %s (lock %s)", Path(target).name, path)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            raise OSError(f"{path}: cannot lock ({error}); on NFS the lock file must be writable by every "
                          f"user of this folder (set a group-writable umask, e.g. 002)") from error
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _remove_leftovers(target: Path) -> None:
    """Delete temporary siblings of ``target`` left by killed builders (call only under the lock).

    Every builder holds the lock while its temporary folder exists, so under the lock any such
    folder belongs to a process that died before it could clean up.
    """
    for pattern in (".tmp-*", ".old-*"):
        for leftover in glob.glob(glob.escape(str(target)) + pattern):
            log.info("Removing %s, left by an interrupted build", leftover)
            shutil.rmtree(leftover, ignore_errors=True)


def build_folder_once(target: str | os.PathLike, build: Callable[[Path], None],
                      is_complete: Callable[[Path], bool]) -> bool:
    """Make ``target`` by ``build(tmp_folder)`` unless ``is_complete(target)``; True when this call built it.

    ``is_complete`` is asked before and again after taking the lock (it may raise to refuse a folder
    that is not ours). When it answers False for an existing ``target``, the new folder replaces it:
    the old one is moved aside, the new one renamed in, the old one deleted.
    """
    target = Path(target)
    if is_complete(target):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(target):
        if is_complete(target):  # another process finished while we waited for the lock
            return False
        _remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(tmp)
            follow_umask(tmp)
            _fsync_files(tmp)
            if target.exists():  # a folder cannot be replaced in one rename: move the old one aside first
                old = Path(tempfile.mkdtemp(prefix=target.name + ".old-", dir=target.parent))
                os.replace(target, old / target.name)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def write_file_atomic(target: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``target`` through ``write(handle)`` into a temporary file, fsync it, and rename it into place.

    Readers see the old file or the new one, never part of one; concurrent writers of the same
    target each replace it whole (the last rename wins). The file's mode follows the umask.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0600
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
