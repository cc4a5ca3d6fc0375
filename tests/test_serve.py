"""serve.py: the API answers as predict.py does, refuses bad uploads with a 4xx and keeps serving, batches concurrent
questions, keeps no upload on disk, and lets no DICOM header value out (a 2-step tiny model on the PTB-XL demo)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
import wfdb
from pydicom.data import get_testdata_file

import predict as predict_script
from mmmed.infer.inference import load
from mmmed.infer.restore import find_checkpoint
from tests.conftest import compose_app
from tests.live_server import live_server
from tests.phi_scan import PLANTED, contents, found_in_text

QUESTION = "What rhythm does this ECG show?"
TIMEOUT_S = 600  # a hung request fails the test instead of hanging CI; answers take well under a second each


def record_files(record: Path) -> list[tuple[str, bytes]]:
    """A WFDB record's header and signal file, as uploads."""
    return [(f"{record.name}{suffix}", record.with_suffix(suffix).read_bytes()) for suffix in (".hea", ".dat")]


def post(url: str, files: list[tuple[str, bytes]], request: dict | str, **kwargs) -> httpx.Response:
    body = request if isinstance(request, str) else json.dumps(request)
    return httpx.post(f"{url}/v1/answer", files=[("files", f) for f in files], data={"request": body},
                      timeout=TIMEOUT_S, **kwargs)


@pytest.fixture(scope="module")
def records(tiny_ecg_run) -> list[Path]:
    """Eight demo records (WFDB, 100 Hz), as paths without suffix."""
    _, root = tiny_ecg_run
    return sorted(p.with_suffix("") for p in (root / "records100").rglob("*_lr.hea"))[:8]


@pytest.fixture(scope="module")
def served(tiny_ecg_run, tmp_path_factory):
    """``(url, server, predict.py's answers by record)`` for the tiny run served on a free port."""
    run, _ = tiny_ecg_run
    out = tmp_path_factory.mktemp("serve")
    cfg = compose_app("serve", [f"ckpt={run}", f"private_dir={out}", "batching.max_wait_ms=50"], out / "hydra",
                      resolve=True)
    with live_server(cfg, load(run)) as (url, server):
        yield url, server


@pytest.fixture(scope="module")
def predicted(tiny_ecg_run, records, tmp_path_factory) -> dict[Path, str]:
    """predict.py's greedy answers (its own model load, its own command-line settings)."""
    run, _ = tiny_ecg_run
    out = tmp_path_factory.mktemp("predict")
    answers = {}
    for n, record in enumerate(records):
        cfg = compose_app("predict", [f"ckpt={run}", f"input={record}", f"question={QUESTION}", "pictures=false"],
                          out / str(n), resolve=True)
        [written] = predict_script.predict(cfg)
        answers[record] = written["answer"]
    return answers


def test_the_api_answers_what_predict_py_answers(served, records, predicted):
    url, _ = served
    for record in records[:3]:
        response = post(url, record_files(record), {"question": QUESTION})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["answer"] == predicted[record]
        assert body["model"] == "run" and set(body["timings"]) == {"read_s", "queue_s", "model_s", "total_s"}


def test_a_zip_of_the_record_answers_the_same(served, records, predicted):
    url, _ = served
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in record_files(records[0]):
            archive.writestr(f"records100/00000/{name}", data)
    response = post(url, [("record.zip", buffer.getvalue())], {"question": QUESTION})
    assert response.status_code == 200, response.text
    assert response.json()["answer"] == predicted[records[0]]


def test_options_are_scored_as_predict_py_scores_them(served, records, tiny_ecg_run, tmp_path):
    url, _ = served
    run, _ = tiny_ecg_run
    options = ["Sinus rhythm.", "Sinus bradycardia.", "Sinus tachycardia."]
    body = post(url, record_files(records[0]), {"question": QUESTION, "options": options}).json()
    cfg = compose_app("predict", [f"ckpt={run}", f"input={records[0]}", f"question={QUESTION}", "pictures=false",
                                  f"options=[{','.join(repr(o) for o in options)}]"], tmp_path, resolve=True)
    [written] = predict_script.predict(cfg)
    assert set(body["options"]) == set(options)
    for option in options:  # JSON carries floats exactly (repr round-trips)
        assert body["options"][option] == written["options"][option]
    assert sum(score["prob"] for score in body["options"].values()) == pytest.approx(1.0, abs=1e-9)


def test_model_and_health_describe_the_served_weights(served, tiny_ecg_run):
    url, _ = served
    run, _ = tiny_ecg_run
    card = httpx.get(f"{url}/v1/model").json()
    assert card["checkpoint_sha256"] == hashlib.sha256(find_checkpoint(run).read_bytes()).hexdigest()
    assert card["trained_questions"] == [f"<ecg>\n{QUESTION}"]
    assert list(card["modalities"]) == ["ecg"] and card["modalities"]["ecg"]["tag"] == "<ecg>"
    assert card["answer_classes"] == sorted(load(run).config["answer_classes"])
    health = httpx.get(f"{url}/v1/health").json()
    assert health["status"] == "ok" and health["model"] == "run"
    schema = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/answer", "/v1/health", "/v1/model"} <= set(schema["paths"])


def malformed_uploads(record: Path, seed: int = 0) -> list[tuple[str, list[tuple[str, bytes]], str]]:
    """``(what, files, request field)`` for over 100 bad requests, each wrong in one way, from a good record."""
    rng = random.Random(seed)
    header, signal = record_files(record)
    good = json.dumps({"question": QUESTION})
    cases: list[tuple[str, list[tuple[str, bytes]], str]] = []
    for k in range(30):  # the signal file cut short at random places (a record ends early)
        cut = rng.randrange(0, len(signal[1]) - 1)
        cases.append((f"truncated .dat at {cut}", [header, (signal[0], signal[1][:cut])], good))
    for k in range(20):  # the header cut short or garbled
        text = header[1].decode()
        cut = rng.randrange(1, len(text) - 1)
        cases.append((f"truncated .hea at {cut}", [(header[0], text[:cut].encode()), signal], good))
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        cases.append((f"random .hea {k}", [(header[0], noise), signal], good))
    for suffix in (".dcm", ".png", ".jpg", ".zip", ".dat", ".txt", ".hea"):  # random bytes under each name
        for k in range(3):
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
            cases.append((f"random {suffix} {k}", [(f"upload{k}{suffix}", noise)], good))
    cases += [
        ("header alone", [header], good),
        ("signal alone", [signal], good),
        ("no files at all", [], good),
        ("empty question", [header, signal], json.dumps({"question": "   "})),
        ("no question key", [header, signal], json.dumps({"options": ["a"]})),
        ("request not JSON", [header, signal], "What rhythm?"),
        ("request JSON list", [header, signal], "[1, 2]"),
        ("options not a list", [header, signal], json.dumps({"question": QUESTION, "options": 3})),
        ("path in a file name", [("../../etc/" + header[0], header[1]), signal], good),
        ("same file twice", [header, signal, signal], good),
        ("empty signal file", [header, (signal[0], b"")], good),
        ("too many files", [(f"f{k}.dcm", b"x") for k in range(17)], good),
        ("zip bomb", [("bomb.zip", _zip_of([("zeros.dcm", b"\0" * (65 * 2**20))]))], good),
        ("zip in a zip", [("outer.zip", _zip_of([("inner.zip", _zip_of([header, signal]))]))], good),
    ]
    return cases


def _zip_of(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def test_malformed_uploads_get_a_4xx_naming_the_problem_and_the_server_keeps_answering(served, records, predicted,
                                                                                        tmp_path):
    url, server = served
    cases = malformed_uploads(records[0])
    # Leads the model cannot use: a 3-lead record written by wfdb (its lead names are not the 12 it was trained on).
    wfdb.wrsamp("odd", fs=100, units=["mV"] * 3, sig_name=["X", "Y", "Z"], fmt=["16"] * 3,
                p_signal=np.zeros((1000, 3)), write_dir=str(tmp_path))
    cases.append(("unknown leads", record_files(tmp_path / "odd"), json.dumps({"question": QUESTION})))
    assert len(cases) > 100
    statuses = {}
    for what, files, request in cases:
        response = post(url, files, request)
        statuses[what] = response.status_code
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text)
        detail = response.json()["detail"]
        assert detail, what
        assert str(server.private_dir) not in json.dumps(detail), what  # messages name uploads, not server paths
    assert statuses["zip bomb"] == 413 and statuses["too many files"] == 413
    assert statuses["header alone"] == 400 and statuses["empty question"] == 400
    response = post(url, record_files(records[0]), {"question": QUESTION})
    assert response.status_code == 200 and response.json()["answer"] == predicted[records[0]]


def test_a_body_over_the_limit_is_refused_before_it_is_read(served):
    url, _ = served
    big = ("big.dcm", b"\0" * (64 * 2**20 + 2 * 2**20))
    response = post(url, [big], {"question": QUESTION})
    assert response.status_code == 413 and "upload limit" in response.json()["detail"]


def test_32_concurrent_questions_are_batched_and_all_answered_correctly(served, records, predicted):
    url, server = served
    before = dict(server.service.queue.batch_sizes)
    jobs = [records[k % len(records)] for k in range(32)]
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda record: post(url, record_files(record), {"question": QUESTION}), jobs))
    assert [r.status_code for r in responses] == [200] * 32
    assert [r.json()["answer"] for r in responses] == [predicted[record] for record in jobs]
    after = server.service.queue.batch_sizes
    new = {size: after[size] - before.get(size, 0) for size in after if after[size] > before.get(size, 0)}
    assert sum(size * count for size, count in new.items()) == 32
    assert max(new) > 1  # questions that arrived together shared a forward pass


def test_no_upload_stays_on_disk(served, records):
    url, server = served
    post(url, record_files(records[0]), {"question": QUESTION, "picture": True})
    post(url, [record_files(records[0])[0]], {"question": QUESTION})  # refused
    left = [p for p in server.private_dir.rglob("*") if p.is_file()]
    assert left == []


def test_dicom_header_identifiers_never_leave_the_server(served, tmp_path, caplog, capfd):
    url, _ = served
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "ecg.dcm")
    broken = pydicom.dcmread(tmp_path / "ecg.dcm")
    del broken.WaveformSequence  # a DICOM ECG without its waveform
    broken.save_as(tmp_path / "no_waveform.dcm")
    with caplog.at_level(logging.DEBUG):
        answered = post(url, [("ecg.dcm", (tmp_path / "ecg.dcm").read_bytes())], {"question": QUESTION, "picture": True})
        refused = post(url, [("ecg.dcm", (tmp_path / "no_waveform.dcm").read_bytes())], {"question": QUESTION})
    assert answered.status_code == 200, answered.text
    assert refused.status_code == 422, refused.text
    assert found_in_text(answered.text) == [] and found_in_text(refused.text) == []
    [picture] = answered.json()["pictures"]
    (tmp_path / "picture.png").write_bytes(base64.b64decode(picture))
    assert not [needle for blob in contents(tmp_path / "picture.png") for needle in PLANTED.values()
                if needle.encode() in blob]
    logged = caplog.text + "".join(capfd.readouterr())
    assert found_in_text(logged) == []


def test_one_patients_ecg_and_chest_film_are_answered_together(tmp_path):
    """The committed two-modality model (tests/data/mmmed_flat_layout): its ECG and film in one request score the
    options as that model scored them when it was saved, and answer as predict.py does."""
    flat = Path(__file__).resolve().parent / "data" / "mmmed_flat_layout"
    expected = json.loads((flat / "expected.json").read_text())
    ckpt = flat / "patient_tiny.ckpt"
    predictor = load(ckpt)
    cfg = compose_app("serve", [f"ckpt={ckpt}", f"private_dir={tmp_path}"], tmp_path / "hydra", resolve=True)
    files = [(name, (flat / name).read_bytes()) for name in ("ecg.hea", "ecg.dat", "cxr.dcm")]
    with live_server(cfg, predictor) as (url, _):
        card = httpx.get(f"{url}/v1/model").json()
        body = post(url, files, {"question": expected["question"], "options": expected["options"]}).json()
        alone = post(url, files, {"question": expected["question"]}).json()
    assert list(card["modalities"]) == ["ecg", "xray"]
    for option in expected["options"]:  # the saved model's own log-likelihoods; 1e-5 as in tests/mmmed/infer/test_legacy.py
        assert body["options"][option]["logprob"] == pytest.approx(expected["logprobs"][option], abs=1e-5)
    record = "|".join(str(flat / name) for name in expected["files"])
    assert alone["answer"] == predictor.predict_files([expected["question"]], [record])[0]["answer"]
