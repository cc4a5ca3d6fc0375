"""Uploads: saved privately, grouped into one record (WFDB header + the files it names), refused clearly, deleted."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import wfdb

from mmmed.serve.uploads import PrivateUploads, UploadError, UploadLimits

LIMITS = UploadLimits(max_bytes=2**20, max_files=8)


def wfdb_files(tmp_path: Path, name: str = "rec1") -> list[tuple[str, bytes]]:
    """A real 2-lead WFDB record written by wfdb (in ``tmp_path/src``): its .hea and .dat as (name, bytes)."""
    tmp_path = tmp_path / "src"
    tmp_path.mkdir(exist_ok=True)
    signal = np.stack([np.sin(np.linspace(0, 20, 500)), np.cos(np.linspace(0, 20, 500))], axis=1)
    wfdb.wrsamp(name, fs=100, units=["mV", "mV"], sig_name=["I", "II"], p_signal=signal, fmt=["16", "16"],
                write_dir=str(tmp_path))
    return [(f"{name}.hea", (tmp_path / f"{name}.hea").read_bytes()), (f"{name}.dat", (tmp_path / f"{name}.dat").read_bytes())]


def zipped(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_a_wfdb_record_is_one_input_and_the_folder_is_private_and_removed(tmp_path):
    files = wfdb_files(tmp_path)
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        [record] = uploads.save(files)
        assert record == uploads.folder / "rec1"  # the header's path without .hea, as the ECG reader takes it
        assert stat.S_IMODE(uploads.folder.stat().st_mode) == 0o700
        assert wfdb.rdrecord(str(record)).p_signal.shape == (500, 2)
        folder = uploads.folder
    assert not folder.exists()


def test_the_folder_is_removed_when_the_request_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with PrivateUploads(tmp_path, LIMITS) as uploads:
            uploads.save([("film.dcm", b"DICM")])
            folder = uploads.folder
            raise RuntimeError("the model failed")
    assert not folder.exists() and list(tmp_path.iterdir()) == []


def test_a_zip_is_unpacked_flat_and_grouped_like_its_files(tmp_path):
    files = wfdb_files(tmp_path)
    archive = zipped([(f"records100/00000/{name}", data) for name, data in files] + [("__MACOSX/._rec1.hea", b"x")])
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        inputs = uploads.save([("record.zip", archive), ("film.png", b"\x89PNG...")])
        names = sorted(p.name for p in uploads.folder.iterdir())
        assert names == ["film.png", "rec1.dat", "rec1.hea"]  # folders dropped, macOS forks skipped, zip not kept
        assert inputs == [uploads.folder / "rec1", uploads.folder / "film.png"]  # records first, then single files


def test_a_zip_member_cannot_escape_the_folder(tmp_path):
    files = wfdb_files(tmp_path)
    archive = zipped([(f"../../{name}", data) for name, data in files])
    (tmp_path / "private").mkdir()
    with PrivateUploads(tmp_path / "private", LIMITS) as uploads:
        uploads.save([("record.zip", archive)])
        assert sorted(p.name for p in uploads.folder.iterdir()) == ["rec1.dat", "rec1.hea"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private", "src"]  # nothing written beside


@pytest.mark.parametrize("files, status, message", [
    ([], 400, "no files"),
    ([("../rec.hea", b"x")], 400, r"file name '../rec.hea': use a plain file name"),
    ([("a b.dcm", b"x")], 400, "file name 'a b.dcm'"),
    ([("film.dcm", b"")], 422, "film.dcm: the file is empty"),
    ([("film.dcm", b"1"), ("film.dcm", b"2")], 400, r"\['film.dcm'\] uploaded twice"),
    ([("rec1.dat", b"12")], 400, "rec1.dat: not a file of a patient record"),
    ([("notes.txt", b"hello")], 400, "notes.txt: not a file of a patient record"),
    ([("rec.hea", b"not a header at all\n")], 422, "rec.hea: not a readable WFDB header"),
    ([("bundle.zip", b"PK\x03\x04 broken")], 422, "bundle.zip: not a readable zip archive"),
    ([(f"f{i}.dcm", b"x") for i in range(9)], 413, "9 files, more than the 8"),
    ([("big.dcm", b"x" * (2**20 + 1))], 413, "more than 1048576 bytes"),
])
def test_bad_uploads_are_refused_with_their_status_and_problem(tmp_path, files, status, message):
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        with pytest.raises(UploadError, match=message) as caught:
            uploads.save(files)
    assert caught.value.status == status


def test_a_header_without_its_signal_file_names_what_is_missing(tmp_path):
    header, _ = wfdb_files(tmp_path)
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        with pytest.raises(UploadError, match=r"WFDB record rec1: its header names \['rec1.dat'\], which was not uploaded"):
            uploads.save([header])


def test_zip_limits_hold_before_unpacking(tmp_path):
    bomb = zipped([("zeros.dcm", b"\0" * (2**20 + 10))])  # compresses to ~1 kB
    assert len(bomb) < 10_000
    many = zipped([(f"f{i}.dcm", b"x") for i in range(9)])
    nested = zipped([("inner.zip", zipped([("a.dcm", b"x")]))])
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        for archive, status, message in [(bomb, 413, "unpacks to more than 1048576 bytes"),
                                         (many, 413, "9 files, more than the 8"),
                                         (nested, 400, "holds another zip")]:
            with pytest.raises(UploadError, match=message) as caught:
                uploads.save([("upload.zip", archive)])
            assert caught.value.status == status
        assert list(uploads.folder.iterdir()) == []  # refused before anything was written


def test_messages_lose_the_private_folder(tmp_path):
    with PrivateUploads(tmp_path, LIMITS) as uploads:
        assert uploads.relative(f"{uploads.folder}/rec1.hea: truncated") == "rec1.hea: truncated"
