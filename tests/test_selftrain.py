"""selftrain.py end to end on a tiny random model: the report, no held-out question in any rationale file, and
resume after SIGKILLs mid-sampling, mid-writing and mid-training equal to an uninterrupted run, file for file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selftrain import check_same_run
from tests.conftest import compose_app

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def settings(data: Path) -> list[str]:
    """30 demo patients: 72 training questions (3 sampling batches of at most 32), 20+ validation and test questions."""
    return ["model=tiny", "logger=csv", f"data.root={data / 'thresholds'}", f"data.prepare.ptbxl.root={data / 'ptbxl'}",
            "data.prepare.ptbxl.num_patients=30", "data.prepare.eval_questions=20",
            f"ecg_signal.cache.cache_dir={data / 'cache'}", "selftrain.round0_steps=3", "selftrain.steps_per_round=4",
            "selftrain.max_rounds=2", "selftrain.patience=2", "selftrain.checkpoint_every=2",
            "selftrain.samples_per_question=2", "selftrain.max_new_tokens=6", "selftrain.sample_batch_size=32",
            "selftrain.rationalize=true"]


def run(data: Path, out: Path, kill_at: str | None = None) -> int:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.pop("MMMED_SELFTRAIN_KILL_AT", None)
    if kill_at:
        env["MMMED_SELFTRAIN_KILL_AT"] = kill_at
    done = subprocess.run([sys.executable, "selftrain.py", *settings(data), f"hydra.run.dir={out}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900, start_new_session=True)
    if kill_at is None and done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return done.returncode


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, uninterrupted run)."""
    data = tmp_path_factory.mktemp("selftrain_data")
    out = data / "reference"
    run(data, out)
    return data, out


def outputs(out: Path) -> dict[str, bytes]:
    """Every result file of a run: weights, samples, rationales, counts and scores (timings taken out)."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if path.suffix == ".safetensors" or path.suffix == ".jsonl" and "csv" not in rel:
            files[rel] = path.read_bytes()
        elif path.name in ("filter.json", "phase.json", "selftrain.json") or path.name.startswith("test_"):
            files[rel] = json.dumps(strip_seconds(json.loads(path.read_text())), sort_keys=True).encode()
    return files


def strip_seconds(value):
    if isinstance(value, dict):
        return {k: strip_seconds(v) for k, v in value.items() if not k.endswith("seconds")}
    if isinstance(value, list):
        return [strip_seconds(v) for v in value]
    return value


def test_the_report_has_every_round_and_the_three_rows_on_the_same_questions(reference):
    data, out = reference
    report = json.loads((out / "selftrain.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    first = report["rounds"][1]
    manifest = [json.loads(line) for line in (data / "thresholds" / "records.jsonl").read_text().splitlines()]
    training_questions = sum(row["split"] == "train" for row in manifest)
    assert training_questions == 72  # 24 training records x (2 threshold questions + 1 rate question), the demo config
    assert first["questions"] == 72 and first["completions"] == 72 * 2
    assert sum(first["verdicts"].values()) == 72 * 2  # every completion judged once
    assert {"pass_at_k", "mean_rationale_words", "sampling_seconds", "train_seconds", "val", "kept", "seeds"} <= set(first)
    rows = report["rows"]
    assert set(rows) == {"final", "seed_only", "answer_only_baseline"}
    assert rows["answer_only_baseline"]["steps"] == rows["final"]["steps"] == 3 + 4 * rows["final"]["round"]
    assert rows["seed_only"]["steps"] == 3
    assert len({row["test_num_scored"] for row in rows.values()}) == 1  # the same held-out questions
    assert rows["final"]["asked_for_reasoning"] and not rows["answer_only_baseline"]["asked_for_reasoning"]
    assert (out / "selftrain.png").stat().st_size > 10_000
    # Every round trains in training mode, after the evaluations before it: the encoder's BatchNorm counts each step.
    counted = {name: int(load_file(out / name / "trainable.safetensors")["encoders.ecg.stem.1.num_batches_tracked"])
               for name in ("round_0", "round_1", "round_2")}
    assert counted == {"round_0": 3, "round_1": 7, "round_2": 11}
    seeds = [json.loads(line) for line in (out / "round_1" / "rationales.jsonl").read_text().splitlines()]
    assert seeds and {row["source"] for row in seeds} <= {"seed", "sampled", "hinted"}
    assert all({"id", "question", "rationale", "answer", "source", "checkers", "round", "model_hash"} <= set(row)
               for row in seeds)


def test_no_validation_or_test_question_enters_a_rationale_or_a_sample(reference):
    data, out = reference
    manifest = [json.loads(line) for line in (data / "thresholds" / "records.jsonl").read_text().splitlines()]
    split_of = {f"{row['patient_id']}/{number}": row["split"] for number, row in enumerate(manifest)}
    held_out_ecgs = {row["ecg"] for row in manifest if row["split"] != "train"}
    ecg_of = {f"{row['patient_id']}/{number}": row["ecg"] for number, row in enumerate(manifest)}
    # What a round trains on or samples from (generations_val.jsonl is the validation score's own record, not data).
    training_files = [*out.glob("round_*/rationales.jsonl"), *out.glob("round_*/samples/*.jsonl")]
    written = [json.loads(line) for path in training_files for line in path.read_text().splitlines()]
    assert len(written) > 72  # seeds in every round, 3 sample batches in each sampling round
    assert {split_of[row["id"]] for row in written} == {"train"}
    assert not {ecg_of[row["id"]] for row in written} & held_out_ecgs  # nor any record a held-out question is about


def test_killed_mid_sampling_writing_and_training_it_resumes_to_the_same_result(reference):
    data, reference_out = reference
    out = data / "killed"
    for point in ("sample:1:1", "train:round_1:3", "written:2"):
        assert run(data, out, kill_at=point) == -signal.SIGKILL, point
        if point == "sample:1:1":  # died mid-sampling: two batches on disk, the third and the file not yet
            assert sorted(p.name for p in (out / "round_1" / "samples").iterdir()) == ["batch_00000.jsonl", "batch_00001.jsonl"]
            assert not (out / "round_1" / "rationales.jsonl").exists()
        if point == "train:round_1:3":  # died mid-training, after the step-2 checkpoint
            assert (out / "round_1" / "checkpoints" / "last.ckpt").exists() and not (out / "round_1" / "phase.json").exists()
    run(data, out)
    expected, got = outputs(reference_out), outputs(out)
    assert sorted(got) == sorted(expected)
    for name, content in expected.items():
        if name.endswith(".safetensors"):
            ours, theirs = load_file(out / name), load_file(reference_out / name)
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
        else:
            assert got[name] == content, name


def test_a_run_folder_refuses_other_settings(tmp_path):
    cfg = compose_app("selftrain", ["model=tiny", "logger=csv"], tmp_path, resolve=False)
    check_same_run(cfg, tmp_path)
    check_same_run(cfg, tmp_path)  # the same settings: resumes
    other = compose_app("selftrain", ["model=tiny", "logger=csv", "selftrain.temperature=1.3"], tmp_path, resolve=False)
    with pytest.raises(ValueError, match=r"holds a self-training run with other settings \(differing: selftrain\)"):
        check_same_run(other, tmp_path)


def test_eval_and_predict_ask_the_self_trained_model_for_its_reasoning(reference, tmp_path):
    import eval as eval_script
    import predict as predict_script

    data, out = reference
    report = json.loads((out / "selftrain.json").read_text())
    cache = f"ecg_signal.cache.cache_dir={data / 'cache'}"
    scored = eval_script.evaluate(compose_app("eval", [f"ckpt={out}", "logger=csv", "num_pictures=1", cache],
                                              tmp_path / "eval", resolve=False))
    assert scored["asked_for_reasoning"] is True
    # eval.py scores the best round (metrics.json weights_from) exactly as selftrain.json's final row
    assert scored["metrics"]["accuracy"] == report["rows"]["final"]["test_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    instruction = report["settings"]["instruction"]
    assert all(row["question"].endswith("\n" + instruction) and "completion" in row for row in rows)
    plain = eval_script.evaluate(compose_app("eval", [f"ckpt={out}", "logger=csv", "num_pictures=0", "rationale=false",
                                                      cache], tmp_path / "plain", resolve=False))
    assert plain["asked_for_reasoning"] is False

    record = json.loads((data / "thresholds" / "records.jsonl").read_text().splitlines()[0])["ecg"]
    written = predict_script.predict(compose_app("predict", [f"ckpt={out}", f"input={record}", "pictures=false",
                                                             "question=Is the heart rate above 80 bpm?"],
                                                 tmp_path / "predict", resolve=False))
    assert {"answer", "reasoning", "completion"} <= set(written[0])


@pytest.mark.parametrize("data", ["ptbxl_demo", "ecg_qa_demo"])
def test_other_data_sets_run_the_same_loop_unchanged(data, tmp_path):
    """PTB-XL's layout (rhythm classes) and ECG-QA's (answer items, two-ECG questions), without seed rationales."""
    from mmmed_datasets.demo.ecg_demo import ensure_demo_ptbxl
    from selftrain import selftrain

    ptbxl = ensure_demo_ptbxl(tmp_path / "ptbxl", num_patients=30, records_per_patient=1, seed=0)
    where = [f"data.root={ptbxl}", "data.prepare.heldout_patients=0"] if data == "ptbxl_demo" else [f"data.root={tmp_path / 'ecgqa'}",
                                                                 f"data.dataset.ptbxl_root={ptbxl}"]
    cfg = compose_app("selftrain", ["model=tiny", "logger=csv", f"data={data}", *where, "data.prepare.num_patients=30",
                                    f"ecg_signal.cache.cache_dir={tmp_path / 'cache'}", "selftrain.round0_steps=2",
                                    "selftrain.steps_per_round=2", "selftrain.max_rounds=1", "selftrain.max_new_tokens=4",
                                    "selftrain.samples_per_question=2"], tmp_path / "run", resolve=False)
    report = selftrain(cfg)
    first = report["rounds"][1]
    assert first["seeds"] == 0 and first["completions"] == 2 * first["questions"] > 0
    assert sum(first["verdicts"].values()) == first["completions"]
    assert set(report["rows"]) == {"final", "seed_only", "answer_only_baseline"}
    assert report["rows"]["final"]["test_num_scored"] > 0
