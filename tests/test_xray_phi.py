"""Patient identity in DICOM headers never reaches a run's logs, W&B files, caches, file names or checkpoints.

Identifiers are planted in every demo DICOM (one file also truncated, so the skip path runs); a
short X-ray run then goes through training, validation, testing and W&B's generations table, and
every artefact it leaves is searched, inside archives too, in UTF-8, UTF-16 and UTF-32.
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from pathlib import Path

import pydicom
import pytest

from mmmed_datasets.demo.xray_demo import ensure_demo_mimic_cxr
from train import train

PLANTED = {
    "PatientName": "Quuxley^Zebediah",
    "PatientID": "PHI-4471-9923",
    "PatientBirthDate": "19310417",
    "OtherPatientIDs": "MRN-55120873",
    "PatientAddress": "17 Marigold Lane Xyzzyville",
    "ReferringPhysicianName": "Vexworth^Ignatia",
    "AccessionNumber": "ACC90817263",
    "InstitutionName": "Saint Plover Infirmary",
}
# PN values are searched by their parts too: a logger could print "Zebediah Quuxley".
NEEDLES = sorted({v for v in PLANTED.values()} | {"Quuxley", "Zebediah", "Vexworth", "Ignatia"})


def contents(path: Path) -> list[bytes]:
    """A file's bytes, plus the members of zip archives (checkpoints, npz) and gzip streams."""
    data = path.read_bytes()
    blobs = [data]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blobs += [archive.read(name) for name in archive.namelist()] + [n.encode() for n in archive.namelist()]
    if data[:2] == b"\x1f\x8b":
        blobs.append(gzip.decompress(data))
    return blobs


def leaks(roots: list[Path]) -> tuple[list[str], int]:
    """``(findings, files searched)``: every needle found in a file name or a file's contents."""
    found, searched = [], 0
    for root in roots:
        for path in root.rglob("*"):
            for needle in NEEDLES:
                if needle.lower() in str(path.relative_to(root)).lower():
                    found.append(f"{needle!r} in file name {path}")
            if not path.is_file():
                continue
            searched += 1
            for blob in contents(path):
                for needle in NEEDLES:
                    # UTF-32: numpy stores unicode strings (e.g. in .npz caches) as 4 bytes per character.
                    for encoded in (needle.encode(), needle.upper().encode(), needle.encode("utf-16-le"), needle.encode("utf-32-le")):
                        if encoded in blob:
                            found.append(f"{needle!r} in {path}")
    return found, searched


@pytest.mark.slow
def test_planted_identifiers_reach_no_artefact_of_a_run(compose, tmp_path, caplog, capfd):
    root = ensure_demo_mimic_cxr(tmp_path / "demo", num_patients=30, rows=96, cols=80, seed=0)
    films = sorted(root.glob("files/**/*.dcm"))
    for film in films:
        ds = pydicom.dcmread(film)
        for keyword, value in PLANTED.items():
            setattr(ds, keyword, value)
        ds.save_as(film)
    films[0].write_bytes(films[0].read_bytes()[:900])  # unreadable: its error is logged and counted
    assert all(PLANTED["PatientID"].encode() in f.read_bytes() for f in films[1:])  # the search can see them

    out, cache = tmp_path / "run", tmp_path / "xray-cache"
    cfg = compose(
        [
            "encoder=xray",
            "model=tiny",
            "logger=wandb",
            f"data.root={root}",
            "data.prepare.num_patients=30",
            "data.prepare.rows=96",
            "data.prepare.cols=80",
            f"data.dataset.images.cache_dir={cache}",
            "data.dataset.images.workers=1",
            "data.dataset.on_error=skip",
            "data.dataset.views=null",
            "modalities.xray.net.img_size=32",
            "modalities.xray.net.num_tokens=4",
            "modalities.xray.net.model_kwargs.depth=1",
            "trainer.max_steps=2",
            "trainer.val_check_interval=1",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.log_every_n_steps=1",
            "evaluation.num_logged_samples=4",
        ],
        out,
    )
    with caplog.at_level(logging.DEBUG):
        metrics = train(cfg)
    import wandb

    wandb.finish()
    assert metrics["data/train/skipped"] + metrics["data/val/skipped"] + metrics["data/test/skipped"] == 1
    assert any(str(films[0]) in r.getMessage() for r in caplog.records)  # the skip names the file...
    logged = caplog.text + "".join(capfd.readouterr())
    assert not [n for n in NEEDLES if n in logged]  # ...and nothing from its header

    assert list(out.glob("wandb/offline-run-*/run-*.wandb"))  # W&B's files are among those searched
    assert list(cache.rglob("*.npz")) and list(out.glob("checkpoints/*.ckpt"))
    found, searched = leaks([out, cache])
    assert searched > 10
    assert found == []
