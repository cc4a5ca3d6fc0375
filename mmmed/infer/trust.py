"""What a saved model may make this process import, and whether the LLM loaded is the one it was trained on.

A checkpoint or an exported folder names classes (encoder, adapter, modality plugin, LLM loader) by dotted
path. Loading imports them only from mmmed's own packages, plus any prefixes the caller trusts by name
(``trusted_modules``: a modality plugin of your own package, e.g. ``["my_lab_plugin."]``).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)

ALLOWED_PREFIXES = ("mmmed.", "mmmed_encoders.", "mmmed_datasets.")


def resolve_allowed(path: str, trusted_modules: Iterable[str] = ()) -> Callable[..., Any]:
    """The class or function ``module.name`` that a config names, imported only from mmmed's own packages
    or a prefix in ``trusted_modules``."""
    allowed = ALLOWED_PREFIXES + tuple(trusted_modules)
    if not isinstance(path, str) or not _within(path, allowed):
        raise ValueError(f"Refusing to import {path!r}: a saved model may only name classes from "
                         f"{', '.join(p + '*' for p in allowed)}. Re-export it with mmmed.infer.export, check where it "
                         f"came from, or trust your own plugin package by name (trusted_modules=[...]).")
    module, _, name = path.rpartition(".")
    target = getattr(importlib.import_module(module), name)
    if not _within(getattr(target, "__module__", ""), allowed):  # e.g. mmmed.model.multimodal_lm.nn.Module
        raise ValueError(f"Refusing {path!r}: it is defined in {getattr(target, '__module__', '?')!r}, not in mmmed")
    return target


def _within(dotted: str, packages: tuple[str, ...]) -> bool:
    """Whether ``dotted`` is one of ``packages`` or inside one (``my_plugin`` and ``my_plugin.`` both name a package)."""
    return any(dotted == p.rstrip(".") or dotted.startswith(p.rstrip(".") + ".") for p in packages)


def resolver(trusted_modules: Iterable[str] = ()) -> Callable[[str], Callable[..., Any]]:
    """``resolve_allowed`` with the trusted prefixes bound: what plugins build their parts with at load time."""
    trusted = tuple(trusted_modules)
    return lambda path: resolve_allowed(path, trusted)


def check_llm_identity(expected: str | None, found: str) -> None:
    """Same LLM as in training (``name:source``), or an error; a source of unknown revision (``hub``) only warns."""
    if found == expected:
        return
    name, _, source = (expected or "").partition(":")
    found_name, _, found_source = found.partition(":")
    if name == found_name and "hub" in (source, found_source):  # e.g. downloaded then, read from the HF cache now
        log.warning("LLM %s loaded, trained with %s: same model, revision unknown; answers may differ", found, expected)
        return
    raise ValueError(f"The model was trained on LLM {expected!r} but {found!r} was loaded (another model, revision or "
                     f"conversion): its answers would not be the trained model's. Make that LLM available again "
                     f"(Hugging Face cache, or llm_cache_dir).")
