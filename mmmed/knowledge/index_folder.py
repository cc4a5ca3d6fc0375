"""An index folder written once and checked on every read: files staged beside it, a ``manifest.json`` with every
file's sha256, renamed into place; reading verifies each file first, so a truncated, altered or half-written index
is an error naming the file, never a search over the wrong data."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mmmed.atomic_files import file_sha256

MANIFEST = "manifest.json"


class KnowledgeIndexError(RuntimeError):
    """An index that is missing, incomplete or corrupt; the message names the path."""


def write_index_folder(out: str | Path, write_files: Callable[[Path], None], manifest: dict) -> Path:
    """``write_files(staging)``, then ``manifest`` plus the sha256 of every file written, renamed to ``out``."""
    out = Path(out)
    staging = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_files(staging)
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    manifest = {**manifest, "sha256": {name: file_sha256(staging / name) for name in files}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def read_index_manifest(path: str | Path, kind: str, format_version: int, build_hint: str) -> dict:
    """The manifest of the ``kind`` index at ``path`` after checking every file it lists (sha256)."""
    path = Path(path)
    if not path.is_dir():
        raise KnowledgeIndexError(f"{path}: no {kind} there (build one: {build_hint})")
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError as err:
        raise KnowledgeIndexError(f"{manifest_path}: missing; {path} is not a complete {kind}") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise KnowledgeIndexError(f"{manifest_path}: corrupt ({err})") from err
    if not isinstance(manifest, dict) or manifest.get("format") != format_version:
        raise KnowledgeIndexError(f"{manifest_path}: not a format-{format_version} {kind} manifest")
    for name, expected in manifest["sha256"].items():
        file = path / name
        if not file.is_file():
            raise KnowledgeIndexError(f"{file}: missing from the {kind}")
        if file_sha256(file) != expected:
            raise KnowledgeIndexError(f"{file}: corrupt (its sha256 differs from {manifest_path}'s)")
    return manifest
