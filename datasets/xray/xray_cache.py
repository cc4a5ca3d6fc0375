"""Decode each radiograph once: a cache of preprocessed images keyed by file content and settings.

A JPEG 2000 film takes ~0.5 s to decode; training reads it every epoch. The cache stores the
letterboxed image (float16, ``size`` x ``size``) under
``<cache_dir>/xray/v<version>-<settings hash>/<aa>/<sha256 of the file>.npz``: changing the file's
bytes or any preprocessing setting gives a new entry, and names are hashes, so no patient identity
reaches the file system. A small SQLite index remembers each path's hash by (size, mtime), so a
warm start does not re-read every file to hash it.

``warm`` fills the cache for many files in parallel (spawned processes: decoders never share a
forked OpenMP pool) and reports, per file, the entry or the reason it failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mmmed.atomic_files import write_file_atomic
from mmmed_datasets.xray.xray_image import ImageReadError, check_no_window, letterbox, read_radiograph

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: the no_window policy (percentile windowing). Bump when decoding or preprocessing changes meaning
# A spawned worker re-imports the entry script (torch, Lightning: ~4-8 s); below this many misses,
# decoding in-process is faster (a 2k JPEG 2000 film takes ~0.5 s).
POOL_MIN_FILES = 64


@dataclass
class CachedImage:
    """Where a file's preprocessed image lives, and the ViewPosition its header declares."""

    entry: Path
    view: str | None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decode_into(
    path: str, entry: str, size: int, apply_voi: bool, no_window: str, percentiles: tuple[float, float] | None
) -> tuple[str | None, str | None]:
    """Worker: decode, letterbox and store one file. Returns ``(view, None)`` or ``(None, reason)``."""
    try:
        decoded = read_radiograph(path, apply_voi, no_window, percentiles)
    except ImageReadError as err:
        return None, err.reason
    image = letterbox(decoded.pixels, size).astype(np.float16)  # (1, S, S)
    # Atomic, mode per umask: a reader never sees half an entry; two processes decoding the same file
    # at once write the same bytes and the last rename wins.
    write_file_atomic(entry, lambda handle: np.savez(handle, image=image, view=np.array(decoded.view or "")))
    return decoded.view or "", None


class XrayImageCache:
    """Preprocessed radiographs on disk, keyed by content and settings.

    Args:
        cache_dir: root of mmmed's cache (entries go under ``<cache_dir>/xray``).
        size: side of the square image the encoder takes.
        apply_voi: apply the file's VOI LUT / first window (see ``read_dicom``).
        no_window: ``percentile`` | ``full_range``: how a file without VOI is displayed (see ``read_dicom``).
        percentiles: ``[low, high]`` the ``percentile`` policy windows to, e.g. ``[0.5, 99.5]``.
        workers: processes that decode cache misses in ``warm`` (1: in this process).
    """

    def __init__(
        self, cache_dir: str, size: int, apply_voi: bool, no_window: str, percentiles: list[float] | None, workers: int
    ) -> None:
        self.size = size
        self.apply_voi = apply_voi
        self.no_window = no_window
        self.percentiles = check_no_window(no_window, percentiles)  # floats, None for full_range
        self.workers = workers
        settings = {"version": CACHE_VERSION, "size": size, "apply_voi": apply_voi, "no_window": no_window,
                    "percentiles": self.percentiles and list(self.percentiles)}
        tag = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.root = Path(cache_dir).expanduser() / "xray"
        self.entries = self.root / f"v{CACHE_VERSION}-{tag}"
        self.index_path = self.root / "content-index.sqlite"

    def _decode_knobs(self) -> tuple[bool, str, tuple[float, float] | None]:
        return self.apply_voi, self.no_window, self.percentiles

    def entry_for(self, sha: str) -> Path:
        return self.entries / sha[:2] / f"{sha}.npz"

    def _hashes(self, paths: list[Path]) -> dict[Path, str]:
        """Content hashes, taken from the index while a file's size and mtime are unchanged."""
        self.root.mkdir(parents=True, exist_ok=True)
        # SQLite would create the index 0644 whatever the umask, so a group sharing the cache could not
        # add to it: create the empty file first (os.open's mode is masked by the umask).
        try:
            os.close(os.open(self.index_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            pass
        con = sqlite3.connect(self.index_path, timeout=60)
        try:
            con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INT, mtime_ns INT, sha TEXT)")
            known = {row[0]: row[1:] for row in con.execute("SELECT path, size, mtime_ns, sha FROM files")}
            hashes, fresh = {}, []
            for path in paths:
                stat = path.stat()
                row = known.get(str(path))
                if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
                    hashes[path] = row[2]
                else:
                    hashes[path] = file_sha256(path)
                    fresh.append((str(path), stat.st_size, stat.st_mtime_ns, hashes[path]))
            if fresh:
                con.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)", fresh)
                con.commit()
        finally:
            con.close()
        return hashes

    def warm(self, paths: list[Path]) -> dict[Path, CachedImage | ImageReadError]:
        """Make sure every file has an entry; returns each file's entry or its read error."""
        results: dict[Path, CachedImage | ImageReadError] = {}
        existing = [p for p in dict.fromkeys(paths) if p.is_file()]
        for path in dict.fromkeys(paths):
            if not path.is_file():
                results[path] = ImageReadError(path, "file not found")
        hashes = self._hashes(existing)
        misses = []
        for path in existing:
            entry = self.entry_for(hashes[path])
            if entry.is_file():
                results[path] = CachedImage(entry, self.read_view(entry))
            else:
                misses.append(path)
        if not misses:
            return results
        start = time.perf_counter()
        workers = self.workers if len(misses) >= POOL_MIN_FILES else 1
        log.info("Decoding %d images into %s (%d processes)", len(misses), self.entries, workers)
        args = [(str(p), str(self.entry_for(hashes[p])), self.size, *self._decode_knobs()) for p in misses]
        if workers > 1:
            with ProcessPoolExecutor(self.workers, mp_context=get_context("spawn")) as pool:
                outcomes = list(pool.map(_decode_into, *zip(*args), chunksize=max(1, len(args) // (8 * self.workers))))
        else:
            outcomes = [_decode_into(*a) for a in args]
        for path, (view, reason) in zip(misses, outcomes):
            entry = self.entry_for(hashes[path])
            results[path] = ImageReadError(path, reason) if reason is not None else CachedImage(entry, view or None)
        log.info("Decoded %d images in %.1f s", len(misses), time.perf_counter() - start)
        return results

    @staticmethod
    def read_view(entry: Path) -> str | None:
        with np.load(entry, allow_pickle=False) as data:
            return str(data["view"]) or None

    def load(self, path: Path, entry: Path) -> np.ndarray:
        """The preprocessed image of ``path`` (1, S, S) float32; re-decodes if the entry was deleted."""
        try:
            with np.load(entry, allow_pickle=False) as data:
                return data["image"].astype(np.float32)
        except FileNotFoundError:
            pass
        if not path.is_file():
            raise ImageReadError(path, "file not found")
        # Store the re-decoded image under the hash of the bytes decoded now: if the file changed
        # since warm(), the old name would otherwise hold another file's image.
        entry = self.entry_for(file_sha256(path))
        _, reason = _decode_into(str(path), str(entry), self.size, *self._decode_knobs())
        if reason is not None:
            raise ImageReadError(path, reason)
        with np.load(entry, allow_pickle=False) as data:
            return data["image"].astype(np.float32)
