"""Keep DICOM header values out of what the server says: error messages can quote a header's text.

The readers' own messages name files and problems, but a library's message about a malformed element may quote
its value (a name, a birth date, an accession number). Before an error about uploaded DICOM files is answered,
every text value in their headers is cut out of it.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

# What identifies a patient (after DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile): every
# person name (PN) and date (DA, DT) anywhere in the header, and the text of these identifying attributes. Other text
# (lead names, code meanings such as "Lead II", "MONOCHROME2") identifies no one and is what a reader's message
# must be able to name.
IDENTIFYING_VRS = {"PN", "DA", "DT"}
IDENTIFYING_KEYWORDS = {
    "PatientID", "OtherPatientIDs", "OtherPatientNames", "IssuerOfPatientID", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "MedicalRecordLocator", "PatientComments",
    "AdditionalPatientHistory", "Occupation", "MilitaryRank", "BranchOfService", "RegionOfResidence",
    "CountryOfResidence", "EthnicGroup", "PatientReligiousPreference", "AccessionNumber", "StudyID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName", "DeviceSerialNumber",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "RequestedProcedureID",
    "ScheduledProcedureStepID", "PerformedProcedureStepID", "AdmissionID", "ServiceEpisodeID",
    "RequestingService", "CurrentPatientLocation",
}  # not the study and series descriptions: they name the examination ("ECG"), which messages name too
MIN_LENGTH = 3  # shorter values ("M", "Y", "1") would blank ordinary words of a message and identify no one
REDACTED = "[header value]"


DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` file, or one with the DICOM preamble's ``DICM`` marker (a WFDB signal file is neither)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with path.open("rb") as handle:
        return handle.read(132)[128:] == b"DICM"


def header_values(path: str | Path) -> set[str]:
    """Every identifying value in a DICOM file's header (person names also by their parts), nested sequences
    included; none when the file is not DICOM."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - a file pydicom cannot parse has no values for a message to quote
        return set()
    values: set[str] = set()

    def collect(ds: pydicom.Dataset) -> None:
        for element in ds:
            try:
                if element.VR == "SQ":
                    for item in element.value or ():
                        collect(item)
                elif (element.VR in IDENTIFYING_VRS or element.keyword in IDENTIFYING_KEYWORDS) and element.value:
                    for item in element.value if element.VM > 1 else [element.value]:
                        text = str(item).strip()
                        values.add(text)
                        if element.VR == "PN":  # "Family^Given": a message may write the parts apart
                            values.update(part.strip() for part in text.replace("=", "^").split("^"))
            except Exception:  # noqa: BLE001 - a malformed element: its raw bytes are cut out as they are
                raw = getattr(element, "value", None)
                if isinstance(raw, bytes):
                    values.add(raw.decode("latin-1", "replace").strip())

    try:
        collect(dataset)
    except Exception:  # noqa: BLE001 - a header that breaks iteration part-way: what was collected is used
        pass
    return {value for value in values if len(value) >= MIN_LENGTH}


def redact(text: str, values: set[str]) -> str:
    """``text`` with every value (longest first, case-insensitively) replaced by ``[header value]``."""
    lowered = text
    for value in sorted(values, key=len, reverse=True):
        start = lowered.lower().find(value.lower())
        while start >= 0:
            lowered = lowered[:start] + REDACTED + lowered[start + len(value):]
            start = lowered.lower().find(value.lower(), start + len(REDACTED))
    return lowered
