"""Write a generated demo data set once, atomically, and refuse to mix settings.

A demo folder is complete when its manifest (``mmmed_demo.json``, the generator's settings) exists;
it is written into a temporary sibling folder and renamed into place, so an interrupted
generation never leaves a half-written set that a later run would read. A set made by an older
version of the same generator with the same settings is regenerated in place.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MANIFEST = "mmmed_demo.json"
log = logging.getLogger(__name__)


def build_once(root: str | os.PathLike, settings: dict, write: Callable[[Path], None]) -> Path:
    """Return ``root``, first running ``write(tmp_folder)`` unless a set with these ``settings`` is there.

    Raises:
        ValueError: ``root`` holds a demo set generated with other settings.
        FileExistsError: ``root`` exists but is not a complete demo set.
    """
    root = Path(root).expanduser()
    manifest = root / MANIFEST
    outdated = False
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found == settings:
            return root
        # Same settings from an older generator: ours to replace. Anything else might be a user's choice.
        outdated = {k: v for k, v in found.items() if k != "version"} == {k: v for k, v in settings.items() if k != "version"}
        if not outdated:
            raise ValueError(f"Demo data at {root} was generated with {found}, not {settings}; choose another root")
        log.info("Demo data at %s is from generator version %s; regenerating it (version %s)", root,
                 found.get("version"), settings.get("version"))
    elif root.exists():
        raise FileExistsError(f"{root} exists but is not a complete mmmed demo set (no {MANIFEST}); remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps(settings))
        if outdated:  # a directory cannot be replaced in one rename: move the old one aside first
            old = Path(tempfile.mkdtemp(prefix=root.name + ".old-", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
