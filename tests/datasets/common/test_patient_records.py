"""PatientRecordDataset: items carry only the modalities a patient has, notes land where documented, files are opened
once per split, errors follow on_error; one test reads real ECG + X-ray files through the real plugins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmmed.eval.metrics import CROP_SEPARATOR
from mmmed.model.modality import ModalityPlugin
from mmmed_datasets.common.patient_records import PatientRecordDataset, compose_question
from mmmed_datasets.common.record_manifest import RecordError


class NpySource:
    """A test SignalSource over ``.npy`` files: a training item adds noise from ``rng``; an evaluation view adds its index."""

    def __init__(self, paths: list[str], normalize: bool, eval_views: int) -> None:
        self.errors, self.data = {}, {}
        for path in paths:
            try:
                self.data[path] = np.load(path).astype(np.float32)
            except (ValueError, OSError) as err:
                self.errors[path] = f"unreadable: {type(err).__name__}"
        self.stats = {"files": len(self.data), "lengths": {str(n): sum(len(x) == n for x in self.data.values())
                                                          for n in sorted({len(x) for x in self.data.values()})}}
        self.normalize, self.eval_views, self.normalization = normalize, eval_views, None

    def get(self, path: str, train: bool, rng: np.random.Generator | None, crop: int = 0) -> torch.Tensor:
        x = self.data[path] + (rng.normal(size=self.data[path].shape).astype(np.float32) if train else crop)
        if self.normalization is not None:
            x = x - self.normalization["mean"]
        return torch.from_numpy(x)

    def fit_normalization(self) -> dict | None:
        return {"mean": float(np.mean([x.mean() for x in self.data.values()]))} if self.normalize else None

    def set_normalization(self, stats: dict | None) -> None:
        self.normalization = stats


class NpyModality(ModalityPlugin):
    """A test-only modality reading 1-D ``.npy`` arrays; counts how often it opens files."""

    def __init__(self, name: str, normalize: bool = False, eval_views: int = 1) -> None:
        super().__init__(name, f"{name} test arrays", True, {"_target_": "torch.nn.Identity"})
        self.normalize, self.eval_views, self.opened = normalize, eval_views, []

    def claims(self, path) -> bool:
        return str(path).endswith(".npy")

    def read(self, path, normalization=None) -> list[torch.Tensor]:
        return [torch.from_numpy(np.load(path))]

    def open(self, paths: list[str], train: bool) -> NpySource:
        self.opened.append(list(paths))
        return NpySource(paths, self.normalize, self.eval_views)

    def picture(self, path) -> dict:
        return {"kind": "array", "values": np.load(path)}

    def draw(self, inputs, path, *, question, reference, answer) -> Path:
        raise NotImplementedError

    def settings(self) -> dict:
        return {}


def save(folder: Path, name: str, values) -> str:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(values, dtype=np.float32))
    return name


def manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "records.jsonl"
    path.write_text("".join(json.dumps({"question": "What is it?", "answer": "Fine.", **row}) + "\n" for row in rows))
    return path


def dataset(path: Path, plugins: dict, split: str = "train", train: bool = True, on_error: str = "raise"):
    return PatientRecordDataset(str(path), plugins, split, None, train, on_error)


def test_items_carry_only_the_modalities_a_patient_has_in_run_order(tmp_path):
    save(tmp_path, "a1.npy", [1, 2]), save(tmp_path, "a2.npy", [3, 4]), save(tmp_path, "b.npy", [5, 6, 7])
    path = manifest(tmp_path, [
        {"patient_id": "p1", "split": "test", "beta": "b.npy", "alpha": "a1.npy|a2.npy",
         "label": {"rhythm": "SR", "finding": "LEFT"}},
        {"patient_id": "p2", "split": "test", "alpha": "a2.npy", "label": "SR", "facts": {"heart_rate": 82}},
        {"patient_id": "p3", "split": "test", "note": "Age 70."},
    ])
    plugins = {"alpha": NpyModality("alpha"), "beta": NpyModality("beta")}
    data = dataset(path, plugins, "test", train=False)
    first, second, third = (data[i] for i in range(3))
    assert list(first["signals"]) == ["alpha", "beta"]  # the run's order, not the manifest's
    assert [x.tolist() for x in first["signals"]["alpha"]] == [[1, 2], [3, 4]]
    assert first["signals"]["beta"][0].tolist() == [5, 6, 7]
    assert first["label"] == {"rhythm": "SR", "finding": "LEFT"} and first["id"] == "p1/0" and first["patient_id"] == "p1"
    assert list(second["signals"]) == ["alpha"] and second["label"] == "SR" and second["id"] == "p2/1"
    assert (first["facts"], second["facts"]) == ({}, {"heart_rate": 82.0})  # for checkers; not in the question
    assert "82" not in second["question"]
    assert third["signals"] == {} and third["question"] == "Note: Age 70.\nWhat is it?"
    assert data.stats == {"samples": 3, "skipped": 0, "records_with": {"alpha": 2, "beta": 1},
                          "alpha/files": 2, "alpha/lengths": {"2": 2}, "beta/files": 1, "beta/lengths": {"3": 1}}
    assert all(isinstance(v, int) or all(isinstance(n, int) for n in v.values()) for v in data.stats.values())
    # Each modality's files are opened once for the split, sorted and unique.
    assert plugins["alpha"].opened == [[str(tmp_path / "a1.npy"), str(tmp_path / "a2.npy")]]
    assert plugins["beta"].opened == [[str(tmp_path / "b.npy")]]
    assert data.plot_inputs(1) == {"kind": "alpha", "values": pytest.approx(np.array([3, 4]))}


def test_the_note_goes_at_its_marker_else_before_the_question():
    assert compose_question("What rhythm?", "67-year-old man.") == "Note: 67-year-old man.\nWhat rhythm?"
    assert compose_question("<ecg> Given <note>, what rhythm?", "a 67-year-old man") == \
        "<ecg> Given a 67-year-old man, what rhythm?"
    assert compose_question("<note>\nWhat rhythm?", "") == "What rhythm?"  # an empty note adds nothing
    assert compose_question("What rhythm?", "  ") == "What rhythm?"


def test_bad_files_raise_with_line_path_and_reason_or_are_skipped_and_counted(tmp_path):
    save(tmp_path, "good.npy", [1.0])
    (tmp_path / "broken.npy").write_bytes(b"not an array")
    path = manifest(tmp_path, [
        {"patient_id": "p1", "split": "train", "alpha": "good.npy"},
        {"patient_id": "p2", "split": "train", "alpha": "good.npy|broken.npy"},
        {"patient_id": "p3", "split": "train", "alpha": "gone.npy"},
        {"patient_id": "p4", "split": "train", "answer": " ", "alpha": "good.npy"},
    ])
    # The manifest's own problems (a missing file, a blank answer) are found before any file is opened.
    with pytest.raises(RecordError, match=r"records\.jsonl, line 3: alpha file not found: .*gone\.npy"):
        dataset(path, {"alpha": NpyModality("alpha")}, on_error="raise")
    path.write_text("\n".join(path.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(RecordError, match=r"records\.jsonl, line 2: alpha file .*broken\.npy: unreadable: ValueError"):
        dataset(path, {"alpha": NpyModality("alpha")}, on_error="raise")
    path = manifest(tmp_path, [
        {"patient_id": "p1", "split": "train", "alpha": "good.npy"},
        {"patient_id": "p2", "split": "train", "alpha": "good.npy|broken.npy"},
        {"patient_id": "p3", "split": "train", "alpha": "gone.npy"},
        {"patient_id": "p4", "split": "train", "answer": " ", "alpha": "good.npy"},
    ])
    data = dataset(path, {"alpha": NpyModality("alpha")}, on_error="skip")
    assert [data[i]["patient_id"] for i in range(len(data))] == ["p1"]
    assert data.stats["samples"] == 1 and data.stats["skipped"] == 3
    with pytest.raises(ValueError, match="no usable records"):
        dataset(manifest(tmp_path, [{"patient_id": "p", "split": "train", "alpha": "broken.npy"}]),
                {"alpha": NpyModality("alpha")}, on_error="skip")


def test_training_items_are_reproducible_from_the_item_seed_and_evaluation_is_fixed(tmp_path):
    save(tmp_path, "a.npy", np.zeros(8))
    path = manifest(tmp_path, [{"patient_id": "p1", "split": "train", "alpha": "a.npy|a.npy"}])
    train = dataset(path, {"alpha": NpyModality("alpha")})
    one, again, other = train[(0, 7)], train[(0, 7)], train[(0, 8)]
    assert torch.equal(one["signals"]["alpha"][0], again["signals"]["alpha"][0])
    assert not torch.equal(one["signals"]["alpha"][0], other["signals"]["alpha"][0])
    assert not torch.equal(one["signals"]["alpha"][0], one["signals"]["alpha"][1])  # one rng, drawn in turn
    evaluation = dataset(path, {"alpha": NpyModality("alpha")}, train=False)
    assert evaluation[0]["signals"]["alpha"][0].tolist() == [0.0] * 8


def test_evaluation_serves_one_item_per_view_of_the_record(tmp_path):
    save(tmp_path, "a.npy", [0.0]), save(tmp_path, "b.npy", [0.0])
    path = manifest(tmp_path, [{"patient_id": "p1", "split": "val", "alpha": "a.npy", "beta": "b.npy"},
                               {"patient_id": "p2", "split": "val", "beta": "b.npy"}])
    plugins = {"alpha": NpyModality("alpha", eval_views=3), "beta": NpyModality("beta")}
    data = dataset(path, plugins, "val", train=False)
    items = [data[i] for i in range(len(data))]
    assert [item["id"] for item in items] == [f"p1/0{CROP_SEPARATOR}{k}" for k in range(3)] + ["p2/1"]
    assert [item["signals"]["alpha"][0].item() for item in items[:3]] == [0.0, 1.0, 2.0]
    assert [item["signals"]["beta"][0].item() for item in items[:3]] == [0.0, 0.0, 0.0]  # one view: always view 0
    assert len(dataset(path, plugins, "val", train=True)) == 2


def test_normalisation_is_fitted_and_shared_per_modality(tmp_path):
    save(tmp_path, "a.npy", [2.0, 4.0])
    save(tmp_path, "b.npy", [1.0])
    path = manifest(tmp_path, [{"patient_id": "p1", "split": "train", "alpha": "a.npy", "beta": "b.npy"}])
    plugins = {"alpha": NpyModality("alpha", normalize=True), "beta": NpyModality("beta")}
    train = dataset(path, plugins)
    stats = train.fit_normalization()
    assert stats == {"alpha": {"mean": 3.0}}  # beta returns none, so it has no entry
    evaluation = dataset(path, plugins, train=False)
    evaluation.set_normalization(stats)
    assert evaluation[0]["signals"]["alpha"][0].tolist() == [-1.0, 1.0]
    assert evaluation[0]["signals"]["beta"][0].tolist() == [1.0]
    assert dataset(path, {"alpha": NpyModality("alpha"), "beta": NpyModality("beta")}).fit_normalization() is None


def test_patients_never_span_splits_and_each_split_opens_its_own_files(tmp_path):
    for i in range(40):
        save(tmp_path, f"a{i}.npy", [float(i)])
    rows = [{"patient_id": f"p{i % 40}", "alpha": f"a{i % 40}.npy"} for i in range(120)]
    path = manifest(tmp_path, rows)
    plugin = NpyModality("alpha")
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    splits = {s: PatientRecordDataset(str(path), {"alpha": plugin}, s, fractions, s == "train", "raise")
              for s in fractions}
    patients = {s: {d[i]["patient_id"] for i in range(len(d))} for s, d in splits.items()}
    assert sum(len(p) for p in patients.values()) == 40 and sum(len(d) for d in splits.values()) == 120
    assert not (patients["train"] & patients["val"] or patients["train"] & patients["test"] or patients["val"] & patients["test"])
    assert [len(paths) for paths in plugin.opened] == [len(patients[s]) for s in fractions]


def test_real_ecg_and_xray_plugins_read_a_patient_record(tmp_path):
    from mmmed_datasets.ecg.ecg_modality import ECGModality
    from mmmed_datasets.demo.patient_demo import write_ecg, write_film
    from mmmed_datasets.xray.xray_modality import XrayModality

    write_ecg(tmp_path, "p1/ecg", 120.0, seed=1)
    write_film(tmp_path / "p1" / "cxr.dcm", "LEFT", "PA", "mono2-12bit-jpeg2000", 1, 96, 80,
               {"SOPInstanceUID": "1.2.3.1", "StudyInstanceUID": "1.2.3.2", "SeriesInstanceUID": "1.2.3.3",
                "ViewPosition": "PA"})
    path = manifest(tmp_path, [
        {"patient_id": "p1", "split": "test", "ecg": "p1/ecg.hea", "xray": "p1/cxr.dcm", "note": "Age 50.",
         "label": {"rhythm": "STACH", "finding": "LEFT"}},
        {"patient_id": "p2", "split": "test", "ecg": "p1/ecg"},  # a WFDB record named without its suffix
    ])
    preprocessing = {"leads": ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"],
                     "lead_aliases": {}, "min_real_leads": 1, "sampling_rate": 100, "seconds": 10,
                     "missing_leads": "error", "nan_policy": "interpolate", "short_records": "error", "bandpass": None,
                     "filter_order": 4, "notch": None, "notch_quality": 30, "normalize": "record",
                     "eval_crop": "center", "eval_crops": 1}
    plugins = {
        "ecg": ECGModality("ecg", "ECG", True, {"_target_": "torch.nn.Identity"}, preprocessing, cache=None),
        "xray": XrayModality("xray", "X-ray", True, {"_target_": "torch.nn.Identity"},
                             {"size": 32, "apply_voi": True, "no_window": "full_range", "percentiles": [0.5, 99.5]},
                             cache_dir=str(tmp_path / "cache"), workers=1),
    }
    data = PatientRecordDataset(str(path), plugins, "test", None, False, "raise")
    both, ecg_only = data[0], data[1]
    assert list(both["signals"]) == ["ecg", "xray"] and list(ecg_only["signals"]) == ["ecg"]
    assert both["signals"]["ecg"][0]["signal"].shape == (12, 1000) and both["signals"]["xray"][0].shape == (1, 32, 32)
    assert both["question"] == "Note: Age 50.\nWhat is it?"
    assert data.stats["records_with"] == {"ecg": 2, "xray": 1} and data.stats["xray/images"] == 1
    assert data.stats["ecg/records"] == 2 and data.stats["xray/views_seen"] == {"PA": 1}
    assert data.fit_normalization() is None  # per-record z-scores and [0, 1] images: no statistics
    assert data.plot_inputs(0)["kind"] == "ecg" and data.plot_inputs(0)["signal"].shape == (12, 1000)
