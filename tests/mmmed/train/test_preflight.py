"""mmmed/train/preflight.py: bad settings fail at once, naming the setting, before any LLM or data is built."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as eval_script
import predict as predict_script
from mmmed.train.preflight import check_plugin_settings, run_checks, ConfigError, check_train_config
from tests.conftest import REPO, compose_app

CONF = REPO / "conf"
XRAY_DATA = {"mimic_cxr", "mimic_cxr_demo", "chexpert", "xray_manifest"}


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def problems_of(cfg) -> list[str]:
    """The problems check_train_config reports, then the modality plugins' own (build_run runs those before the
    LLM loads: they import the plugins); empty when both pass."""
    for check in (check_train_config, lambda c: run_checks(c, (check_plugin_settings,))):
        try:
            check(cfg)
        except ConfigError as err:
            assert str(err).startswith(f"{len(err.problems)} config problem(s)")
            assert all(f"  - {p}" in str(err) for p in err.problems)  # the message lists every problem
            return err.problems
    return []


# ------------------------------------------------------------------------------- good configs pass


@pytest.mark.parametrize("data", names("data"))
def test_every_data_config_with_an_existing_root_passes(compose, data, tmp_path):
    modalities = "[ecg,xray]" if data.startswith("patient_") else "[xray]" if data in XRAY_DATA else "[ecg]"
    extra = [f"data.dataset.ptbxl_root={tmp_path}"] if data == "ecg_qa" else []  # ECG-QA names two folders
    cfg = compose([f"modality={modalities}", f"data={data}", f"data.root={tmp_path}", *extra], tmp_path / "run")
    assert problems_of(cfg) == []


@pytest.mark.parametrize("overrides", [
    [],                                                   # the README's default demo
    *[[f"experiment={name}"] for name in names("experiment")],
    *[[f"model={name}"] for name in names("model")],
    *[[f"adapter={name}"] for name in names("adapter")],
    *[[f"ecg_signal={name}"] for name in names("ecg_signal")],
    ["stage=instruct"],
    ["stage=full", "model.llm.dtype=float32"],            # conf/stage/full.yaml's documented setting
    ["debug=fast"],
    ["data=ecg_qa_demo"],
    ["trainer.max_steps=-1", "trainer.max_epochs=2"],     # epochs instead of steps
    ["trainer.val_check_interval=0.5"],                   # a fraction of an epoch
    ["data.dataset.question='What rhythm does this ECG show?'"],  # untagged: the ECG goes first (mmmed/model/prompts.py)
    ["data=ecg_qa_demo", "data.dataset.single_template='{question}'", "data.dataset.comparison_template='Compare: {question}'"],
])
def test_shipped_configs_pass(compose, overrides, tmp_path):
    assert problems_of(compose(overrides, tmp_path / "run")) == []


def test_a_demo_root_that_does_not_exist_yet_passes(compose, tmp_path):
    """Demo data configs generate their folder on first use (data.prepare), so a missing root is fine."""
    for encoder in ("ecg", "xray"):
        cfg = compose([f"encoder={encoder}", f"data.root={tmp_path / 'not-yet'}"], tmp_path / "run")
        assert cfg.data.prepare is not None
        assert problems_of(cfg) == []


# --------------------------------------------------------------------------- each bad setting named

MISSING = "/nonexistent/mmmed-preflight"

BAD = {  # id: (overrides, the one problem's exact beginning)
    "data_root_unset": (["data=ptbxl"], "data.root is not set: point it at the data set's folder"),
    "data_root_missing": (["data=ptbxl", f"data.root={MISSING}"], f"data.root={MISSING}: no such file or folder."),
    "xray_root_missing": (["encoder=xray", "data=chexpert", f"data.root={MISSING}"],
                          f"data.root={MISSING}: no such file or folder."),
    "ecg_qa_ptbxl_root_unset": (["data=ecg_qa", "data.root=."], "data.dataset.ptbxl_root is not set"),
    "in_leads": (["modalities.ecg.net.in_leads=8"],
                 "modalities.ecg.net.in_leads=8 but ecg_signal.preprocessing.leads lists 12 leads"),
    "leads_list": (["ecg_signal.preprocessing.leads=[I,II,V1]"],
                   "modalities.ecg.net.in_leads=12 but ecg_signal.preprocessing.leads lists 3 leads (I, II, V1): "
                   "set modalities.ecg.net.in_leads=3"),
    "xray_tag_for_ecg": (["data.dataset.question='<xray> What rhythm does this ECG show?'"],
                         "data.dataset.question='<xray> What rhythm does this ECG show?' has tag(s) <xray> but "
                         "the run reads <ecg>"),
    "ecg_question_for_xray": (["encoder=xray", "data=ptbxl", "data.root=."],
                              "data.dataset.question='<ecg>\\nWhat rhythm does this ECG show?' has tag(s) <ecg> but "
                              "the run reads <xray>"),
    "modality_misnamed": (["modalities.ecg.name=heart"], "modalities.ecg.name='heart': must be 'ecg'"),
    "ecg_qa_template": (["data=ecg_qa_demo", "data.dataset.comparison_template='<xray> <ecg> {question}'"],
                        "data.dataset.comparison_template='<xray> <ecg> {question}' has tag(s) <xray> but"),
    "full_stage_bf16": (["stage=full"], "model.llm.dtype=bfloat16 with stage=full: this stage trains the LLM's own weights"),
    "batch_size_zero": (["data.batch_size=0"], "data.batch_size=0: must be an integer >= 1"),
    "batch_size_negative": (["data.batch_size=-4"], "data.batch_size=-4: must be an integer >= 1"),
    "eval_batch_size": (["data.eval_batch_size=0"], "data.eval_batch_size=0: must be an integer >= 1"),
    "max_length": (["data.max_length=0"], "data.max_length=0: must be an integer >= 1"),
    "max_steps_zero": (["trainer.max_steps=0"], "trainer.max_steps=0: must be an integer >= 1"),
    "max_steps_never_stops": (["trainer.max_steps=-1"], "trainer.max_steps=-1 with trainer.max_epochs=-1 never stops"),
    "lr_zero": (["param_groups.adapter.lr=0"], "param_groups.adapter.lr=0: must be a number > 0"),
    "lr_negative": (["param_groups.encoder.lr=-1e-3"], "param_groups.encoder.lr=-0.001: must be a number > 0"),
    "weight_decay": (["param_groups.adapter.weight_decay=-0.1"], "param_groups.adapter.weight_decay=-0.1: must be"),
    "ckpt_path": ([f"ckpt_path={MISSING}/last.ckpt"], f"ckpt_path={MISSING}/last.ckpt: no such file or folder."),
    "init_from": (["stage=instruct", f"init_from={MISSING}/last.ckpt"],
                  f"init_from={MISSING}/last.ckpt: no such file or folder."),
    "resume_corrupt": (["resume_corrupt=maybe"], "resume_corrupt='maybe': must be error or previous"),
    "num_workers": (["data.num_workers=-1"], "data.num_workers=-1: must be an integer >= 0"),
    "val_check_interval_zero": (["trainer.val_check_interval=0"], "trainer.val_check_interval=0: must be an integer >= 1"),
    "val_check_interval_negative": (["trainer.val_check_interval=-5"], "trainer.val_check_interval=-5: must be"),
    "val_check_interval_over_one": (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5: must be"),
    "accumulate": (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
    "devices": (["trainer.devices=0"], "trainer.devices=0: must be >= 1"),
}


@pytest.mark.parametrize("overrides, beginning", list(BAD.values()), ids=list(BAD))
def test_each_bad_setting_is_one_problem_that_names_it(compose, overrides, beginning, tmp_path):
    problems = problems_of(compose(overrides, tmp_path / "run"))
    assert len(problems) == 1, problems
    assert problems[0].startswith(beginning), problems[0]


def test_both_ckpt_path_and_init_from_is_refused(compose, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    torch.save({}, ckpt)  # an existing file: only the combination is wrong
    problems = problems_of(compose([f"ckpt_path={ckpt}", f"init_from={ckpt}"], tmp_path / "run"))
    assert problems == ["ckpt_path and init_from are both set: init_from starts a new stage from trained weights, "
                        "ckpt_path resumes a run. Choose one."]


def test_a_missing_ckpt_path_passes_when_resume_corrupt_may_take_another(compose, tmp_path):
    """resume_corrupt=previous resumes from the newest valid checkpoint beside a missing one (mmmed/train/checkpoint_io.py)."""
    missing = tmp_path / "checkpoints" / "step00004.ckpt"
    missing.parent.mkdir()
    assert problems_of(compose([f"ckpt_path={missing}", "resume_corrupt=previous"], tmp_path / "run")) == []
    assert problems_of(compose([f"ckpt_path={missing}"], tmp_path / "run"))[0].startswith(f"ckpt_path={missing}: no such")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_gpu_settings_are_refused_where_no_gpu_is(compose, tmp_path):
    assert problems_of(compose(["trainer=gpu"], tmp_path / "run")) == [
        "trainer.accelerator=gpu: no CUDA GPU is visible on this machine. Use trainer=default (CPU here) or run "
        "where a GPU is."]
    problems = problems_of(compose(["stage=instruct", "stage.lora.quantize_4bit=true"], tmp_path / "run2"))
    assert len(problems) == 1 and problems[0].startswith("stage.lora.quantize_4bit=true (QLoRA) needs a CUDA GPU")


def test_every_problem_is_listed_not_just_the_first(compose, tmp_path):
    cfg = compose(["data.batch_size=0", "trainer.max_steps=0", "param_groups.lora.lr=-1", f"ckpt_path={MISSING}"],
                  tmp_path / "run")
    problems = problems_of(cfg)
    assert [p.split("=")[0] for p in problems] == ["data.batch_size", "trainer.max_steps", "param_groups.lora.lr",
                                                   "ckpt_path"]


# ------------------------------------------------------------------------ before the LLM, in train()


def test_train_refuses_a_bad_config_before_the_llm_loads(compose, tmp_path, monkeypatch):
    from train import train

    reached = []

    def refuse(*args, **kwargs):
        reached.append(args)
        raise AssertionError("the LLM loader was reached")

    # build_run instantiates model.llm._target_ (mmmed.model.llm.load_llm / random_llm) through Hydra, which
    # looks the name up in the module: replacing it there catches every load.
    monkeypatch.setattr("mmmed.model.llm.load_llm", refuse)
    monkeypatch.setattr("mmmed.model.llm.random_llm", refuse)
    for overrides in (["modalities.ecg.net.in_leads=8"], ["model=tiny", "trainer.max_steps=0"], ["stage=full"]):
        with pytest.raises(ConfigError) as error:
            train(compose(overrides, tmp_path / "run"))
        assert overrides[-1].split("=")[0] in str(error.value)
    assert reached == []
    assert not (tmp_path / "run").exists()  # nothing was written either (no logger, no checkpoint folder)


def test_build_run_keeps_the_stage_checks_for_callers_without_train(compose, tmp_path, monkeypatch):
    """bench/ and tests call build_run directly: the fp32 rule for stage=full still holds there."""
    from mmmed.train.build import build_run

    monkeypatch.setattr("mmmed.model.llm.load_llm", lambda *a, **k: pytest.fail("the LLM loader was reached"))
    with pytest.raises(ConfigError, match="model.llm.dtype=bfloat16 with stage=full"):
        build_run(compose(["stage=full"], tmp_path / "run"))


# --------------------------------------------------------------------------------- eval, predict


def test_eval_names_a_missing_checkpoint_and_a_bad_split(tmp_path):
    cfg = compose_app("eval", [f"ckpt={MISSING}", "split=dev", "logger=csv"], tmp_path / "eval", resolve=False)
    with pytest.raises(ConfigError) as error:
        eval_script.evaluate(cfg)
    assert error.value.problems == [
        f"ckpt={MISSING}: no such file or folder. Give a training run folder, a .ckpt file or an exported folder.",
        "split='dev': split must be one of train, val, test.",
    ]


def test_eval_checks_a_named_data_config(tmp_path):
    cfg = compose_app("eval", [f"ckpt={tmp_path}", "data=ptbxl", f"data.root={MISSING}", "data.eval_batch_size=0",
                               "logger=csv"], tmp_path / "eval", resolve=False)
    with pytest.raises(ConfigError) as error:
        eval_script.evaluate(cfg)
    assert [p.split(":")[0] for p in error.value.problems] == [f"data.root={MISSING}", "data.eval_batch_size=0"]


def test_predict_names_missing_files_and_bad_numbers(tmp_path):
    cfg = compose_app("predict", [f"ckpt={tmp_path}", f"input={MISSING}/00001_lr", "batch_size=0",
                                  "generation.do_sample=true", "generation.temperature=0"], tmp_path / "p", resolve=True)
    with pytest.raises(ConfigError) as error:
        predict_script.predict(cfg)
    assert [p.split(":")[0] for p in error.value.problems] == [
        f"input={MISSING}/00001_lr", "batch_size=0", "generation.temperature=0"]


def test_predict_accepts_a_wfdb_record_named_without_its_suffix(tmp_path):
    import numpy as np
    import wfdb

    from mmmed.train.preflight import check_predict_config

    signal = np.zeros((100, 2))  # (T, leads): only the files' existence matters here
    wfdb.wrsamp("rec", fs=100, units=["mV"] * 2, sig_name=["I", "II"], p_signal=signal, fmt=["16"] * 2,
                adc_gain=[1000.0] * 2, baseline=[0] * 2, write_dir=str(tmp_path))
    cfg = compose_app("predict", [f"ckpt={tmp_path}", f"input={tmp_path / 'rec'}"], tmp_path / "p", resolve=True)
    check_predict_config(cfg)  # no error: rec.hea is the record


# ------------------------------------------------------------------------------ from the command line


def run_train(*overrides: str, run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_command_line_bad_setting_exits_with_the_message(tmp_path):
    proc = run_train("trainer.max_steps=0", "data.batch_size=0", run_dir=tmp_path / "run")
    assert proc.returncode != 0
    assert "2 config problem(s), found before anything was built" in proc.stderr
    assert "trainer.max_steps=0: must be an integer >= 1" in proc.stderr
    assert "data.batch_size=0: must be an integer >= 1" in proc.stderr
    assert "LLM:" not in proc.stdout + proc.stderr  # build_run logs "LLM: <target>" first: it never ran


def test_command_line_unknown_group_option_gets_hydras_list(tmp_path):
    proc = run_train("encoder=nope", run_dir=tmp_path / "run")
    assert proc.returncode != 0
    assert "Could not find 'encoder/nope'" in proc.stderr
    assert "Available options in 'encoder':\n\tecg\n\txray" in proc.stderr


def test_a_bad_setting_is_refused_before_the_heavy_libraries_are_imported(compose, tmp_path):
    """The command line answers a bad setting in about a second (2.7 s measured on the busy 2-core machine,
    against 16-24 s while train.py imported Lightning first): the check needs neither torch nor Lightning."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "import train\n"
        "from mmmed.train.preflight import ConfigError\n"
        f"with initialize_config_dir(config_dir={str(REPO / 'conf')!r}, version_base='1.3'):\n"
        "    cfg = compose('train', overrides=['trainer.max_steps=0'])\n"
        "try:\n"
        "    train.train(cfg)\n"
        "except ConfigError as err:\n"
        "    print('refused:', 'trainer.max_steps=0' in str(err))\n"
        "print('loaded:', sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["refused: True", "loaded: []"], proc.stdout
