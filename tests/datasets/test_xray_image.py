"""DICOM decoding: pixel values against hand-computed expectations, every pitfall, every bad file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import MPEG2MPML, generate_uid

from mmmed_datasets.xray_demo import ENCODINGS, VOI_LUT_ENTRIES, build_dicom, encode_display
from mmmed_datasets.xray_image import ImageReadError, letterbox, read_dicom, read_radiograph

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
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
    decoded = read_dicom(CR_AP, apply_voi=True)
    assert decoded.view == "AP"
    np.testing.assert_allclose(decoded.pixels, expected, atol=1e-6)


def test_real_cr_without_voi_normalises_over_the_rescaled_12_bit_range():
    ds = pydicom.dcmread(CR_AP)
    modality = 0.684 * raw_u16(ds, 12) + 200
    expected = 1.0 - (modality - 200) / (0.684 * 4095)  # stored 0..4095 through the rescale, inverted
    np.testing.assert_allclose(read_dicom(CR_AP, apply_voi=False).pixels, expected, atol=1e-6)


def test_first_of_several_windows_is_applied_to_a_12_bit_image():
    path = get_testdata_file("examples_overlay.dcm")
    ds = pydicom.dcmread(path)
    assert list(ds.WindowCenter) == [450, 200] and list(ds.WindowWidth) == [790, 443] and ds.BitsStored == 12
    expected = np.clip((raw_u16(ds, 12) - 449.5) / 789 + 0.5, 0, 1)
    np.testing.assert_allclose(read_dicom(path, apply_voi=True).pixels, expected, atol=1e-6)


def test_signed_ct_with_rescale_normalises_over_the_signed_range():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    stored = np.frombuffer(ds.PixelData, "<i2").reshape(ds.Rows, ds.Columns).astype(np.float64)
    expected = (stored - 1024 - (-32768 - 1024)) / 65535  # [-32768, 32767] shifted by the intercept
    np.testing.assert_allclose(read_dicom(path, apply_voi=True).pixels, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["MR_small_jp2klossless.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_files_decode_to_the_uncompressed_pixels(name):
    reference = read_dicom(get_testdata_file("MR_small.dcm"), apply_voi=True).pixels
    np.testing.assert_array_equal(read_dicom(get_testdata_file(name), apply_voi=True).pixels, reference)


def test_jpeg_extended_12_bit_decodes_through_libjpeg():
    path = get_testdata_file("JPGExtended.dcm")
    pixels = read_dicom(path, apply_voi=True).pixels
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
    decoded = read_dicom(path, apply_voi=True).pixels
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
    np.testing.assert_allclose(read_dicom(path, apply_voi=True).pixels, expected, atol=1e-6)


def test_monochrome1_and_monochrome2_storage_of_one_image_decode_alike(tmp_path):
    drawn = drawn_image()
    decoded = {}
    for enc in ENCODINGS[:2]:  # MONOCHROME2 16-bit windows; MONOCHROME1 12-bit rescale + window
        path = tmp_path / f"{enc.name}.dcm"
        build_dicom(encode_display(drawn, enc), enc, header()).save_as(path, enforce_file_format=True)
        decoded[enc.photometric] = read_dicom(path, apply_voi=True).pixels
    np.testing.assert_allclose(decoded["MONOCHROME1"], decoded["MONOCHROME2"], atol=1e-3)


# --- bad files: each gets its exact error ------------------------------------------------------


def expect_error(path: Path | str, reason: str) -> None:
    with pytest.raises(ImageReadError) as caught:
        read_radiograph(path, apply_voi=True)
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
    with pytest.raises(ImageReadError) as caught:
        read_radiograph(path, apply_voi=True)
    assert caught.value.reason.startswith(
        "truncated or inconsistent pixel data (The number of bytes of pixel data is less than expected (8130 vs 8192 bytes)"
    )


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
    expect_error(path, "unsupported transfer syntax: MPEG2 Main Profile / Main Level")


def test_multi_frame_object():
    expect_error(get_testdata_file("rtdose.dcm"), "multi-frame object (15 frames); expected one radiograph")


def test_colour_image():
    expect_error(get_testdata_file("examples_rgb_color.dcm"), "colour or non-grayscale image (PhotometricInterpretation RGB, 3 samples)")


def test_non_image_object():
    expect_error(get_testdata_file("rtplan.dcm"), "no pixel data: not an image object (RT Plan Storage)")


def test_errors_never_quote_patient_identity(tmp_path):
    ds = pydicom.dcmread(CR_AP)
    assert str(ds.PatientName) == "Doe^Archibald"
    del ds.PixelData
    path = tmp_path / "cr.dcm"
    ds.save_as(path)
    with pytest.raises(ImageReadError) as caught:
        read_radiograph(path, apply_voi=True)
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
