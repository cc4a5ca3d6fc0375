"""Checkpoints that are never half-written, carry a checksum, and are verified before a run resumes from them.

How a checkpoint ``X.ckpt`` is written (:class:`AtomicCheckpointIO`, the Trainer's CheckpointIO plugin,
``conf/trainer/default.yaml``):

1. serialized straight into ``.checksums/X.ckpt.tmp-<pid>`` (on the same file system) and fsynced;
2. ``.checksums/X.ckpt.sha256`` is replaced (atomically) by one listing the new digest *and* the old file's, so
   a crash between the next two renames leaves a file whose digest is listed;
3. ``os.replace`` puts the new file in place (atomic on POSIX) and the folder is fsynced;
4. the sidecar is replaced by the new digest alone: ``<hex>  X.ckpt``, the format ``sha256sum -c`` reads (run
   ``sha256sum -c .checksums/X.ckpt.sha256`` in the checkpoint folder).

Sidecars and temporary files live in the hidden ``.checksums/`` folder, not beside the checkpoints: Lightning
finds a requeued SLURM job's newest ``hpc_ckpt_<n>.ckpt`` by stripping every non-digit from each name in the
folder that contains ``ckpt_``, so ``hpc_ckpt_1.ckpt.sha256`` would read as checkpoint number 1256.

A SIGKILL at any moment leaves either the old or the new checkpoint, each with its digest listed. A write that
fails (disk full, quota, I/O error, file-size limit) removes its temp file, leaves the previous checkpoint as
it was, and raises :class:`CheckpointSaveError` naming the checkpoint to resume from.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH

from mmmed.atomic_files import file_sha256, fsync_dir

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"
CHECKSUM_DIR = ".checksums"  # beside the checkpoints; its name must not contain "ckpt_" (module docstring)
CHUNK_BYTES = 16 * 2**20  # write and hash in 16 MiB pieces: a full disk shows up on the first failing piece
ResumeCorrupt = Literal["error", "previous"]


class CheckpointSaveError(OSError):
    """Writing a checkpoint failed; the previous one is intact. ``errno`` is the failing write's."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint is truncated, altered or unreadable."""


def checksum_path(path: _PATH) -> Path:
    """The sidecar holding ``path``'s sha256: ``.checksums/<name>.ckpt.sha256`` in the folder of the file a
    symlink points to."""
    real = Path(os.path.realpath(path))
    return real.parent / CHECKSUM_DIR / (real.name + CHECKSUM_SUFFIX)


def _temp_path(path: Path) -> Path:
    """A temporary name for ``path``'s next version, in the hidden folder (created) on the same file system."""
    folder = path.parent if path.parent.name == CHECKSUM_DIR else path.parent / CHECKSUM_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{path.name}.tmp-{os.getpid()}"


def listed_digests(path: _PATH) -> list[str] | None:
    """Digests ``path``'s sidecar accepts (two only while a save is between its renames); None without one."""
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return None
    return [line.split()[0] for line in sidecar.read_text().splitlines() if line.strip()]


def _write_durably(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` (created or truncated), flushed to disk."""
    view = memoryview(data)
    with open(path, "wb") as handle:
        for start in range(0, len(view), CHUNK_BYTES):
            handle.write(view[start:start + CHUNK_BYTES])
        handle.flush()
        os.fsync(handle.fileno())


def _replace_text(path: Path, text: str) -> None:
    """Atomically replace a small text file."""
    temp = _temp_path(path)
    try:
        _write_durably(temp, text.encode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def describe_os_error(err: OSError) -> str:
    """What a failed write means, in words: ``disk full (ENOSPC)``, ``file too large (EFBIG)``..."""
    code = errno.errorcode.get(err.errno or 0, str(err.errno))
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({code})"
    return f"{os.strerror(err.errno).lower() if err.errno else 'write failed'} ({code})"


def verify_checkpoint(path: _PATH) -> None:
    """Raise :class:`CorruptCheckpointError` unless ``path`` is a complete checkpoint file.

    With a sidecar the file's sha256 must be one it lists; without one (written elsewhere) the file must
    load. A folder (a distributed checkpoint) is left to its strategy.
    """
    path = Path(path)
    if path.is_dir():
        return
    if not path.is_file():
        raise CorruptCheckpointError(f"checkpoint {path} does not exist" + (" (broken link)" if path.is_symlink() else ""))
    expected = listed_digests(path)
    if expected is not None:
        actual = file_sha256(path)
        if actual not in expected:
            raise CorruptCheckpointError(
                f"checkpoint {path} is corrupt: its sha256 {actual[:12]}... is not the {expected[0][:12]}... recorded "
                f"in {checksum_path(path)} when it was written ({path.stat().st_size:,} bytes now; truncated or altered)")
        return
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # truncated zip, bad pickle, not a checkpoint at all
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                                     f"it has no {CHECKSUM_SUFFIX} file to check it against") from err


def checkpoint_step(path: _PATH) -> int:
    """The ``global_step`` stored in a checkpoint file (memory-mapped: the tensors are not read)."""
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def newest_valid_checkpoint(folder: _PATH, exclude: _PATH | None = None) -> Path | None:
    """The verified ``*.ckpt`` in ``folder`` with the highest step (then the newest file), other than ``exclude``."""
    skip = os.path.realpath(exclude) if exclude is not None else None
    best: tuple[int, float, Path] | None = None
    for candidate in Path(folder).glob("*.ckpt"):
        if not candidate.is_file() or os.path.realpath(candidate) == skip:
            continue
        try:
            verify_checkpoint(candidate)
            key = (checkpoint_step(candidate), candidate.stat().st_mtime, candidate)
        except Exception as err:  # this one is damaged too: keep looking
            log.warning("Skipping %s: %s", candidate, err)
            continue
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best is not None else None


def verified_resume(ckpt_path: str | None, on_corrupt: ResumeCorrupt) -> str | None:
    """The checkpoint ``trainer.fit`` should resume from: ``ckpt_path`` once verified.

    ``on_corrupt`` (``resume_corrupt`` in conf/train.yaml) decides what a damaged one does: ``error`` stops
    with a message naming the file and the problem; ``previous`` warns and takes the newest valid
    checkpoint by step in the same folder. Lightning's own keys (``"hpc"``, ``"last"``, ``"best"``) and
    None pass through: Lightning finds those files, and :class:`AtomicCheckpointIO` verifies them on load.
    """
    if on_corrupt not in ("error", "previous"):
        raise ValueError(f"resume_corrupt must be 'error' or 'previous', not {on_corrupt!r} (conf/train.yaml)")
    if ckpt_path is None or ckpt_path in ("hpc", "last", "best"):
        return ckpt_path
    try:
        verify_checkpoint(ckpt_path)
        return ckpt_path
    except CorruptCheckpointError as err:
        folder = Path(ckpt_path).parent
        if on_corrupt == "error":
            raise CorruptCheckpointError(f"{err}. Resume from an earlier checkpoint in {folder}, or set "
                                         "resume_corrupt=previous to take the newest valid one") from err
        fallback = newest_valid_checkpoint(folder, exclude=ckpt_path)
        if fallback is None:
            raise CorruptCheckpointError(f"{err}; no other valid checkpoint in {folder} to fall back to") from err
        log.warning("%s. resume_corrupt=previous: resuming from %s (step %d) instead", err, fallback,
                    checkpoint_step(fallback))
        return str(fallback)


def _os_error_in(err: BaseException) -> OSError | None:
    """The OSError behind ``err``: torch.save's zip writer reports a failed write as a RuntimeError raised
    while it closes the archive, with the OSError (ENOSPC, EFBIG, ...) as its context."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpoints, written atomically with a sha256 sidecar and verified on load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` so that ``path`` is always either the old or the new whole file."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        path = Path(path)
        if path.is_symlink():  # ModelCheckpoint(save_last="link") left one: replace the link, not its target
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (path.parent / CHECKSUM_DIR).glob(f"{path.name}.tmp-*"):  # from a process killed mid-save
            stale.unlink(missing_ok=True)
        sidecar = checksum_path(path)
        old = listed_digests(path) if path.is_file() else None
        temp = _temp_path(path)
        try:
            # Straight into the temporary file, not through memory: a full-stage checkpoint can be as large
            # as the LLM. Hashed from the file as written (read back from the page cache).
            with open(temp, "wb") as handle:
                torch.save(checkpoint, handle)
                handle.flush()
                os.fsync(handle.fileno())
            digest = file_sha256(temp)
            _replace_text(sidecar, "".join(f"{d}  {path.name}\n" for d in [digest, *(old or [])]))
            os.replace(temp, path)  # atomic: when it fails, path is the old file
        except BaseException as err:  # the old checkpoint stays as it was, whatever failed
            temp.unlink(missing_ok=True)
            cause = _os_error_in(err)
            if cause is not None:
                raise self._save_error(cause, path) from err
            raise
        fsync_dir(path.parent)
        try:
            _replace_text(sidecar, f"{digest}  {path.name}\n")
        except OSError as err:  # the checkpoint is in place and its digest listed: it stays valid
            log.warning("Checkpoint %s saved, but its checksum file could not be tidied: %s", path, err)
        log.debug("Saved checkpoint %s (sha256 %s)", path, digest)

    @staticmethod
    def _save_error(err: OSError, path: Path) -> CheckpointSaveError:
        what = describe_os_error(err)
        if path.is_file():
            intact = path
            status = f"the previous checkpoint {path} is intact"
        else:
            intact = newest_valid_checkpoint(path.parent)
            status = f"the previous checkpoint {intact} is intact" if intact else f"no earlier checkpoint in {path.parent}"
        advice = f"; free space and resume with ckpt_path={intact}" if intact else ""
        return CheckpointSaveError(err.errno, f"{what} while saving checkpoint {path}; {status}{advice}")

    def load_checkpoint(self, path: _PATH, map_location: Callable | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Verify ``path`` (see :func:`verify_checkpoint`), then load it as Lightning does."""
        verify_checkpoint(path)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: _PATH) -> None:
        """Remove a checkpoint and its checksum file."""
        sidecar = checksum_path(path) if not Path(path).is_symlink() else None
        super().remove_checkpoint(path)
        if sidecar is not None:
            sidecar.unlink(missing_ok=True)
