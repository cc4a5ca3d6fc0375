"""XrayImageCache over small DICOM and PNG radiographs written in ``tmp_path``."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import mmmed_datasets.xray.xray_cache as xray_cache
from mmmed_datasets.xray.xray_cache import CACHE_VERSION, CachedImage, XrayImageCache
from mmmed_datasets.demo.xray_demo import ENCODINGS, build_dicom, encode_display
from mmmed_datasets.xray.xray_image import ImageReadError, letterbox, read_radiograph

PERCENTILE = {"no_window": "percentile", "percentiles": [0.5, 99.5]}  # conf/data's default policy
ROWS, COLS = 40, 30  # portrait: letterboxing pads left and right
SIZE = 16
PATIENT_NAME = "Test^Name"


def display(seed: int) -> np.ndarray:
    """A distinct image per seed: a ramp plus noise, in [0, 1]. (ROWS, COLS)"""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.1, 0.9, ROWS * COLS).reshape(ROWS, COLS)
    return np.clip(ramp + rng.uniform(-0.1, 0.1, ramp.shape), 0.0, 1.0)


def write_dicom(path: Path, seed: int, encoding_index: int = 0, view: str = "PA") -> Path:
    enc = ENCODINGS[encoding_index]
    header = {
        "SOPInstanceUID": pydicom.uid.generate_uid(),
        "StudyInstanceUID": pydicom.uid.generate_uid(),
        "SeriesInstanceUID": pydicom.uid.generate_uid(),
        "PatientName": PATIENT_NAME,
        "PatientID": "T1",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyDate": "21800101",
        "ViewPosition": view,
    }
    build_dicom(encode_display(display(seed), enc), enc, header).save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, seed: int) -> Path:
    Image.fromarray(np.rint(display(seed) * 255).astype(np.uint8)).save(path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expected_image(path: Path, size: int = SIZE, apply_voi: bool = True, no_window: str = "percentile",
                   percentiles: list[float] | None = PERCENTILE["percentiles"]) -> np.ndarray:
    """The reference: decode and letterbox directly, without the cache. (1, size, size)"""
    return letterbox(read_radiograph(path, apply_voi, no_window, percentiles).pixels, size)


def make_cache(tmp_path: Path, size: int = SIZE, apply_voi: bool = True, workers: int = 1, **policy) -> XrayImageCache:
    return XrayImageCache(str(tmp_path / "cache"), size=size, apply_voi=apply_voi, workers=workers, **(PERCENTILE | policy))


def entry_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "xray").rglob("*.npz"))


@pytest.fixture
def files(tmp_path) -> list[Path]:
    """Two DICOM films (uncompressed 16-bit; 12-bit with rescale and MONOCHROME1) and a PNG."""
    src = tmp_path / "src"
    src.mkdir()
    return [
        write_dicom(src / "a.dcm", seed=1, encoding_index=0),
        write_dicom(src / "b.dcm", seed=2, encoding_index=1),
        write_png(src / "c.png", seed=3),
    ]


def test_warm_stores_one_entry_per_file_named_by_content_hash(tmp_path, files):
    cache = make_cache(tmp_path)
    results = cache.warm(files)

    assert set(results) == set(files)
    settings_dirs = list((tmp_path / "cache" / "xray").glob("v*"))
    assert len(settings_dirs) == 1
    assert re.fullmatch(rf"v{CACHE_VERSION}-[0-9a-f]{{12}}", settings_dirs[0].name)
    for path in files:
        digest = sha(path)
        expected_entry = settings_dirs[0] / digest[:2] / f"{digest}.npz"
        assert isinstance(results[path], CachedImage)
        assert results[path].entry == expected_entry
        assert expected_entry.is_file()
    assert entry_files(tmp_path) == sorted(settings_dirs[0] / sha(p)[:2] / f"{sha(p)}.npz" for p in files)
    # Names are hashes only: nothing from the header (patient identity) or the source file name.
    allowed = rf"xray|content-index\.sqlite|v{CACHE_VERSION}-[0-9a-f]{{12}}|[0-9a-f]{{2}}|[0-9a-f]{{64}}\.npz"
    names = [found.name for found in (tmp_path / "cache").rglob("*")]
    assert [name for name in names if not re.fullmatch(allowed, name)] == []
    assert not any("Test" in name or "Name" in name for name in names)


def test_load_equals_direct_decode_and_letterbox(tmp_path, files):
    cache = make_cache(tmp_path)
    results = cache.warm(files)
    for path in files:
        image = cache.load(path, results[path].entry)
        assert image.dtype == np.float32
        assert image.shape == (1, SIZE, SIZE)
        np.testing.assert_allclose(image, expected_image(path), atol=1e-3, rtol=0)  # float16 storage


def test_second_warm_decodes_nothing(tmp_path, files, monkeypatch):
    cache = make_cache(tmp_path)
    first = cache.warm(files)

    def refuse(*args):
        raise AssertionError(f"decoded again: {args[0]}")

    monkeypatch.setattr(xray_cache, "_decode_into", refuse)
    second = make_cache(tmp_path).warm(files)  # a fresh object: only the disk and the index remain
    assert second == first
    assert [second[p].view for p in files] == ["PA", "PA", None]


def test_view_comes_from_the_header_and_is_none_for_a_png(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    pa = write_dicom(src / "pa.dcm", seed=1, view="PA")
    ap = write_dicom(src / "ap.dcm", seed=2, view="AP")
    png = write_png(src / "x.png", seed=3)
    cache = make_cache(tmp_path)
    results = cache.warm([pa, ap, png])
    assert (results[pa].view, results[ap].view, results[png].view) == ("PA", "AP", None)
    assert [XrayImageCache.read_view(results[p].entry) for p in (pa, ap, png)] == ["PA", "AP", None]


def test_same_bytes_share_an_entry_and_new_bytes_get_a_new_one(tmp_path, files):
    cache = make_cache(tmp_path)
    original = files[0]
    first = cache.warm([original])[original]
    copy = tmp_path / "src" / "copy-of-a.dcm"
    shutil.copyfile(original, copy)
    assert cache.warm([copy])[copy].entry == first.entry

    old_stat = original.stat()
    write_dicom(original, seed=99)  # different pixels (and UIDs): different bytes
    os.utime(original, ns=(old_stat.st_atime_ns, old_stat.st_mtime_ns + 10**9))  # the index must notice
    assert sha(original) != first.entry.stem
    changed = cache.warm([original])[original]
    assert changed.entry.name == f"{sha(original)}.npz"
    assert changed.entry != first.entry
    assert first.entry.is_file()  # the copy's entry stays
    np.testing.assert_allclose(cache.load(original, changed.entry), expected_image(original), atol=1e-3, rtol=0)


def test_index_never_returns_a_stale_hash_for_a_rewritten_file_of_the_same_size(tmp_path, files):
    cache = make_cache(tmp_path)
    path = files[0]  # uncompressed: the last byte is pixel data
    before = cache.warm([path])[path]
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one stored value changes; the size does not
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime, as any rewrite gives
    assert path.stat().st_size == stat.st_size

    after = cache.warm([path])[path]
    assert after.entry.name == f"{sha(path)}.npz"
    assert after.entry != before.entry
    np.testing.assert_allclose(cache.load(path, after.entry), expected_image(path), atol=1e-3, rtol=0)


@pytest.mark.parametrize("other", [{"size": 24}, {"apply_voi": False}])
def test_other_settings_use_another_entry_directory(tmp_path, files, other):
    base = make_cache(tmp_path)
    changed = make_cache(tmp_path, **other)
    path = files[1]  # has a window: apply_voi changes its pixels
    base_entry = base.warm([path])[path].entry
    changed_entry = changed.warm([path])[path].entry
    assert base_entry.name == changed_entry.name == f"{sha(path)}.npz"
    assert base_entry.parent.parent != changed_entry.parent.parent
    settings = {"size": SIZE, "apply_voi": True} | other
    np.testing.assert_allclose(changed.load(path, changed_entry), expected_image(path, **settings), atol=1e-3, rtol=0)
    assert changed.load(path, changed_entry).shape == (1, settings["size"], settings["size"])


def test_bad_and_missing_files_come_back_as_errors(tmp_path, files):
    bad = tmp_path / "src" / "noise.dcm"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    missing = tmp_path / "src" / "gone.dcm"
    cache = make_cache(tmp_path)
    results = cache.warm([files[0], bad, missing])

    assert isinstance(results[files[0]], CachedImage)
    assert isinstance(results[bad], ImageReadError)
    assert results[bad].reason == "not a DICOM file (no 'DICM' preamble or file meta header)"
    assert results[bad].path == str(bad)
    assert isinstance(results[missing], ImageReadError)
    assert results[missing].reason == "file not found"
    assert results[missing].path == str(missing)
    assert len(entry_files(tmp_path)) == 1  # a failure leaves no entry


def test_load_re_decodes_a_deleted_entry(tmp_path, files):
    cache = make_cache(tmp_path)
    path = files[1]
    entry = cache.warm([path])[path].entry
    before = cache.load(path, entry)
    entry.unlink()
    again = cache.load(path, entry)
    assert entry.is_file()
    np.testing.assert_array_equal(again, before)
    np.testing.assert_allclose(again, expected_image(path), atol=1e-3, rtol=0)


def test_load_of_a_deleted_entry_raises_if_the_file_is_gone_too(tmp_path, files):
    cache = make_cache(tmp_path)
    path = files[0]
    entry = cache.warm([path])[path].entry
    entry.unlink()
    path.unlink()
    with pytest.raises(ImageReadError, match="file not found"):
        cache.load(path, entry)


def test_two_spawned_workers_give_the_same_entries_and_images(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(xray_cache, "POOL_MIN_FILES", 2)  # use the pool even for 4 files
    src = tmp_path / "src"
    src.mkdir()
    paths = [write_dicom(src / f"{i}.dcm", seed=10 + i, encoding_index=i % 2) for i in range(3)]
    paths.append(write_png(src / "3.png", seed=13))

    serial_cache = XrayImageCache(str(tmp_path / "serial"), size=SIZE, apply_voi=True, workers=1, **PERCENTILE)
    parallel_cache = XrayImageCache(str(tmp_path / "parallel"), size=SIZE, apply_voi=True, workers=2, **PERCENTILE)
    serial = serial_cache.warm(paths)
    with caplog.at_level("INFO", logger="mmmed_datasets.xray.xray_cache"):
        parallel = parallel_cache.warm(paths)
    assert "Decoding 4 images" in caplog.text and "(2 processes)" in caplog.text
    for path in paths:
        assert parallel[path].view == serial[path].view
        assert parallel[path].entry.relative_to(tmp_path / "parallel") == serial[path].entry.relative_to(tmp_path / "serial")
        np.testing.assert_array_equal(parallel_cache.load(path, parallel[path].entry), serial_cache.load(path, serial[path].entry))


def test_re_decoding_a_changed_file_never_files_it_under_its_old_hash(tmp_path, files):
    cache = make_cache(tmp_path)
    path = files[0]
    old_entry = cache.warm([path])[path].entry
    old_entry.unlink()
    write_dicom(path, seed=99)  # the file changed after warm()
    image = cache.load(path, old_entry)
    np.testing.assert_allclose(image, expected_image(path), atol=1e-3, rtol=0)
    assert not old_entry.exists()  # the old name would hold another file's image
    assert cache.entry_for(sha(path)).is_file()


@pytest.mark.parametrize("other", [{"no_window": "full_range", "percentiles": None}, {"percentiles": [5.0, 95.0]}])
def test_the_no_window_policy_is_part_of_the_entry_key(tmp_path, other):
    src = tmp_path / "src"
    src.mkdir()
    # The demo's windowless 12-bit encoding, stored uncompressed (OpenJPEG refuses a 40 x 30 tile).
    enc = dataclasses.replace(ENCODINGS[2], syntax=pydicom.uid.ExplicitVRLittleEndian)
    assert not enc.windows and enc.voi_lut_gamma is None
    path = src / "plain.dcm"
    header = {"SOPInstanceUID": pydicom.uid.generate_uid(), "PatientName": PATIENT_NAME, "ViewPosition": "PA"}
    build_dicom(encode_display(0.2 + 0.3 * display(4), enc), enc, header).save_as(path, enforce_file_format=True)
    base, changed = make_cache(tmp_path), make_cache(tmp_path, **other)
    base_entry, changed_entry = base.warm([path])[path].entry, changed.warm([path])[path].entry
    assert base_entry.name == changed_entry.name and base_entry.parent.parent != changed_entry.parent.parent
    assert not np.array_equal(base.load(path, base_entry), changed.load(path, changed_entry))
    settings = PERCENTILE | other
    np.testing.assert_allclose(changed.load(path, changed_entry), expected_image(path, **settings), atol=1e-3, rtol=0)  # float16


def test_an_invalid_no_window_policy_is_refused_when_the_cache_is_built(tmp_path):
    with pytest.raises(ValueError, match="no_window must be one of"):
        make_cache(tmp_path, no_window="minmax")
