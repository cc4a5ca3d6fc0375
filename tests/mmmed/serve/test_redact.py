"""Header values of uploaded DICOM files are cut out of messages, whole and by name parts."""

from __future__ import annotations

import pydicom
from pydicom.data import get_testdata_file

from mmmed.serve.redact import header_values, redact
from tests.phi_scan import PLANTED


def test_planted_identifiers_are_cut_from_a_message(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.save_as(tmp_path / "ecg.dcm")
    values = header_values(tmp_path / "ecg.dcm")
    message = ("ecg.dcm: element (0010,0010) 'Quuxley^Zebediah' born 19310417, seen by Ignatia VEXWORTH at "
               "Saint Plover Infirmary (MRN-55120873, PHI-4471-9923, ACC90817263): Lead II missing")
    assert redact(message, values) == (
        "ecg.dcm: element (0010,0010) '[header value]' born [header value], seen by [header value] [header value] at "
        "[header value] ([header value], [header value], [header value]): Lead II missing")  # lead names are kept


def test_a_file_that_is_not_dicom_has_no_values(tmp_path):
    (tmp_path / "rec.hea").write_text("rec 12 500 5000\n")
    assert header_values(tmp_path / "rec.hea") == set()
