"""predict.py's manifest reading and argument checks (no model needed)."""

from __future__ import annotations

import pytest

import predict as predict_script
from tests.conftest import compose_app


def test_manifest_paths_are_relative_to_the_csv_and_options_split_at_bars(tmp_path):
    manifest = tmp_path / "q.csv"
    manifest.write_text('input,question,options,reference\n'
                        'records/001,"<ecg>\nWhat rhythm?",Sinus rhythm.| Sinus bradycardia. ,Sinus rhythm.\n'
                        '/abs/film.dcm,"<xray>\nAny finding?",,\n')
    rows = predict_script.read_manifest(manifest)
    assert rows == [
        {"input": str(tmp_path / "records" / "001"), "question": "<ecg>\nWhat rhythm?",
         "options": ["Sinus rhythm.", "Sinus bradycardia."], "reference": "Sinus rhythm."},
        {"input": "/abs/film.dcm", "question": "<xray>\nAny finding?", "options": None, "reference": None},
    ]


@pytest.mark.parametrize("text, message", [
    ("path,question\nx,q\n", r"lacks column\(s\) \['input'\]"),
    ("input,question\nx,\n", "line 2: empty input or question"),
    ("input,question\n", "has no rows"),
])
def test_bad_manifests_name_the_file_and_the_problem(tmp_path, text, message):
    manifest = tmp_path / "bad.csv"
    manifest.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        predict_script.read_manifest(manifest)
    assert str(manifest) in str(error.value)


def test_exactly_one_of_input_and_manifest(tmp_path):
    for overrides in ([], ["input=a", "manifest=b.csv"]):
        cfg = compose_app("predict", ["ckpt=unused", *overrides], tmp_path, resolve=True)
        with pytest.raises(ValueError, match="exactly one of input"):
            predict_script.predict(cfg)
