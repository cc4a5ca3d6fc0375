"""The PHI scan: identifiers planted in DICOM headers, searched for in files, archives and text.

Shared by the training run's scan (tests/test_xray_phi.py) and the server's (tests/test_serve.py).
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

PLANTED = {
    "PatientName": "Quuxley^Zebediah",
    "PatientID": "PHI-4471-9923",
    "PatientBirthDate": "19310417",
    "OtherPatientIDs": "MRN-55120873",
    "PatientAddress": "17 Marigold Lane Xyzzyville",
    "ReferringPhysicianName": "Vexworth^Ignatia",
    "AccessionNumber": "ACC90817263",
    "InstitutionName": "Saint Plover Infirmary",
}
# PN values are searched by their parts too: a logger could print "Zebediah Quuxley".
NEEDLES = sorted({v for v in PLANTED.values()} | {"Quuxley", "Zebediah", "Vexworth", "Ignatia"})


def contents(path: Path) -> list[bytes]:
    """A file's bytes, plus the members of zip archives (checkpoints, npz) and gzip streams."""
    data = path.read_bytes()
    blobs = [data]
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            blobs += [archive.read(name) for name in archive.namelist()] + [n.encode() for n in archive.namelist()]
    if data[:2] == b"\x1f\x8b":
        blobs.append(gzip.decompress(data))
    return blobs


def leaks(roots: list[Path]) -> tuple[list[str], int]:
    """``(findings, files searched)``: every needle found in a file name or a file's contents."""
    found, searched = [], 0
    for root in roots:
        for path in root.rglob("*"):
            for needle in NEEDLES:
                if needle.lower() in str(path.relative_to(root)).lower():
                    found.append(f"{needle!r} in file name {path}")
            if not path.is_file():
                continue
            searched += 1
            for blob in contents(path):
                for needle in NEEDLES:
                    # UTF-32: numpy stores unicode strings (e.g. in .npz caches) as 4 bytes per character.
                    for encoded in (needle.encode(), needle.upper().encode(), needle.encode("utf-16-le"), needle.encode("utf-32-le")):
                        if encoded in blob:
                            found.append(f"{needle!r} in {path}")
    return found, searched


def found_in_text(text: str) -> list[str]:
    """The needles in ``text`` (logs, responses), case-insensitively."""
    return [needle for needle in NEEDLES if needle.lower() in text.lower()]
