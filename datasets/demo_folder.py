"""Write a generated demo data set once, atomically, and refuse to mix settings.

A demo folder is complete when its manifest (``mmmed_demo.json``, the generator's settings) exists;
it is written into a temporary sibling folder and renamed into place, so an interrupted
generation never leaves a half-written set that a later run would read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

MANIFEST = "mmmed_demo.json"


def build_once(root: str | os.PathLike, settings: dict, write: Callable[[Path], None]) -> Path:
    """Return ``root``, first running ``write(tmp_folder)`` unless a set with these ``settings`` is there.

    Raises:
        ValueError: ``root`` holds a demo set generated with other settings.
        FileExistsError: ``root`` exists but is not a complete demo set.
    """
    root = Path(root).expanduser()
    manifest = root / MANIFEST
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if found != settings:
            raise ValueError(f"Demo data at {root} was generated with {found}, not {settings}; choose another root")
        return root
    if root.exists():
        raise FileExistsError(f"{root} exists but is not a complete mmmed demo set (no {MANIFEST}); remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=root.name + ".tmp-", dir=root.parent))
    try:
        write(tmp)
        (tmp / MANIFEST).write_text(json.dumps(settings))
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
