"""The repo's top-level datasets/ and encoders/ folders must never shadow Hugging Face's ``datasets``.

They are importable only as ``mmmed_datasets`` / ``mmmed_encoders`` (package-dir mapping in
pyproject.toml) and deliberately have no ``__init__.py``: a namespace portion loses to a regular
package found anywhere on sys.path, so ``import datasets`` from the repo root still finds the library.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter with cwd = repo root (so '' / cwd is first on sys.path)."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"subprocess failed:\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout.strip().splitlines()


def test_import_datasets_from_repo_root_is_hugging_face():
    lines = _run(
        "import datasets, sys; print(datasets.__file__); "
        "print(hasattr(datasets, 'Dataset'), hasattr(datasets, 'load_dataset'))"
    )
    assert len(lines) == 2, lines
    file, attrs = lines
    assert file != "None", "`import datasets` resolved to a namespace package (the repo's folder?)"
    path = Path(file).resolve()
    assert "site-packages" in path.parts, f"datasets imported from {path}, expected site-packages"
    assert path == (Path(sysconfig.get_paths()["purelib"]) / "datasets" / "__init__.py").resolve()
    assert REPO / "datasets" not in path.parents and path.parent != REPO / "datasets"
    assert attrs == "True True"


def test_mmmed_datasets_resolves_to_repo_folder():
    lines = _run(
        "import mmmed_datasets.ecg.ptbxl as p, mmmed_encoders.ecg_cnn as e; print(p.__file__); print(e.__file__)"
    )
    assert [Path(line).resolve() for line in lines] == [
        (REPO / "datasets" / "ecg" / "ptbxl.py").resolve(),
        (REPO / "encoders" / "ecg_cnn.py").resolve(),
    ]


def test_top_level_folders_have_no_init():
    for folder in ("datasets", "encoders"):
        assert (REPO / folder).is_dir()
        assert not (REPO / folder / "__init__.py").exists(), f"{folder}/__init__.py would shadow/alter imports"
    # tests/datasets must not become a package either: with pytest's rootdir-less "prepend" import mode
    # it would be importable as `datasets` and shadow Hugging Face's library inside the test process.
    assert not (REPO / "tests" / "datasets" / "__init__.py").exists()
