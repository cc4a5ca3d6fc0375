"""DICOM decoding: pixel values against hand-computed expectations, every pitfall, every bad file."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import HTJ2K, MPEG2MPML, generate_uid

from mmmed_datasets.demo.xray_demo import ENCODINGS, VOI_LUT_ENTRIES, build_dicom, encode_display
from mmmed_datasets.xray.xray_image import ImageReadError, decode_settings, letterbox, read_dicom, read_radiograph

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# The two policies for a file without VOI LUT or window (conf/data/*.yaml: images.no_window).
PERCENTILE = {"no_window": "percentile", "percentiles": [0.5, 99.5]}
FULL_RANGE = {"no_window": "full_range", "percentiles": None}
CR_AP = TEST_FILES / "dicomdirtests" / "77654033" / "CR2" / "6247"  # real CR: MONOCHROME1, 12-bit, rescale, window


def raw_u16(ds: pydicom.Dataset, bits_stored: int) -> np.ndarray:
    """Stored values read straight from the uncompressed PixelData bytes, masked to BitsStored."""
    return (np.frombuffer(ds.PixelData, "<u2").reshape(ds.Rows, ds.Columns) & (2**bits_stored - 1)).astype(np.float64)


def header(view: str = "PA") -> dict[str, str]:
    return {
        "SOPInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "PatientName": "Test^Patient",
        "PatientID": "T1",
        "PatientBirthDate": "19700101",
        "PatientSex": "O",
        "StudyDate": "21800101",
        "ViewPosition": view,
    }


def drawn_image(rows: int = 48, cols: int = 40) -> np.ndarray:
    """A smooth ramp plus a bright disc: covers the whole [0, 1] range."""
    y, x = np.mgrid[0:rows, 0:cols]
    image = 0.9 * x / (cols - 1) + 0.1 * (((y - rows / 2) ** 2 + (x - cols / 2) ** 2) < 60)
    return np.clip(image, 0.0, 1.0)


# --- real files shipped with pydicom -----------------------------------------------------------


def test_real_monochrome1_cr_rescale_then_window_then_invert():
    ds = pydicom.dcmread(CR_AP)
    assert (ds.PhotometricInterpretation, ds.BitsStored, ds.RescaleSlope, ds.RescaleIntercept) == ("MONOCHROME1", 12, 0.684, 200)
    modality = 0.684 * raw_u16(ds, 12) + 200  # Modality LUT
    windowed = np.clip((modality - (1600 - 0.5)) / (2800 - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2, window 1600/2800
    expected = 1.0 - windowed  # MONOCHROME1: low values are white
    decoded = read_dicom(CR_AP, apply_voi=True, **PERCENTILE)
    assert decoded.view == "AP"
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)


def test_real_cr_without_voi_normalises_over_the_rescaled_12_bit_range():
    ds = pydicom.dcmread(CR_AP)
    modality = 0.684 * raw_u16(ds, 12) + 200
    expected = 1.0 - (modality - 200) / (0.684 * 4095)  # stored 0..4095 through the rescale, inverted
    np.testing.assert_allclose(read_dicom(CR_AP, apply_voi=False, **PERCENTILE).pixels, expected, atol=1e-6)


def test_first_of_several_windows_is_applied_to_a_12_bit_image():
    path = get_testdata_file("examples_overlay.dcm")
    ds = pydicom.dcmread(path)
    assert list(ds.WindowCenter) == [450, 200] and list(ds.WindowWidth) == [790, 443] and ds.BitsStored == 12
    expected = np.clip((raw_u16(ds, 12) - 449.5) / 789 + 0.5, 0, 1)
    for policy in (PERCENTILE, FULL_RANGE):  # a file with a window keeps its window under either policy
        np.testing.assert_allclose(read_dicom(path, apply_voi=True, **policy).pixels, expected, atol=1e-6)


def test_signed_ct_with_rescale_normalises_over_the_signed_range():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, "<i2").reshape(ds.Rows, ds.Columns).astype(np.float64)
    expected = (stored - 1024 - (-32768 - 1024)) / 65535  # [-32768, 32767] shifted by the intercept
    np.testing.assert_allclose(read_dicom(path, apply_voi=True, **FULL_RANGE).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_files_decode_to_the_uncompressed_pixels(name):
    reference = read_dicom(get_testdata_file("MR_small.dcm"), apply_voi=True, **PERCENTILE).pixels
    np.testing.assert_array_equal(read_dicom(get_testdata_file(name), apply_voi=True, **PERCENTILE).pixels, reference)


def test_jpeg_extended_12_bit_decodes_through_libjpeg():
    path = get_testdata_file("JPGExtended.dcm")
    pixels = read_dicom(path, apply_voi=True, **FULL_RANGE).pixels
    assert pixels.shape == (1024, 256) and pixels.dtype == np.float32
    expected = pydicom.dcmread(path).pixel_array / 4095.0  # no window, no rescale: the 12-bit range
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


# --- generated files, one per pitfall ----------------------------------------------------------


@pytest.mark.parametrize("enc", ENCODINGS, ids=[e.name for e in ENCODINGS])
def test_each_generated_pitfall_decodes_back_to_the_drawn_image(enc, tmp_path):
    drawn = drawn_image()
    path = tmp_path / "film.dcm"
    build_dicom(encode_display(drawn, enc), enc, header()).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == enc.syntax and ds.PhotometricInterpretation == enc.photometric
    assert ds.BitsStored == enc.bits_stored
    # FULL_RANGE: the demo's one windowless encoding stores the drawn image over the full 12-bit range.
    decoded = read_dicom(path, apply_voi=True, **FULL_RANGE).pixels
    # A 4096-entry square-root LUT is coarse near black (x = 4095 d^2): error <= sqrt(0.5 / 4095).
    tolerance = 0.012 if enc.voi_lut_gamma else 1e-3
    np.testing.assert_allclose(decoded, drawn, atol=tolerance)
    # The pitfall is real: reading stored values over the container's range, as a naive reader does, is wrong.
    naive = ds.pixel_array / 65535.0
    assert np.abs(naive - drawn).max() > 0.1


def test_voi_lut_sequence_matches_a_hand_applied_lut(tmp_path):
    enc = next(e for e in ENCODINGS if e.voi_lut_gamma)
    drawn = drawn_image()
    stored = encode_display(drawn, enc)
    path = tmp_path / "lut.dcm"
    build_dicom(stored, enc, header()).save_as(path, enforce_file_format=True)
    lut = np.rint(65535 * (np.arange(VOI_LUT_ENTRIES) / (VOI_LUT_ENTRIES - 1)) ** enc.voi_lut_gamma)
    expected = lut[np.clip(stored, 0, VOI_LUT_ENTRIES - 1)] / 65535.0
    np.testing.assert_allclose(read_dicom(path, apply_voi=True, **PERCENTILE).pixels, expected, atol=1e-6)


def test_monochrome1_and_monochrome2_storage_of_one_image_decode_alike(tmp_path):
    drawn = drawn_image()
    decoded = {}
    for enc in ENCODINGS[:2]:  # MONOCHROME2 16-bit windows; MONOCHROME1 12-bit rescale + window
        path = tmp_path / f"{enc.name}.dcm"
        build_dicom(encode_display(drawn, enc), enc, header()).save_as(path, enforce_file_format=True)
        decoded[enc.photometric] = read_dicom(path, apply_voi=True, **PERCENTILE).pixels
    np.testing.assert_allclose(decoded["MONOCHROME1"], decoded["MONOCHROME2"], atol=1e-3)


# --- bad files: each gets its exact error ------------------------------------------------------


def expect_error(path: Path | str, reason: str) -> None:
    with pytest.raises(ImageReadError) as caught:
        read_radiograph(path, apply_voi=True, **PERCENTILE)
    assert caught.value.path == str(path)
    assert caught.value.reason == reason
    assert str(caught.value) == f"{path}: {reason}"


def test_file_without_dicom_preamble(tmp_path):
    path = tmp_path / "noise.dcm"
    path.write_bytes(os.urandom(4096))
    expect_error(path, "not a DICOM file (no 'DICM' preamble or file meta header)")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "absent.dcm", "file not found")


def test_truncated_uncompressed_pixel_data():
    path = get_testdata_file("MR_truncated.dcm")
    expect_error(path, "truncated: the file ends inside its pixel data (8130 of 8192 bytes)")


def test_truncated_jpeg2000_frame(tmp_path):
    enc = next(e for e in ENCODINGS if "jpeg2000" in e.name)
    ds = build_dicom(encode_display(drawn_image(), enc), enc, header())
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    path = tmp_path / "cut.dcm"
    ds.save_as(path, enforce_file_format=True)
    expect_error(path, "pixel data could not be decoded (JPEG 2000 Image Compression (Lossless Only)): corrupt or truncated")


def test_unsupported_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = MPEG2MPML
    ds.PixelData = encapsulate([ds.PixelData])  # a compressed syntax stores its data encapsulated
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    expect_error(
        path,
        f"unsupported transfer syntax MPEG2 Main Profile / Main Level: pydicom {pydicom.__version__} has no decoder "
        "for it; convert the file to an uncompressed transfer syntax",
    )


def test_multi_frame_object():
    expect_error(get_testdata_file("rtdose.dcm"), "multi-frame object (15 frames); expected one radiograph")


def test_colour_image():
    expect_error(get_testdata_file("examples_rgb_color.dcm"), "colour or non-grayscale image (PhotometricInterpretation RGB, 3 samples)")


def test_non_image_object():
    expect_error(get_testdata_file("rtplan.dcm"), "RT Plan object, not an image (no pixel data)")


def test_errors_never_quote_patient_identity(tmp_path):
    ds = pydicom.dcmread(CR_AP)
    assert str(ds.PatientName) == "Doe^Archibald"
    del ds.PixelData
    path = tmp_path / "cr.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError) as caught:
        read_radiograph(path, apply_voi=True, **PERCENTILE)
    assert caught.value.reason == "no pixel data in an image object (Computed Radiography Image Storage)"
    assert "Archibald" not in str(caught.value) and str(ds.PatientID) not in caught.value.reason


# --- letterboxing ------------------------------------------------------------------------------


def test_letterbox_keeps_aspect_ratio_and_pads_with_black():
    portrait = np.ones((100, 50), dtype=np.float32)  # twice as tall as wide
    boxed = letterbox(portrait, 64)
    assert boxed.shape == (1, 64, 64) and boxed.dtype == np.float32
    # The 50 columns fill 32 of 64 after scaling by 0.64, centred: columns 16..47, black beside them.
    np.testing.assert_array_equal(boxed[0, :, :15], 0.0)
    np.testing.assert_array_equal(boxed[0, :, 49:], 0.0)
    np.testing.assert_allclose(boxed[0, :, 17:47], 1.0, atol=1e-6)


def test_letterbox_resizes_with_antialiasing():
    checker = (np.indices((128, 128)).sum(0) % 2).astype(np.float32)  # 1-pixel checkerboard, mean 0.5
    np.testing.assert_allclose(letterbox(checker, 32), 0.5, atol=0.02)  # averaged, not aliased to 0 or 1


@pytest.mark.parametrize("keyword", ["Rows", "BitsStored", "BitsAllocated", "PixelRepresentation"])
def test_missing_pixel_description(tmp_path, keyword):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    delattr(ds, keyword)
    path = tmp_path / "incomplete.dcm"
    ds.save_as(path)
    expect_error(path, f"missing required pixel attributes: {keyword}")


# --- truncated, encrypted, undecodable, not an image: each says which ----------------------------


def cut_copy(source: str | Path, tmp_path: Path, keep: int) -> Path:
    """The first ``keep`` bytes of a real file, as a transfer cut short would leave it."""
    path = tmp_path / f"cut-{keep}.dcm"
    path.write_bytes(Path(source).read_bytes()[:keep])
    return path


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
@pytest.mark.parametrize("fraction", [0.0, 0.33, 0.5, 1.0])
def test_native_file_cut_inside_its_pixel_data(tmp_path, name, fraction):
    source = get_testdata_file(name)
    element = pydicom.dcmread(source).get_item("PixelData")  # value_tell: where the value starts in the file
    declared = element.length
    kept = min(max(1, int(declared * fraction)), declared - 1)  # 1 byte .. all but the last byte
    path = cut_copy(source, tmp_path, element.value_tell + kept)
    expect_error(path, f"truncated: the file ends inside its pixel data ({kept} of {declared} bytes)")


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
@pytest.mark.parametrize("fraction", [0.0, 0.33, 0.5, 0.99])
def test_encapsulated_file_cut_inside_its_pixel_data(tmp_path, name, fraction):
    source = get_testdata_file(name)
    element = pydicom.dcmread(source).get_item("PixelData")
    items = len(element.value)  # offset table + fragments, before the 8-byte sequence delimiter
    kept = min(max(1, int(items * fraction)), items - 1)
    path = cut_copy(source, tmp_path, element.value_tell + kept)
    expect_error(path, "truncated: the file ends inside an encapsulated value (no sequence delimiter); pixel data incomplete")


@pytest.mark.parametrize("before_value", [4, 6])  # the length field cut; only tag + VR (+ part of the reserved bytes) left
def test_file_cut_inside_the_pixel_data_element_header(tmp_path, before_value):
    source = get_testdata_file("CT_small.dcm")
    path = cut_copy(source, tmp_path, pydicom.dcmread(source).get_item("PixelData").value_tell - before_value)
    expect_error(path, "truncated: the file ends inside a data element's header")


def test_native_pixel_data_shorter_than_its_description(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # 64 x 64, 16 bits allocated: 8192 bytes
    ds.PixelData = ds.PixelData[:8000]  # a consistent element, just too short for the image it describes
    path = tmp_path / "short.dcm"
    ds.save_as(path)
    expect_error(path, "truncated pixel data: 8000 bytes where the pixel description needs 8192")


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("rtplan.dcm", "RT Plan object, not an image (no pixel data)"),
        ("waveform_ecg.dcm", "12-lead ECG Waveform object, not an image (no pixel data)"),
    ],
)
def test_objects_that_are_not_images_say_what_they_are(name, reason):
    expect_error(get_testdata_file(name), reason)


def test_encrypted_attributes_must_be_decrypted_first(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    item = pydicom.Dataset()  # PS3.15 attribute-level confidentiality: the originals, CMS-encrypted
    item.EncryptedContentTransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    item.EncryptedContent = os.urandom(64)
    ds.EncryptedAttributesSequence = [item]
    path = tmp_path / "encrypted-attributes.dcm"
    ds.save_as(path)
    expect_error(path, "encrypted attributes (EncryptedAttributesSequence): decrypt before use")


def test_secure_dicom_file_is_reported_encrypted(tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to write a real CMS envelope")
    key, cert, path = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / "secure.dcm"
    run = {"check": True, "capture_output": True}
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=test", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], **run)
    # PS3.10 7.4: a Secure DICOM File is the DICOM file inside a CMS enveloped-data object.
    subprocess.run([openssl, "cms", "-encrypt", "-binary", "-aes256", "-outform", "DER",
                    "-in", get_testdata_file("CT_small.dcm"), "-out", str(path), str(cert)], **run)
    expect_error(path, "encrypted file (Secure DICOM File Format, CMS enveloped data): decrypt before use")


def htj2k_copy(tmp_path: Path) -> Path:
    """MR_small's lossless JPEG 2000 codestream under the HTJ2K syntax, which allows Part 1 code blocks."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = HTJ2K
    path = tmp_path / "htj2k.dcm"
    ds.save_as(path)
    return path


def test_htj2k_file_decodes_with_the_openjpeg_plugin(tmp_path):
    reference = read_dicom(get_testdata_file("MR_small.dcm"), apply_voi=True, **PERCENTILE).pixels
    np.testing.assert_array_equal(read_dicom(htj2k_copy(tmp_path), apply_voi=True, **PERCENTILE).pixels, reference)


def test_missing_decoder_plugin_names_the_package_to_install(tmp_path):
    """A real environment without pylibjpeg-openjpeg: site-packages less that distribution's files."""
    path = htj2k_copy(tmp_path)
    site_packages = Path(pydicom.__file__).parents[1]
    hidden = {f.parts[0] for f in importlib.metadata.distribution("pylibjpeg-openjpeg").files}
    assert "openjpeg" in hidden
    without = tmp_path / "site-packages"
    without.mkdir()
    for entry in site_packages.iterdir():
        if entry.name not in hidden:
            (without / entry.name).symlink_to(entry)
    code = (
        f"import site; site.addsitedir({str(without)!r})\n"  # -S: no other site directory
        "from pydicom.pixels import get_decoder; from pydicom.uid import HTJ2K\n"
        "assert not get_decoder(HTJ2K).is_available\n"
        "from mmmed_datasets.xray.xray_image import ImageReadError, read_dicom\n"
        "try:\n"
        f"    read_dicom({str(path)!r}, True, 'percentile', [0.5, 99.5])\n"
        "except ImageReadError as err:\n"
        "    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reason = "unsupported transfer syntax High-Throughput JPEG 2000 Image Compression: no decoder installed; pip install pylibjpeg pylibjpeg-openjpeg"
    assert done.stdout.strip() == f"{path}: {reason}"


# --- the low-contrast policy ---------------------------------------------------------------------


def stretched(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Window ``values`` to their own percentiles [low, high], as computed here independently."""
    lo, hi = np.percentile(values, [low, high])
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0)


def low_contrast_modality_values(name: str) -> np.ndarray:
    """Modality LUT output of two real windowless files, computed without pydicom's LUT functions."""
    ds = pydicom.dcmread(get_testdata_file(name))
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds and ds.PhotometricInterpretation == "MONOCHROME2"
    if name == "CT_small.dcm":  # signed 16-bit, rescale 1 / -1024
        stored = np.frombuffer(ds.PixelData, "<i2").reshape(ds.Rows, ds.Columns).astype(np.float64)
        return stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert "RescaleSlope" not in ds and "ModalityLUTSequence" not in ds  # JPEG2000.dcm: an NM frame, no rescale
    return ds.pixel_array.astype(np.float64)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "CT_small.dcm"])
def test_low_contrast_image_without_window_fills_the_output_range(name):
    full = read_dicom(get_testdata_file(name), apply_voi=True, **FULL_RANGE).pixels
    pixels = read_dicom(get_testdata_file(name), apply_voi=True, **PERCENTILE).pixels
    # Measured 1st..99th percentile spans (full range -> percentile): JPEG2000.dcm 0.0014 -> 0.85, CT_small 0.023 -> 0.93;
    # the bounds below leave a wide margin on both sides.
    assert np.ptp(np.percentile(full, [1, 99])) < 0.05  # the problem: nearly flat over the full range
    assert np.ptp(np.percentile(pixels, [1, 99])) >= 0.5
    expected = stretched(low_contrast_modality_values(name), 0.5, 99.5)
    np.testing.assert_allclose(pixels, expected, atol=1e-6)  # float32 rounding of [0, 1] is <= 6e-8: wide margin


def test_other_percentiles_give_another_window():
    path = get_testdata_file("JPEG2000.dcm")
    pixels = read_dicom(path, apply_voi=True, no_window="percentile", percentiles=[5, 95]).pixels
    np.testing.assert_allclose(pixels, stretched(low_contrast_modality_values("JPEG2000.dcm"), 5, 95), atol=1e-6)


def test_flat_image_without_window_keeps_the_full_range(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))  # signed 16-bit, no rescale
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = np.full((ds.Rows, ds.Columns), 300, dtype="<i2").tobytes()
    path = tmp_path / "flat.dcm"
    ds.save_as(path)
    pixels = read_dicom(path, apply_voi=True, **PERCENTILE).pixels  # percentiles coincide: nothing to stretch
    np.testing.assert_allclose(pixels, (300 + 32768) / 65535, atol=1e-6)


@pytest.mark.parametrize(
    ("no_window", "percentiles"), [("minmax", [0.5, 99.5]), ("percentile", [99.5, 0.5]), ("percentile", None),
                                   ("percentile", [0.5]), ("percentile", [-1, 99])]
)
def test_invalid_no_window_settings_are_refused(no_window, percentiles):
    with pytest.raises(ValueError, match="no_window"):
        read_dicom(get_testdata_file("CT_small.dcm"), apply_voi=True, no_window=no_window, percentiles=percentiles)


def test_checkpoints_from_before_the_knob_decode_over_the_full_range():
    assert decode_settings({"size": 32, "apply_voi": True}) == {"apply_voi": True, **FULL_RANGE}
    saved = {"size": 32, "apply_voi": True, **PERCENTILE}
    assert decode_settings(saved) == {"apply_voi": True, **PERCENTILE}
