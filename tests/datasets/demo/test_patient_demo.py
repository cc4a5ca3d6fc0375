"""The patient demo: balanced, independent labels that match what the files show; generated once, reproducibly;
read end to end by data=patient_demo with the real ECG and X-ray plugins."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import wfdb
from scipy.signal import find_peaks

from mmmed_datasets.demo.patient_demo import (
    BOTH_QUESTION,
    ECG_QUESTION,
    MANIFEST,
    XRAY_QUESTION,
    answer_text,
    ensure_demo_patients,
    manifest_row,
    plan_patients,
)
from mmmed_datasets.common.record_manifest import read_record_manifest
from mmmed_datasets.xray.xray_image import read_radiograph

SMALL = {"num_patients": 12, "seed": 0, "num_val": 3, "num_test": 3, "xray_only": 2}  # 8 train: 1 ECG only, 2 film only
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return ensure_demo_patients(tmp_path_factory.mktemp("patients") / "demo", **SMALL, workers=2)


def measured_rhythm(record: Path) -> str:
    """The rhythm from the record's own R peaks (lead II): below 60 bpm brady, above 100 tachy."""
    signal = wfdb.rdrecord(str(record.with_suffix(""))).p_signal[:, 1]  # (T,) lead II, mV
    fs = 100
    peaks, _ = find_peaks(signal, height=0.5 * signal.max(), distance=int(0.3 * fs))
    rate = 60 * fs / np.median(np.diff(peaks))
    return "SBRAD" if rate < 60 else "STACH" if rate > 100 else "SR"


def measured_finding(film: Path) -> str:
    """The finding from the decoded film: which lower lung zone (beside the spine, below the hila) is denser."""
    image = read_radiograph(film, apply_voi=True, no_window="full_range", percentiles=None).pixels  # (H, W) in [0, 1]
    rows, cols = image.shape
    band = image[int(0.3 * rows):int(0.5 * rows)].mean(0)  # the spine is the brightest column above the heart
    lo, hi = int(0.4 * cols), int(0.6 * cols)
    cx = (lo + np.argmax(np.convolve(band[lo:hi], np.ones(5) / 5, "same"))) / cols
    zone = lambda a, b: image[int(0.5 * rows):int(0.62 * rows), int((cx + a) * cols):int((cx + b) * cols)].mean()  # noqa: E731
    asymmetry = zone(0.19, 0.28) - zone(-0.28, -0.19)  # the patient's left is the viewer's right
    # Measured on 360 drawn films: no finding -0.056..0.017, an opacity 0.107..0.309 in magnitude.
    return "LEFT" if asymmetry > 0.08 else "RIGHT" if asymmetry < -0.08 else "NORMAL"


def test_plan_holds_out_enough_patients_with_balanced_independent_labels():
    plan = plan_patients(600, 0, num_val=100, num_test=200, ecg_only_fraction=0.1, xray_only=900)
    assert plan == plan_patients(600, 0, num_val=100, num_test=200, ecg_only_fraction=0.1, xray_only=900)  # the seed alone
    assert len({p["patient_id"] for p in plan}) == 1500
    by_split = {s: [p for p in plan if p["split"] == s] for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in by_split.items()} == {"train": 1200, "val": 100, "test": 200}
    assert sum(p["finding"] is None for p in by_split["train"]) == 30  # ECG only: 10% of the 300 with an ECG
    film_only = [p for p in by_split["train"] if p["rhythm"] is None]
    assert len(film_only) == 900 and set(Counter(p["finding"] for p in film_only).values()) == {300}
    assert all(p["rhythm"] is not None and p["finding"] is not None for s in ("val", "test") for p in by_split[s])
    for split, patients in by_split.items():
        both = Counter((p["rhythm"], p["finding"]) for p in patients if None not in (p["rhythm"], p["finding"]))
        assert len(both) == 9 and max(both.values()) - min(both.values()) <= 1, split  # independent and balanced
        rhythms = Counter(p["rhythm"] for p in patients if p["rhythm"] is not None)
        assert max(rhythms.values()) - min(rhythms.values()) <= 2, split
    wording = ("brady", "tachy", "sinus", "opacity", "lobe", "normal", "left", "right")
    for patient in plan:  # the note never gives the answer away
        assert not any(word in manifest_row(patient)["note"].lower() for word in wording)


def test_manifest_labels_match_what_the_generated_files_show(demo):
    records, problems = read_record_manifest(demo / MANIFEST, ["ecg", "xray"])
    assert problems == [] and len(records) == SMALL["num_patients"] + SMALL["xray_only"]
    assert Counter(r.split for r in records) == {"train": 8, "val": 3, "test": 3}
    assert Counter((r.split, tuple(sorted(r.signals))) for r in records) == {
        ("train", ("ecg", "xray")): 5, ("train", ("ecg",)): 1, ("train", ("xray",)): 2,
        ("val", ("ecg", "xray")): 3, ("test", ("ecg", "xray")): 3}
    for record in records:
        assert record.note and all(len(files) == 1 for files in record.signals.values())
        if "ecg" in record.signals:
            assert record.label["rhythm"] == measured_rhythm(Path(record.signals["ecg"][0])), record.patient_id
        if "xray" in record.signals:
            assert record.label["finding"] == measured_finding(Path(record.signals["xray"][0])), record.patient_id
        assert set(record.label) == {{"ecg": "rhythm", "xray": "finding"}[name] for name in record.signals}
        assert record.question == {("ecg", "xray"): BOTH_QUESTION, ("ecg",): ECG_QUESTION,
                                   ("xray",): XRAY_QUESTION}[tuple(sorted(record.signals))]
        assert record.answer == answer_text(record.label.get("rhythm"), record.label.get("finding"))
    assert answer_text(None, "LEFT") == "Left lower lobe opacity."


def test_generation_is_done_once_and_refuses_other_settings_at_the_same_root(demo):
    written = (demo / MANIFEST).stat().st_mtime_ns
    assert ensure_demo_patients(demo, **SMALL) == demo and (demo / MANIFEST).stat().st_mtime_ns == written
    with pytest.raises(ValueError, match="was generated with"):
        ensure_demo_patients(demo, **{**SMALL, "seed": 1})


RACER = """
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from mmmed_datasets.demo.patient_demo import ensure_demo_patients
if __name__ == "__main__":
    ensure_demo_patients(sys.argv[1], num_patients=3, seed=5, num_val=1, num_test=1, workers=1)
"""


def test_two_processes_starting_at_once_generate_the_set_once(tmp_path):
    script = tmp_path / "racer.py"
    script.write_text(RACER)
    root = tmp_path / "demo"
    racers = [subprocess.Popen([sys.executable, str(script), str(root)], cwd=REPO, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    logs = [racer.communicate(timeout=300)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], logs
    assert sum("Simulating 3 demo patients" in log for log in logs) == 1  # one built, the other waited and read it
    assert len((root / MANIFEST).read_text().splitlines()) == 3
    # Reproducible from the settings alone, whatever the number of worker processes.
    again = ensure_demo_patients(tmp_path / "again", num_patients=3, seed=5, num_val=1, num_test=1, workers=2)
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file()) and len(files) == 3 * 3 + 3
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_data_config_reads_the_demo_through_the_real_plugins(demo, compose, tiny_llm, tmp_path):
    from hydra.utils import instantiate

    from mmmed.model.collate import MultimodalCollator
    from mmmed.model.prompts import ChatFormatter, Modality

    settings = [f"data.prepare.{key}={value}" for key, value in SMALL.items()]
    cfg = compose(["modality=[ecg,xray]", "data=patient_demo", "prompt=clinical", f"data.root={demo}",
                   f"paths.cache_dir={tmp_path / 'cache'}", *settings], tmp_path)
    assert cfg.modalities.xray.images.no_window == "full_range"  # the demo films' decode policy reaches the plugin
    data = instantiate(cfg.data, seed=cfg.seed)  # as mmmed.train.build does
    data.prepare_data()  # the set is there with these settings: nothing is generated again
    data.setup("fit")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 8, "val": 3, "test": 3}
    train = data.splits["train"]
    items = [train[(i, i)] for i in range(len(train))]
    assert Counter(tuple(item["signals"]) for item in items) == {("ecg", "xray"): 5, ("ecg",): 1, ("xray",): 2}
    assert all(item["question"].startswith("Note: ") for item in items)
    assert data.data_stats()["data/test/records_with/xray"] == 3 and data.normalization is None
    # The prompts fit the data config's max_length with the modalities' real token counts.
    formatter = ChatFormatter(tiny_llm.tokenizer, [Modality(name, cfg.modalities[name].net.num_tokens)
                                                   for name in ("ecg", "xray")], cfg.prompt.system, cfg.data.max_length)
    batch = MultimodalCollator(formatter, generation_inputs=True)([data.splits["test"][i] for i in range(3)])
    assert batch["signals"]["ecg"]["signal"].shape[0] == 3 and batch["signals"]["xray"].shape[0] == 3
    assert batch["input_ids"].shape[1] <= cfg.data.max_length
    assert batch["reference_labels"][0].keys() == {"rhythm", "finding"}
    print(json.dumps({"longest_tokens": int(batch["attention_mask"].sum(1).max())}))
