"""predict.py and eval.py end to end, on nano checkpoints (the real embedded SmolLM2) trained on the demos.

An ECG model reads the 30-patient PTB-XL demo and an X-ray model the 30-study MIMIC-CXR demo (DICOM
films). Expectations come from the training run itself: its final validation's answers and accuracy.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

import eval as eval_script
import predict as predict_script
from mmmed.model.collate import MultimodalCollator
from mmmed.infer.inference import load
from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
from mmmed_datasets.demo.xray_demo import ensure_demo_mimic_cxr
from tests.conftest import compose_app
from train import train

pytestmark = pytest.mark.slow
ECG_PICTURE_PX = (1102, 866)  # 280 x 220 mm at 100 dpi (datasets/ecg/ecg_plot.py)
XRAY_PICTURE_PX = (600, 780)  # 6.0 x 7.8 in at 100 dpi
FAST = ["logger=csv", "trainer.log_every_n_steps=1", "scheduler.warmup_steps=4", "trainer.limit_test_batches=1"]


@pytest.fixture(scope="module")
def ecg_run(tmp_path_factory) -> Path:
    """20 steps of the ECG demo task, validated once at the end (as the last checkpoint's weights)."""
    out = tmp_path_factory.mktemp("ecg")
    root = ensure_demo_ptbxl(out / "demo", num_patients=30, records_per_patient=1, seed=0)
    cfg = compose_app("train", [f"data.root={root}", "data.prepare.num_patients=30", "data.prepare.heldout_patients=0", "trainer.max_steps=20",
                                "trainer.val_check_interval=20", f"ecg_signal.cache.cache_dir={out / 'cache'}", *FAST],
                      out / "run", resolve=True)
    train(cfg)
    return out / "run"


@pytest.fixture(scope="module")
def xray_run(tmp_path_factory) -> Path:
    """12 steps of the X-ray demo task on DICOM films (a 1-block ViT at 32 x 32 keeps it quick)."""
    out = tmp_path_factory.mktemp("xray")
    root = ensure_demo_mimic_cxr(out / "demo", num_patients=30, rows=96, cols=80, seed=0)
    cfg = compose_app("train", ["encoder=xray", f"data.root={root}", "data.prepare.num_patients=30",
                                "data.prepare.rows=96", "data.prepare.cols=80", "data.dataset.views=null",
                                "modalities.xray.net.img_size=32", "modalities.xray.net.num_tokens=4", "modalities.xray.net.model_kwargs.depth=1",
                                f"data.dataset.images.cache_dir={out / 'cache'}", "data.dataset.images.workers=1",
                                "trainer.max_steps=12", "trainer.val_check_interval=12", *FAST],
                      out / "run", resolve=True)
    train(cfg)
    return out / "run"


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_picture(path: str | Path, size: tuple[int, int]) -> None:
    """A PNG of the documented size, neither blank nor one flat colour."""
    image = Image.open(path)
    assert image.format == "PNG" and image.size == size
    pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 60).mean() > 0.001  # dark ink (traces, text) on a light page


def record_of(run: Path, sample_id: str) -> Path:
    """The WFDB record (path without suffix) of a PTB-XL demo sample ``ptbxl/<ecg_id>``."""
    ecg_id = sample_id.split("/")[1]
    with (run.parent / "demo" / "ptbxl_database.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if r["ecg_id"] == ecg_id)
    return run.parent / "demo" / row["filename_lr"]


def test_predict_answers_wfdb_records_as_validation_did(ecg_run, tmp_path):
    """The validation records, in validation's order and batch size: the same left-padded batch, the same answers."""
    val = rows(ecg_run / "generations_val.jsonl")
    manifest = tmp_path / "val.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "question"])
        writer.writerows([record_of(ecg_run, r["id"]), r["question"]] for r in val)
    cfg = compose_app("predict", [f"ckpt={ecg_run}", f"manifest={manifest}", "batch_size=16", "pictures=false"],
                      tmp_path / "batch", resolve=True)
    assert [r["answer"] for r in predict_script.predict(cfg)] == [r["answer"] for r in val]

    record = record_of(ecg_run, val[0]["id"])  # one record: printed, written, pictured
    cfg = compose_app("predict", [f"ckpt={ecg_run}", f"input={record}"], tmp_path / "predict", resolve=True)
    written = predict_script.predict(cfg)  # no question: the one the model was trained with
    assert len(written) == 1 and written[0]["question"] == val[0]["question"]
    assert written[0]["answer"] == load(ecg_run).answer(val[0]["question"], record)  # the Python API agrees
    assert rows(tmp_path / "predict" / "predictions.jsonl") == written
    check_picture(written[0]["picture"], ECG_PICTURE_PX)


def test_predict_manifest_scores_options_samples_and_reads_an_ecg_dicom(ecg_run, tmp_path):
    predictor = load(ecg_run)
    dicom = Path(get_testdata_file("waveform_ecg.dcm"))
    record = next((ecg_run.parent / "demo" / "records100").rglob("*_lr.hea")).with_suffix("")
    manifest = tmp_path / "questions.csv"
    options = ["Sinus rhythm.", "Sinus bradycardia.", "Sinus tachycardia."]
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "question", "options", "reference"])
        writer.writerow([dicom, "<ecg>\nWhat rhythm does this ECG show?", "|".join(options), ""])
        writer.writerow([record, "Describe <ecg> briefly.", "", "Sinus rhythm."])
    cfg = compose_app("predict", [f"ckpt={ecg_run}", f"manifest={manifest}", "generation.do_sample=true",
                                  "generation.num_samples=3", "generation.temperature=0.7"], tmp_path / "p", resolve=True)
    torch.manual_seed(0)
    written = predict_script.predict(cfg, predictor)
    assert [len(r["samples"]) for r in written] == [3, 3]
    assert written[0]["answer"] == written[0]["samples"][0]
    assert set(written[0]["options"]) == set(options) and "options" not in written[1]
    probs = [written[0]["options"][o]["prob"] for o in options]
    assert sum(probs) == pytest.approx(1.0)
    # Each option's log-likelihood, computed independently: the DICOM's input with each option as the answer
    # of a training batch. Batched as the options are (one right-padded batch): the bf16 LLM's numbers
    # depend on batch shapes.
    signal = predictor.file_inputs(dicom)[0]
    batch = MultimodalCollator(predictor.formatter, pad_to_multiple_of=1)(
        [{"id": "x", "signals": {"ecg": [signal]}, "answer": o, "question": "<ecg>\nWhat rhythm does this ECG show?"}
         for o in options])
    expected = predictor.model.answer_logprobs(batch["input_ids"], batch["attention_mask"], batch["position_ids"],
                                               batch["labels"], batch["signals"])
    assert [written[0]["options"][o]["logprob"] for o in options] == pytest.approx(expected.tolist(), abs=1e-4)
    assert written[1]["reference"] == "Sinus rhythm." and "reference" not in written[0]
    for row in written:
        check_picture(row["picture"], ECG_PICTURE_PX)
    greedy = predictor.answer("<ecg>\nWhat rhythm does this ECG show?", dicom)  # the Python API, same path
    assert isinstance(greedy, str) and greedy


def test_eval_on_the_validation_split_reproduces_the_training_runs_final_validation(ecg_run, tmp_path):
    trained = json.loads((ecg_run / "metrics.json").read_text())
    cfg = compose_app("eval", [f"ckpt={ecg_run / 'checkpoints' / 'last.ckpt'}", "split=val", "num_pictures=2"],
                      tmp_path / "eval", resolve=False)
    report = eval_script.evaluate(cfg)
    import wandb

    wandb.finish()
    metrics = report["metrics"]
    assert metrics["accuracy"] == pytest.approx(trained["val/accuracy"])
    assert metrics["num_scored"] == trained["val/num_scored"] == 3
    answers = rows(tmp_path / "eval" / "generations.jsonl")
    assert [r["answer"] for r in answers] == [r["answer"] for r in rows(ecg_run / "generations_val.jsonl")]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["metrics"]["accuracy"] == metrics["accuracy"]
    assert json.loads((ecg_run / "eval_val.json").read_text())["accuracy"] == pytest.approx(metrics["accuracy"])
    assert {"bleu_1", "bleu_4", "rouge_l"} <= set(metrics["report"]) and not metrics["skipped"]  # ECG reports: text only
    pictures = [r["picture"] for r in answers if "picture" in r]
    assert len(pictures) == 2
    for picture in pictures:
        check_picture(picture, ECG_PICTURE_PX)
    # The W&B generations table carries the pictures as images.
    run_dir = next((tmp_path / "eval" / "wandb").glob("offline-run-*"))
    table = json.loads(next(run_dir.glob("files/media/table/val/generations*.table.json")).read_text())
    assert table["columns"][-1] == "picture"
    assert [row[-1] for row in table["data"]] == ["Image", "Image", None]
    # W&B puts a table's images into the run's table artifact, which offline runs keep in their .wandb log.
    logged = set(re.findall(rb"media/images/[0-9a-f]+/(\d{5}\.png)", next(run_dir.glob("run-*.wandb")).read_bytes()))
    assert logged == {Path(p).name.encode() for p in pictures}


def test_run_summary_plot_is_saved_with_the_run(ecg_run):
    history = rows(ecg_run / "history.jsonl")
    assert [r["step"] for r in history if "train/loss" in r] == list(range(1, 21))
    assert any("val/accuracy" in r for r in history)
    check_picture(ecg_run / "summary.png", (1000, 400))


def test_predict_and_eval_read_dicom_radiographs(xray_run, tmp_path):
    val = rows(xray_run / "generations_val.jsonl")
    cfg = compose_app("eval", [f"ckpt={xray_run}", "split=val", "num_pictures=1", "logger=csv"], tmp_path / "eval",
                      resolve=False)
    report = eval_script.evaluate(cfg)
    assert [r["answer"] for r in rows(tmp_path / "eval" / "generations.jsonl")] == [r["answer"] for r in val]
    trained = json.loads((xray_run / "metrics.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(trained["val/accuracy"])
    # Radiology reports: the clinical metrics say why they were skipped, and how to get them.
    assert set(report["metrics"]["skipped"]) == {"chexbert_f1", "radgraph_f1"}
    assert "chexbert_weights" in report["metrics"]["skipped"]["chexbert_f1"]
    check_picture(next((tmp_path / "eval" / "pictures").glob("*.png")), XRAY_PICTURE_PX)

    films = [next((xray_run.parent / "demo").rglob(f"{r['id'].split('/')[-1]}.dcm")) for r in val]
    manifest = tmp_path / "val.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "question"])
        writer.writerows([film, r["question"]] for film, r in zip(films, val))
    cfg = compose_app("predict", [f"ckpt={xray_run}", f"manifest={manifest}", "batch_size=16"], tmp_path / "predict",
                      resolve=True)
    written = predict_script.predict(cfg)  # the DICOM films decoded from their files, batched as validation did
    assert [r["answer"] for r in written] == [r["answer"] for r in val]
    for row in written:
        check_picture(row["picture"], XRAY_PICTURE_PX)
