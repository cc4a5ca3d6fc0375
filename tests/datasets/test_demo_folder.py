"""build_once: write a demo set once, atomically; refuse other settings; replace an older generator's set."""

from __future__ import annotations

import json

import pytest

from mmmed_datasets.demo_folder import MANIFEST, build_once


def writer(text: str, calls: list):
    def write(folder):
        calls.append(folder)
        (folder / "data.txt").write_text(text)
    return write


def test_writes_once_then_reuses(tmp_path):
    calls = []
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("a", calls))
    assert (root / "data.txt").read_text() == "a" and json.loads((root / MANIFEST).read_text()) == {"seed": 0, "version": 1}
    assert build_once(root, {"seed": 0, "version": 1}, writer("b", calls)) == root
    assert len(calls) == 1 and (root / "data.txt").read_text() == "a"


def test_an_older_generator_version_is_regenerated_in_place(tmp_path):
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("old", []))
    (root / "stale-only-in-v1.txt").write_text("x")
    build_once(root, {"seed": 0, "version": 2}, writer("new", []))
    assert sorted(p.name for p in root.iterdir()) == sorted([MANIFEST, "data.txt"])
    assert (root / "data.txt").read_text() == "new" and json.loads((root / MANIFEST).read_text())["version"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no temporary or old folder left


def test_other_settings_are_refused_and_a_failed_rebuild_keeps_the_old_set(tmp_path):
    root = build_once(tmp_path / "demo", {"seed": 0, "version": 1}, writer("old", []))
    with pytest.raises(ValueError, match="was generated with"):
        build_once(root, {"seed": 1, "version": 1}, writer("x", []))

    def broken(folder):
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        build_once(root, {"seed": 0, "version": 2}, broken)
    assert (root / "data.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
