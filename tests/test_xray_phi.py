"""Patient identity in DICOM headers never reaches a run's logs, W&B files, caches, file names or checkpoints.

Identifiers are planted in every demo DICOM (one file also truncated, so the skip path runs); a
short X-ray run then goes through training, validation, testing and W&B's generations table, and
every artefact it leaves is searched, inside archives too, in UTF-8, UTF-16 and UTF-32.
"""

from __future__ import annotations

import logging

import pydicom
import pytest

from mmmed_datasets.demo.xray_demo import ensure_demo_mimic_cxr
from tests.phi_scan import NEEDLES, PLANTED, leaks
from train import train


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
