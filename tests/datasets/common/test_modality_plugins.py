"""The ECG and X-ray modality plugins on real files: what each claims, reads, opens, draws and keeps.

Files: WFDB records written with wfdb, pydicom's real 12-lead ECG waveform and CT image, DX radiographs
written by the X-ray demo's DICOM builder, a PNG. Reads are compared, exactly, with the pipeline called
directly; every conf/modality/*.yaml is composed and built.
"""

from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import wfdb
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from pydicom.data import get_testdata_file

from mmmed_datasets.ecg.ecg_cache import ECGSignalCache
from mmmed_datasets.ecg.ecg_modality import ECGModality
from mmmed_datasets.ecg.ecg_preprocess import ECGPreprocessing
from mmmed_datasets.ecg.ecg_samples import ECGSample, ECGSampleDataset
from mmmed_datasets.ecg.ecg_signal import CANONICAL_LEADS, ECGRecordError, zscore
from mmmed_datasets.demo.xray_demo import ENCODINGS, build_dicom, encode_display
from mmmed_datasets.xray.xray_image import ImageReadError, letterbox, read_radiograph
from mmmed_datasets.xray.xray_modality import XrayModality

REPO = Path(__file__).resolve().parents[3]
DICOM_ECG = Path(get_testdata_file("waveform_ecg.dcm"))  # 12 leads, 10 s at 1000 Hz
CT_IMAGE = Path(get_testdata_file("CT_small.dcm"))  # a DICOM image that is no radiograph
RT_PLAN = Path(get_testdata_file("rtplan.dcm"))  # a DICOM object that is neither an image nor a waveform
FS = 100
ECG_NET = {"_target_": "mmmed_encoders.ecg_cnn.ECGCNNEncoder", "in_leads": 12, "widths": [8], "kernel_size": 3,
           "num_tokens": 2, "lead_mask_input": True}
XRAY_NET = {"_target_": "mmmed_encoders.xray_vit.XrayViTEncoder", "model_name": "vit_tiny_patch16_224",
            "pretrained": False, "img_size": 32, "num_tokens": 4, "model_kwargs": {"depth": 1}}
PERCENTILE = {"size": 32, "apply_voi": True, "no_window": "percentile", "percentiles": [0.5, 99.5]}


def pipeline_kwargs(**overrides) -> dict:
    """12 leads at 100 Hz, 2 s windows, two evaluation windows per record, z-scored per window."""
    settings = dict(leads=list(CANONICAL_LEADS), lead_aliases={"MLII": "II"}, min_real_leads=1, sampling_rate=FS,
                    seconds=2, missing_leads="zero", nan_policy="interpolate", short_records="error", bandpass=None,
                    filter_order=4, notch=None, notch_quality=30, normalize="record", eval_crop="multi", eval_crops=2)
    return {**settings, **overrides}


def ecg_plugin(cache_dir: Path | None = None, **overrides) -> ECGModality:
    """As Hydra builds it with _recursive_: false: the pipeline and cache arrive as nodes."""
    cache = None if cache_dir is None else {"_target_": "mmmed_datasets.ecg.ecg_cache.ECGSignalCache",
                                            "cache_dir": str(cache_dir), "workers": 0}
    preprocessing = OmegaConf.create({"_target_": "mmmed_datasets.ecg.ecg_preprocess.ECGPreprocessing",
                                      **pipeline_kwargs(**overrides)})
    return ECGModality("ecg", "A 12-lead ECG.", True, OmegaConf.create(ECG_NET), preprocessing, cache)


def xray_plugin(cache_dir: Path | None = None, **images) -> XrayModality:
    return XrayModality("xray", "A chest radiograph.", False, XRAY_NET, {**PERCENTILE, **images},
                        None if cache_dir is None else str(cache_dir), 1)


def write_wfdb(path: Path, samples: int, seed: int, names=CANONICAL_LEADS) -> str:
    rng = np.random.default_rng(seed)
    signal = rng.normal(0, 0.5, size=(samples, len(names))) + np.arange(len(names)) * 0.25  # (T, C) mV
    wfdb.wrsamp(path.name, fs=FS, units=["mV"] * len(names), sig_name=list(names), p_signal=signal,
                fmt=["16"] * len(names), adc_gain=[1000.0] * len(names), baseline=[0] * len(names),
                write_dir=str(path.parent))
    return str(path)


def write_radiograph(path: Path, seed: int, encoding: int, view: str = "PA") -> str:
    """A 72 x 56 DX film in one of the demo's encodings (windows, rescale, VOI LUT, compressed syntaxes)."""
    rng = np.random.default_rng(seed)
    display = np.clip(np.linspace(0.1, 0.9, 72 * 56).reshape(72, 56) + rng.uniform(-0.1, 0.1, (72, 56)), 0.0, 1.0)
    header = {"SOPInstanceUID": pydicom.uid.generate_uid(), "StudyInstanceUID": pydicom.uid.generate_uid(),
              "SeriesInstanceUID": pydicom.uid.generate_uid(), "PatientName": "Test^Name", "PatientID": "T1",
              "ViewPosition": view}
    enc = ENCODINGS[encoding]
    build_dicom(encode_display(display, enc), enc, header).save_as(path, enforce_file_format=True)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Good and bad files of both modalities, and files of neither."""
    folder = tmp_path_factory.mktemp("files")
    paths = {"rec_a": write_wfdb(folder / "a", 250, 0), "rec_b": write_wfdb(folder / "b", 300, 1),
             "rec_holter": write_wfdb(folder / "holter", 260, 2, names=["MLII", "V1"]),
             "rec_short": write_wfdb(folder / "short", 100, 3), "rec_no_dat": write_wfdb(folder / "no_dat", 250, 4),
             "dicom_ecg": str(DICOM_ECG),
             "cxr_window": write_radiograph(folder / "window.dcm", 0, 0, "PA"),
             "cxr_rescale": write_radiograph(folder / "rescale.dcm", 1, 1, "AP"),
             "cxr_j2k": write_radiograph(folder / "j2k.dcm", 2, 2, "PA")}
    Path(paths["rec_no_dat"] + ".dat").unlink()
    png = folder / "film.png"
    Image.fromarray(np.arange(48 * 36, dtype=np.uint16).reshape(48, 36) % 256).convert("L").save(png)
    paths["png"] = str(png)
    truncated = folder / "truncated.dcm"
    truncated.write_bytes(Path(paths["cxr_window"]).read_bytes()[:-500])
    paths["cxr_truncated"] = str(truncated)
    notes = folder / "notes.txt"
    notes.write_text("not a signal\n")
    paths["text"] = str(notes)
    return paths


# ---- claims -----------------------------------------------------------------------------------
ECG_FILES = ["rec_a", "rec_holter", "rec_short", "dicom_ecg"]
XRAY_FILES = ["cxr_window", "cxr_j2k", "cxr_truncated", "png"]


def test_ecg_claims_records_and_ecg_waveforms_only(files):
    plugin = ecg_plugin()
    for key in ECG_FILES:
        assert plugin.claims(files[key]), key
    assert plugin.claims(files["rec_a"] + ".hea") and plugin.claims(files["rec_a"] + ".dat")
    assert plugin.claims(Path(files["rec_a"]))
    for key in XRAY_FILES + ["text"]:
        assert not plugin.claims(files[key]), key
    for other in (CT_IMAGE, RT_PLAN, Path(files["rec_a"]).parent / "absent"):
        assert not plugin.claims(other), other


def test_xray_claims_dicom_images_and_bitmaps_only(files):
    plugin = xray_plugin()
    for key in ["cxr_window", "cxr_rescale", "cxr_j2k", "png"]:
        assert plugin.claims(files[key]), key
    assert plugin.claims(CT_IMAGE)  # a DICOM image: claimed; whether it reads as a radiograph is read()'s to say
    for key in ECG_FILES + ["text"]:
        assert not plugin.claims(files[key]), key
    assert not plugin.claims(RT_PLAN) and not plugin.claims(files["rec_a"] + ".hea")


def test_claims_read_headers_only(files, monkeypatch):
    """Claiming a DICOM file never decodes its pixels or waveform."""
    def refuse(*args, **kwargs):
        raise AssertionError("claims() decoded the data")

    monkeypatch.setattr(pydicom.Dataset, "waveform_array", refuse)
    monkeypatch.setattr(pydicom.Dataset, "pixel_array", property(refuse))
    assert ecg_plugin().claims(files["dicom_ecg"]) and xray_plugin().claims(files["cxr_j2k"])


# ---- read: exactly the pipeline ------------------------------------------------------------------
@pytest.mark.parametrize("key", ["rec_a", "rec_holter", "dicom_ecg"])
def test_ecg_read_is_every_evaluation_window_of_the_pipeline(files, key):
    pipeline = ECGPreprocessing(**pipeline_kwargs())
    prepared = pipeline.prepare(files[key])  # (12, T) mV at 100 Hz
    length = prepared.signal.shape[1]
    starts = [0, length - pipeline.num_samples]  # two evenly spaced windows: the first and the last
    windows = ecg_plugin().read(files[key])
    assert len(windows) == 2
    for window, start in zip(windows, starts):
        expected = zscore(prepared.signal[:, start : start + 200])
        expected = np.where(prepared.lead_mask[:, None], expected, 0.0).astype(np.float32)
        assert window["signal"].dtype == torch.float32 and window["signal"].shape == (12, 200)
        assert torch.equal(window["signal"], torch.from_numpy(expected))
        assert torch.equal(window["lead_mask"], torch.from_numpy(prepared.lead_mask))
    if key == "rec_holter":  # MLII through the alias, V1; ten leads missing
        assert windows[0]["lead_mask"].tolist() == [lead in ("II", "V1") for lead in CANONICAL_LEADS]


def test_ecg_read_normalises_with_the_given_statistics(files):
    plugin = ecg_plugin(normalize="dataset", eval_crop="center")
    stats = {"leads": list(CANONICAL_LEADS), "mean": [0.1] * 12, "std": [2.0] * 12}
    prepared = plugin.preprocessing.prepare(files["rec_b"])
    start = (300 - 200) // 2
    expected = ((prepared.signal[:, start : start + 200] - 0.1) / 2.0).astype(np.float32)
    (window,) = plugin.read(files["rec_b"], stats)
    np.testing.assert_allclose(window["signal"].numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="needs the training split's statistics"):
        plugin.read(files["rec_b"])
    with pytest.raises(ValueError, match="statistics are for leads"):
        plugin.read(files["rec_b"], {**stats, "leads": ["I"]})


@pytest.mark.parametrize("key, policy", [("cxr_window", {}), ("cxr_rescale", {}), ("cxr_j2k", {}),
                                         ("cxr_j2k", {"no_window": "full_range"}), ("png", {})])
def test_xray_read_is_the_letterboxed_decode_as_the_cache_stores_it(files, key, policy):
    images = {**PERCENTILE, **policy}
    decoded = read_radiograph(files[key], images["apply_voi"], images["no_window"], images["percentiles"])
    expected = letterbox(decoded.pixels, 32).astype(np.float16).astype(np.float32)  # (1, 32, 32)
    (image,) = xray_plugin(**policy).read(files[key])
    assert image.dtype == torch.float32 and torch.equal(image, torch.from_numpy(expected))


# ---- open + get: what a data set serves ---------------------------------------------------------
@pytest.mark.parametrize("cached", [True, False])
def test_ecg_open_serves_the_read_windows_and_names_bad_records(files, tmp_path, cached):
    plugin = ecg_plugin(tmp_path / "cache" if cached else None)
    good = [files["rec_a"], files["rec_holter"], files["dicom_ecg"]]
    source = plugin.open(good + [files["rec_short"], files["rec_no_dat"]], train=False)
    assert set(source.errors) == {files["rec_short"], files["rec_no_dat"]}
    assert source.errors[files["rec_no_dat"]] == f"signal file missing ({files['rec_no_dat']}.dat)"
    assert "shorter than the 2 s window" in source.errors[files["rec_short"]]
    assert source.stats == {"records": 3, "nan_samples": 0, "records_missing_leads": 1, "records_too_few_leads": 0,
                            "leads_seen": {**{lead: 2 for lead in CANONICAL_LEADS}, "MLII": 1, "V1": 3}}
    assert source.eval_views == 2
    for path in good:
        windows = plugin.read(path)
        for crop, window in enumerate(windows):
            got = source.get(path, False, np.random.default_rng(0), crop=crop)
            assert all(torch.equal(got[k], window[k]) for k in ("signal", "lead_mask"))
        assert torch.equal(source.get(path, False, None)["signal"], windows[0]["signal"])
    with pytest.raises(ECGRecordError, match="signal file missing"):
        source.get(files["rec_no_dat"], False, None)
    with pytest.raises(KeyError, match="not among the opened records"):
        source.get(files["rec_b"], False, None)


def test_ecg_training_get_is_a_random_crop_drawn_from_the_rng(files, tmp_path):
    plugin = ecg_plugin(tmp_path / "cache")
    source = plugin.open([files["rec_b"]], train=True)
    prepared = plugin.preprocessing.prepare(files["rec_b"])
    for seed in range(5):
        start = int(np.random.default_rng(seed).integers(0, 300 - 200 + 1))
        expected = zscore(prepared.signal[:, start : start + 200]).astype(np.float32)
        got = source.get(files["rec_b"], True, np.random.default_rng(seed))
        assert torch.equal(got["signal"], torch.from_numpy(expected))


def test_ecg_normalization_statistics_match_the_sample_dataset(files, tmp_path):
    """fit_normalization over the opened records equals ECGSampleDataset's, and get() uses what is set."""
    records = [files["rec_a"], files["rec_b"], files["rec_holter"]]
    plugin = ecg_plugin(tmp_path / "cache", normalize="dataset")
    source = plugin.open(records + [files["rec_no_dat"]], train=True)
    stats = source.fit_normalization()
    samples = [ECGSample(f"s{i}", (path,), "<ecg>", "answer", None) for i, path in enumerate(records)]
    dataset = ECGSampleDataset(samples, plugin.preprocessing, True, "raise",
                               ECGSignalCache(tmp_path / "cache", workers=0), "test")
    assert dataset.fit_normalization() == {"ecg": stats}  # a data set keys its statistics by modality
    evaluation = plugin.open(records, train=False)
    evaluation.set_normalization(stats)
    got = evaluation.get(files["rec_b"], False, None, crop=1)
    assert torch.equal(got["signal"], plugin.read(files["rec_b"], stats)[1]["signal"])
    assert ecg_plugin(tmp_path / "cache").open(records, train=True).fit_normalization() is None  # normalize: record
    with pytest.raises(ValueError, match="statistics are for leads"):
        evaluation.set_normalization({**stats, "leads": ["I", "II"]})


@pytest.mark.parametrize("cached", [True, False])
def test_xray_open_serves_the_read_images_and_names_bad_files(files, tmp_path, cached):
    plugin = xray_plugin(tmp_path / "cache" if cached else None)
    good = [files["cxr_window"], files["cxr_rescale"], files["cxr_j2k"], files["png"]]
    missing = str(tmp_path / "absent.dcm")
    source = plugin.open(good + [files["cxr_truncated"], missing], train=True)
    assert set(source.errors) == {files["cxr_truncated"], missing}
    assert source.errors[missing] == "file not found" and "truncated" in source.errors[files["cxr_truncated"]]
    assert source.stats == {"images": 4, "views_seen": {"AP": 1, "PA": 2, "none": 1}}
    assert source.views[files["cxr_rescale"]] == "AP" and source.views[files["png"]] is None
    assert source.fit_normalization() is None
    source.set_normalization(None)
    for path in good:
        for train in (True, False):
            assert torch.equal(source.get(path, train, np.random.default_rng(1)), plugin.read(path)[0])
    if cached:
        assert list((tmp_path / "cache" / "xray").rglob("*.npz"))
    with pytest.raises(ImageReadError, match="truncated"):
        source.get(files["cxr_truncated"], False, None)


# ---- settings: an exported model rebuilds the same reader ---------------------------------------
def test_ecg_settings_name_every_pipeline_argument():
    settings = ecg_plugin().settings()
    arguments = set(inspect.signature(ECGPreprocessing).parameters)
    assert set(settings["preprocessing"]) == arguments | {"_target_"} and settings["cache"] is None


def rebuilt(plugin):
    """The plugin from its config as an exported model stores it: JSON, then the class named by _target_."""
    config = json.loads(json.dumps(plugin.config()))
    assert config["_target_"] == f"{type(plugin).__module__}.{type(plugin).__qualname__}"
    return type(plugin)(**{key: value for key, value in config.items() if key != "_target_"})


@pytest.mark.parametrize("overrides", [{}, {"eval_crop": "center", "bandpass": [0.5, 40], "notch": 60,
                                            "sampling_rate": 250, "seconds": 2.5, "normalize": "none"}])
def test_ecg_plugin_rebuilt_from_its_config_reads_alike(files, tmp_path, overrides):
    plugin = ecg_plugin(tmp_path, **overrides)
    again = rebuilt(plugin)
    assert again.config() == plugin.config() and again.cache is None
    assert again.preprocessing.prepare_settings() == plugin.preprocessing.prepare_settings()
    for key in ("rec_b", "dicom_ecg"):
        for mine, theirs in zip(plugin.read(files[key]), again.read(files[key]), strict=True):
            assert torch.equal(mine["signal"], theirs["signal"]) and torch.equal(mine["lead_mask"], theirs["lead_mask"])
    via_hydra = instantiate(plugin.config(), _recursive_=False)  # the nested nodes stay nodes, as from the yaml
    assert via_hydra.config() == plugin.config()


@pytest.mark.parametrize("policy", [{}, {"no_window": "full_range"}, {"apply_voi": False}])
def test_xray_plugin_rebuilt_from_its_config_reads_alike(files, tmp_path, policy):
    plugin = xray_plugin(tmp_path, **policy)
    again = rebuilt(plugin)
    assert again.config() == plugin.config() and again.cache_dir is None
    for key in ("cxr_j2k", "png"):
        assert torch.equal(plugin.read(files[key])[0], again.read(files[key])[0])


def test_older_checkpoints_settings_rebuild_their_readers(files):
    """Pipelines saved before the lead settings and the no_window knob existed read as they were trained."""
    old_ecg = {key: value for key, value in pipeline_kwargs().items() if key not in ("lead_aliases", "min_real_leads")}
    plugin = ECGModality("ecg", "", True, ECG_NET, old_ecg)
    assert plugin.preprocessing.lead_aliases == {} and plugin.preprocessing.min_real_leads == 1
    old_xray = XrayModality("xray", "", True, XRAY_NET, {"size": 32, "apply_voi": True})
    assert old_xray.images["no_window"] == "full_range"
    full_range = xray_plugin(no_window="full_range")
    assert torch.equal(old_xray.read(files["cxr_j2k"])[0], full_range.read(files["cxr_j2k"])[0])
    with pytest.raises(ValueError, match="expected a mmmed_datasets.ecg.ecg_preprocess.ECGPreprocessing node"):
        ECGModality("ecg", "", True, ECG_NET, {"_target_": "os.system", "command": "true"})


# ---- pictures ----------------------------------------------------------------------------------
def test_pictures_show_the_input_and_draw_a_png(files, tmp_path):
    ecg, xray = ecg_plugin(), xray_plugin()
    inputs = ecg.picture(files["rec_holter"])
    prepared = ecg.preprocessing.prepare(files["rec_holter"])
    assert inputs["kind"] == "ecg" and inputs["sampling_rate"] == FS and inputs["leads"] == list(CANONICAL_LEADS)
    assert np.array_equal(inputs["signal"], prepared.signal) and np.array_equal(inputs["lead_mask"], prepared.lead_mask)
    image = xray.picture(files["cxr_window"])
    assert image["kind"] == "xray" and np.array_equal(image["image"], xray.read(files["cxr_window"])[0].numpy())
    for plugin, shown in ((ecg, inputs), (xray, image)):
        out = plugin.draw(shown, tmp_path / f"{plugin.name}.png", question="Q?", reference="R.", answer="A.")
        assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the yaml files ----------------------------------------------------------------------------
def compose_tiny(lines: list[str], overrides: list[str] = ()) -> OmegaConf:
    """A primary config of ``lines`` (its defaults), with the repository's conf/ on the search path."""
    folder = Path(tempfile.mkdtemp())
    defaults = "\n".join(f"  - {line}" for line in ["paths: default", *lines, "_self_"])
    (folder / "tiny.yaml").write_text(f"defaults:\n{defaults}\nhydra:\n  searchpath: [file://{REPO / 'conf'}]\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        return compose("tiny", overrides=list(overrides))


@pytest.mark.parametrize("name", sorted(path.stem for path in (REPO / "conf" / "modality").glob("*.yaml")))
def test_every_modality_yaml_builds_its_plugin(name):
    cfg = compose_tiny([f"modality: [{name}]"])
    node = cfg.modalities[name]
    assert node._recursive_ is False and node.name == name
    plugin = instantiate(node)
    assert plugin.name == name and plugin.tag == f"<{name}>" and plugin.description.strip()
    assert 0 < len(plugin.description.split(". ")) <= 2  # one or two sentences
    assert rebuilt(plugin).config() == plugin.config()
    encoder = plugin.build_encoder()
    assert encoder.out_dim > 0 and encoder.num_tokens > 0


@pytest.mark.parametrize("data, policy", [("mimic_cxr", "percentile"), ("chexpert", "percentile"),
                                          ("xray_manifest", "percentile"), ("mimic_cxr_demo", "full_range")])
def test_xray_data_configs_decode_with_the_modality_settings(data, policy):
    """One source of truth: the data's image cache takes every decode setting from modalities.xray."""
    for overrides, expected in (([], policy), (["xray_images=default"], "percentile")):
        cfg = compose_tiny(["modality: [xray]", f"data: {data}"], overrides)
        plugin = instantiate(cfg.modalities.xray)
        images = OmegaConf.to_container(cfg.data.dataset.images, resolve=True)
        assert images.pop("_target_") == "mmmed_datasets.xray.xray_cache.XrayImageCache"
        assert images == {**plugin.images, "cache_dir": plugin.cache_dir, "workers": plugin.workers}
        assert plugin.images["no_window"] == expected and plugin.images["size"] == cfg.modalities.xray.net.img_size
