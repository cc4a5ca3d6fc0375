"""Uploaded patient files: into a private folder, checked, grouped into one record, deleted afterwards.

A request's files land in a fresh folder only the server's user can read (``mkdtemp``: mode 0700), under the
server's own private folder, and the folder is removed when the request ends, answered or not. Files keep their
names, because a WFDB header names its signal files; a name must therefore be a plain file name. A zip is
unpacked flat (its folders dropped), with the same limits on the number and size of files as an upload.

What the files are is decided before the model sees them: every ``.hea`` header with the ``.dat`` files it names
is one WFDB record, every other file (DICOM, PNG, JPEG) is one input. An orphan signal file, a header whose
signal files were not uploaded, or anything else that cannot be one patient's record is an :class:`UploadError`
with the HTTP status the API answers with.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import wfdb

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
WFDB_HEADER, ZIP_SUFFIX = ".hea", ".zip"
# Files a WFDB header lists hold the signals (.dat, or other names a header may give); these are read on their own.
SINGLE_FILE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg"}
ZIP_NOISE = ("__MACOSX/",)  # macOS adds resource forks to zips it makes: not the user's files, skipped


class UploadError(ValueError):
    """An upload the server refuses: ``status`` is the HTTP status (400 bad request, 413 too large, 422 unreadable)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class UploadLimits:
    """Limits on one request's files (conf/serve.yaml ``uploads``).

    Args:
        max_bytes: all files of a request together, zips counted unpacked.
        max_files: files in a request, zips counted unpacked.
    """

    max_bytes: int
    max_files: int


def check_name(name: str) -> str:
    """``name`` if it is a plain file name (letters, digits, ``.``, ``_``, ``-``), else an :class:`UploadError`."""
    if not SAFE_NAME.match(name or ""):
        raise UploadError(f"file name {name!r}: use a plain file name of letters, digits, '.', '_' and '-' "
                          f"(at most 128 characters, no folders)")
    return name


def unpack_zip(name: str, data: bytes, limits: UploadLimits) -> list[tuple[str, bytes]]:
    """The files of a zip upload, flat (folders dropped), refused beyond ``limits`` before anything is unpacked."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith(ZIP_NOISE)]
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise UploadError(f"{name}: not a readable zip archive ({error})", 422) from error
    if len(members) > limits.max_files:
        raise UploadError(f"{name}: {len(members)} files, more than the {limits.max_files} a request may have", 413)
    if sum(m.file_size for m in members) > limits.max_bytes:  # the sizes it declares; a lie is caught by the reads below
        raise UploadError(f"{name}: unpacks to more than {limits.max_bytes} bytes, the upload limit", 413)
    files, total = [], 0
    for member in members:
        inner = check_name(member.filename.rsplit("/", 1)[-1])
        if inner.lower().endswith(ZIP_SUFFIX):
            raise UploadError(f"{name}: holds another zip ({inner}); put the files themselves in one zip")
        try:
            with archive.open(member) as handle:
                content = handle.read(limits.max_bytes - total + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as error:  # RuntimeError: encrypted members
            raise UploadError(f"{name}: {inner} cannot be unpacked ({error})", 422) from error
        total += len(content)
        if total > limits.max_bytes:
            raise UploadError(f"{name}: unpacks to more than {limits.max_bytes} bytes, the upload limit", 413)
        files.append((inner, content))
    return files


def wfdb_signal_files(header: Path) -> list[str]:
    """The files a WFDB header names: its signal files, or for a multi-segment record its segments' headers."""
    try:
        record = wfdb.rdheader(str(header.with_suffix("")))
    except Exception as error:  # wfdb raises ValueError, IndexError, ... on a header it cannot parse
        raise UploadError(f"{header.name}: not a readable WFDB header ({type(error).__name__}: {error})", 422) from error
    if getattr(record, "seg_name", None):  # multi-segment: every segment's header ('~' marks a gap)
        return [f"{segment}{WFDB_HEADER}" for segment in record.seg_name if segment != "~"]
    return sorted(set(record.file_name or []))


class PrivateUploads:
    """One request's files in a private folder, removed on exit (also when the request fails).

    Args:
        parent: the server's private folder (mode 0700) the request's folder is made in.
        limits: the request's limits on its files.
    """

    def __init__(self, parent: str | Path, limits: UploadLimits) -> None:
        self.parent = Path(parent)
        self.limits = limits
        self.folder: Path | None = None

    def __enter__(self) -> PrivateUploads:
        self.folder = Path(tempfile.mkdtemp(prefix="request-", dir=self.parent))  # 0700, a name no one can guess
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def save(self, files: list[tuple[str, bytes]]) -> list[Path]:
        """Write ``(name, content)`` files (zips unpacked) and return the record's inputs: one path per DICOM or
        image, one per WFDB record (its header's path without ``.hea``, as the ECG reader takes it)."""
        if not files:
            raise UploadError("no files: upload a patient's ECG record (.hea with its .dat, or a zip of them), "
                              "an ECG or chest X-ray DICOM, or an image")
        unpacked: list[tuple[str, bytes]] = []
        for name, data in files:
            check_name(name)
            unpacked += unpack_zip(name, data, self.limits) if name.lower().endswith(ZIP_SUFFIX) else [(name, data)]
        if len(unpacked) > self.limits.max_files:
            raise UploadError(f"{len(unpacked)} files, more than the {self.limits.max_files} a request may have", 413)
        if sum(len(data) for _, data in unpacked) > self.limits.max_bytes:
            raise UploadError(f"the files hold more than {self.limits.max_bytes} bytes, the upload limit", 413)
        names = [name for name, _ in unpacked]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise UploadError(f"file(s) {repeated} uploaded twice: one patient record has one file of each name")
        assert self.folder is not None, "use PrivateUploads as a context manager"
        for name, data in unpacked:
            if not data:
                raise UploadError(f"{name}: the file is empty", 422)
            (self.folder / name).write_bytes(data)
        return self.record(names)

    def record(self, names: list[str]) -> list[Path]:
        """Group saved files into inputs; every file must belong to exactly one of them."""
        assert self.folder is not None
        headers = [name for name in names if name.lower().endswith(WFDB_HEADER)]
        used: set[str] = set(headers)
        inputs: list[Path] = []
        for header in sorted(headers):
            if not header.endswith(WFDB_HEADER):  # wfdb looks for exactly "<record>.hea"
                raise UploadError(f"{header}: a WFDB header's suffix is '.hea' (lower case)")
            needed = wfdb_signal_files(self.folder / header)
            missing = [name for name in needed if name not in names]
            if missing:
                raise UploadError(f"WFDB record {header[: -len(WFDB_HEADER)]}: its header names {missing}, which "
                                  f"{'was' if len(missing) == 1 else 'were'} not uploaded; upload the .hea with every "
                                  f"file it names (or a zip of them)")
            used.update(needed)
        for header in sorted(headers):  # a multi-segment record's segment headers are read through its master header
            if not any(header in wfdb_signal_files(self.folder / other) for other in headers if other != header):
                inputs.append(self.folder / header[: -len(WFDB_HEADER)])
        for name in names:
            if name in used:
                continue
            if Path(name).suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise UploadError(f"{name}: not a file of a patient record (no uploaded WFDB header names it, and it is "
                                  f"not a DICOM, PNG or JPEG file); for a WFDB record upload its .hea too")
            inputs.append(self.folder / name)
        return inputs

    def relative(self, text: str) -> str:
        """``text`` with the private folder's path taken out, so messages name only the uploaded file names."""
        return text if self.folder is None else text.replace(f"{self.folder}/", "").replace(str(self.folder), "")
