"""Write a generated demo data set once, atomically, and refuse to mix settings.

A demo folder is complete when its manifest (``mmmed_demo.json``, the generator's settings) exists.
It is built with ``mmmed.atomic_files.build_folder_once``: under a lock on ``<root>.lock``, in a
temporary sibling folder renamed into place, so two processes starting at once generate it once and
an interrupted generation never leaves a half-written set that a later run would read. A set made by
an older version of the same generator with the same settings is regenerated in place.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from mmmed.atomic_files import build_folder_once

MANIFEST = "mmmed_demo.json"
log = logging.getLogger(__name__)


def _is_complete(root: Path, settings: dict) -> bool:
    """True when ``root`` holds a set with ``settings``; False when absent or from an older generator.

    Raises:
        ValueError: ``root`` holds a demo set generated with other settings.
        FileExistsError: ``root`` exists but is not a complete demo set.
    """
    manifest = root / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found == settings:
            return True
        # Same settings from an older generator: ours to replace. Anything else might be a user's choice.
        outdated = {k: v for k, v in found.items() if k != "version"} == {k: v for k, v in settings.items() if k != "version"}
        if not outdated:
            raise ValueError(f"Demo data at {root} was generated with {found}, not {settings}; choose another root")
        log.info("Demo data at %s is from generator version %s; regenerating it (version %s)", root,
                 found.get("version"), settings.get("version"))
        return False
    if root.exists():
        raise FileExistsError(f"{root} exists but is not a complete mmmed demo set (no {MANIFEST}); remove it")
    return False


def build_once(root: str | os.PathLike, settings: dict, write: Callable[[Path], None]) -> Path:
    """Return ``root``, first running ``write(tmp_folder)`` unless a set with these ``settings`` is there.

    Raises:
        ValueError: ``root`` holds a demo set generated with other settings.
        FileExistsError: ``root`` exists but is not a complete demo set.
    """
    root = Path(root).expanduser()

    def build(tmp: Path) -> None:
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps(settings))  # last: the set counts as complete once it is there

    build_folder_once(root, build, is_complete=lambda folder: _is_complete(folder, settings))
    return root
