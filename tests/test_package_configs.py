"""conf/ travels with the package: a wheel built from this checkout, installed into a fresh venv, composes
train.yaml from a directory outside the repo, through the installed ``mmmed_conf`` package alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600  # one step on the busy 2-core machine; each normally takes seconds


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` in its own session (none of its signals reach pytest); its stdout, or fail with its output."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                          start_new_session=True, check=False)
    assert done.returncode == 0, f"{cmd} failed:\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """This environment without anything that would put the checkout on a child's sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    return {**env, "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def _copy_sources(dest: Path) -> None:
    """The files a wheel is built from (pyproject.toml's package folders), so the build writes nothing here."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


class Venv(NamedTuple):
    python: Path
    site: Path  # its site-packages


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Venv:
    """A fresh venv holding only the wheel (third-party libraries seen from our venv)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist, venv = tmp / "src", tmp / "dist", tmp / "venv"
    src.mkdir()
    _copy_sources(src)
    # A user's git-ignored cluster settings sit in conf/local/ of a checkout: they must stay out of the wheel.
    (src / "conf" / "local" / "default.yaml").write_text("slurm: {partition: the-builders-own}\n")
    # No build isolation: it would fetch setuptools from an index; this venv's setuptools builds offline.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(dist), str(src)], cwd=tmp, env=_clean_env())
    (wheel,) = dist.glob("mmmed-*.whl")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=_clean_env())
    python = venv / "bin" / "python"
    # Installed while the venv sees nothing but the stdlib, so pip cannot mistake our editable mmmed for it.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
         cwd=tmp, env=_clean_env())
    # Then torch, hydra, ... from our venv: a .pth line adds its site-packages to sys.path without running the
    # .pth files inside it, so the editable install's finder (which maps mmmed* to this checkout) stays out.
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp, env=_clean_env()).strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "mmmed_test_third_party.pth").write_text("".join(f"{path}\n" for path in ours))
    return Venv(python, site)


COMPOSE = """
import json
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
import mmmed, mmmed_conf, mmmed.cluster.search_space
from mmmed.config_dir import config_dir

found = {"files": [mmmed.__file__, mmmed_conf.__file__, str(config_dir()), str(mmmed.cluster.search_space.SWEEPS)],
         "sweeps": sorted(p.name for p in mmmed.cluster.search_space.SWEEPS.glob("*.yaml"))}
with initialize_config_module(config_module="mmmed_conf", version_base="1.3"):
    for name, overrides in [("default", []), ("xray", ["encoder=xray"]),
                            ("mine", ["hydra.searchpath=[file://" + MINE + "]"])]:
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        found[name] = {"main": [f"{s.schema}://{s.path}" for s in cfg.hydra.runtime.config_sources if s.provider == "main"],
                       "seed": cfg.seed, "llm": cfg.model.llm.hub_id, "system": cfg.prompt.system,
                       "prepare": cfg.data.prepare._target_, "slurm": OmegaConf.select(cfg, "local.slurm.partition")}
print(json.dumps(found))
"""


def test_installed_wheel_composes_train_yaml_from_another_directory(wheel_venv, tmp_path):
    elsewhere, mine = tmp_path / "elsewhere", tmp_path / "my_conf"
    elsewhere.mkdir()
    (mine / "local").mkdir(parents=True)  # where a wheel user keeps conf/local's settings
    (mine / "local" / "default.yaml").write_text("slurm: {partition: from-my-folder}\n")
    code = f"MINE = {str(mine)!r}\n{COMPOSE}"
    found = json.loads(_run([str(wheel_venv.python), "-c", code], cwd=elsewhere, env=_clean_env()))

    site = wheel_venv.site  # the wheel's copy is imported, not this checkout
    assert found["files"] == [str(site / "mmmed" / "__init__.py"), str(site / "mmmed_conf" / "__init__.py"),
                              str(site / "mmmed_conf"), str(site / "mmmed_conf" / "sweep")]
    assert found["sweeps"] == sorted(p.name for p in (REPO / "conf" / "sweep").glob("*.yaml"))
    ecg = {"main": ["pkg://mmmed_conf"], "seed": 1234, "llm": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "system": "You are a cardiology assistant. Answer briefly.",
           "prepare": "mmmed_datasets.demo.ecg_demo.ensure_demo_ptbxl", "slurm": None}
    assert found["default"] == ecg  # the builder's conf/local/default.yaml did not travel
    assert found["xray"] == {**ecg, "system": "You are a radiology assistant. Answer briefly.",
                             "prepare": "mmmed_datasets.demo.xray_demo.ensure_demo_mimic_cxr"}
    assert found["mine"] == {**ecg, "slurm": "from-my-folder"}


@pytest.mark.slow  # imports torch and transformers and builds nano on the meta device: 6-13 s
def test_installed_wheel_runs_the_planner_from_another_directory(wheel_venv, tmp_path):
    # python -m mmmed.cluster.plan composes train.yaml itself (mmmed/config_dir.py), as a wheel user would run it.
    out = _run([str(wheel_venv.python), "-m", "mmmed.cluster.plan", "model=nano"], cwd=tmp_path, env=_clean_env())
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["all"]]
    assert rows == [["all", "135,577,216", "1,062,208", "134,515,008"]]  # conf/model/nano.yaml's header figures


def test_wheel_ships_every_yaml_of_conf(wheel_venv):
    installed = wheel_venv.site / "mmmed_conf"
    shipped = {str(p.relative_to(installed)) for p in installed.rglob("*") if p.is_file() and p.suffix != ".pyc"}
    in_repo = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    local = {p for p in in_repo if p.startswith("local/")}  # git-ignored: a user's own settings
    assert shipped == (in_repo - local) | {"__init__.py", "local/default.yaml.example"}


def test_checkout_finds_its_own_conf_from_another_directory(tmp_path):
    code = "from mmmed.config_dir import config_dir; print(config_dir())"
    assert _run([sys.executable, "-c", code], cwd=tmp_path, env=_clean_env()).strip() == str(REPO / "conf")


def test_no_installed_distribution_has_a_top_level_conf():
    # conf/__init__.py makes `import conf` from the repo root find the config package; nothing real is hidden.
    assert "conf" not in packages_distributions()


def test_wheel_ships_every_package_of_mmmed(wheel_venv):
    """pyproject lists packages by hand: a new subpackage left out would be missing from every install but this one."""
    installed = wheel_venv.site / "mmmed"
    shipped = {str(p.parent.relative_to(installed)) for p in installed.rglob("__init__.py")}
    in_repo = {str(p.parent.relative_to(REPO / "mmmed")) for p in (REPO / "mmmed").rglob("__init__.py")}
    assert shipped == in_repo and "selftrain" in in_repo
