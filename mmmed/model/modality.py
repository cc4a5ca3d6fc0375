"""The modality plugin: everything one kind of input (an ECG, a chest X-ray, lab values) owns.

The core (model, Lightning module, collate, inference, evaluation) never names a modality; it asks the
plugins. A plugin is built by Hydra from ``conf/modality/<name>.yaml`` (``_target_``, placed at
``modalities.<name>`` in the run config) and says:

* its **name** and **tag** (``<ecg>``): where its signals stand in a question;
* its **encoder** (``net``: a Hydra node, built by :meth:`ModalityPlugin.build_encoder`) and whether it
  trains (``trainable``);
* which **files** it claims (:meth:`claims`), how it **reads** one for inference (:meth:`read`: the encoder
  inputs, prepared exactly as in training), and how a data set opens many at once, **cached**
  (:meth:`open`, a :class:`SignalSource`);
* how to **draw** an input for predict/eval pictures (:meth:`picture` then :meth:`draw`);
* how to **describe** itself in docs and model cards (``description``), and the file-reading settings a
  checkpoint or an exported model must keep (:meth:`settings`).

Adding a modality is one encoder file, one plugin file and one yaml each (README, "Add a modality").
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import numpy as np
import torch
from torch import nn

Signal = torch.Tensor | dict[str, torch.Tensor]  # one encoder input: a tensor, or keyword tensors (an ECG + lead mask)


class SignalSource(Protocol):
    """A modality's files for one split, opened (and cached) once; what a data set draws items from."""

    errors: dict[str, str]  # path -> why it could not be read (the data set's error policy decides)
    stats: dict[str, Any]  # counts the run writes to its metrics (``data/<split>/<modality>/<name>``)
    eval_views: int  # evaluation views per file (an ECG's windows with eval_crop=multi); they vote

    def get(self, path: str, train: bool, rng: np.random.Generator | None, crop: int = 0) -> Signal:
        """The encoder input of ``path``: a random crop/augmentation from ``rng`` when ``train``, else evaluation
        view ``crop`` (< ``eval_views``)."""

    def set_normalization(self, stats: dict | None) -> None:
        """Use the training split's statistics (from ``fit_normalization`` or a checkpoint)."""

    def fit_normalization(self) -> dict | None:
        """Statistics of these (training) files the modality normalises with, or None."""


class ModalityPlugin(ABC):
    """One modality. Subclasses implement reading, caching and drawing; the rest is shared.

    Args:
        name: the modality's name; its tag is ``<name>``, its placeholder token ``<|name_pad|>``.
        description: one or two sentences for docs and model cards (what the input is, how it is read).
        trainable: whether the encoder trains (stage ``train_encoder: null`` defers to this).
        net: the encoder's Hydra node (``_target_`` and arguments); ``out_dim`` and ``num_tokens`` on the module.
        resolve: imports a class named in a saved config (``mmmed.infer.trust.resolver``: trusted packages only), for
            the encoder and any other part the plugin builds from a ``_target_``; None (training): Hydra's import.
    """

    def __init__(self, name: str, description: str, trainable: bool, net: Mapping,
                 resolve: Callable[[str], Callable[..., Any]] | None = None) -> None:
        if not name.isidentifier():
            raise ValueError(f"modality name {name!r} must be an identifier (it becomes the tag <{name}>)")
        self.name = name
        self.description = description
        self.trainable = bool(trainable)
        self.net = _plain(net)
        self.resolve = resolve

    @property
    def tag(self) -> str:
        """The tag written in questions, e.g. ``<ecg>``."""
        return f"<{self.name}>"

    def build_encoder(self, resolve: Callable[[str], Callable[..., Any]] | None = None, **overrides: Any) -> nn.Module:
        """The encoder from ``net`` (``overrides`` replace arguments, e.g. ``pretrained=False`` to download nothing)."""
        return self.build_part({**self.net, **overrides}, resolve)

    def build_part(self, node: Mapping, resolve: Callable[[str], Callable[..., Any]] | None = None) -> Any:
        """An object from a ``_target_`` node: through ``resolve`` (or the plugin's) when loading a saved model,
        else Hydra's instantiate."""
        resolve = resolve or self.resolve
        node = _plain(node)
        if resolve is None:
            from hydra.utils import instantiate

            return instantiate(node)
        return resolve(node["_target_"])(**{k: v for k, v in node.items() if k not in ("_target_", "_partial_")})

    @classmethod
    def config_problems(cls, node: dict[str, Any], where: str) -> list[str]:
        """Problems with a resolved ``conf/modality`` node, each naming its setting under ``where`` (pre-flight:
        before any model is built). Subclasses add their own checks to these."""
        net = node.get("net") or {}
        return [] if "_target_" in net else [f"{where}.net has no _target_: name the encoder class to build."]

    @classmethod
    def legacy_settings(cls, saved: dict[str, Any]) -> dict[str, Any]:
        """Constructor settings from what an mmmed 0.1 model stored (``conf/legacy.yaml``); plugins of 0.1's
        modalities override this."""
        raise ValueError(f"{cls.__name__} did not exist in mmmed 0.1: no 0.1 model can name it")

    @abstractmethod
    def claims(self, path: str | Path) -> bool:
        """Whether this modality reads ``path`` (by suffix, header or companion files; no full decode)."""

    @abstractmethod
    def read(self, path: str | Path, normalization: dict | None = None) -> list[Signal]:
        """Encoder inputs of one file as training prepared them: one per evaluation view (windows vote)."""

    @abstractmethod
    def open(self, paths: list[str], train: bool) -> SignalSource:
        """Prepare many files for a data set split (through the modality's cache when it has one)."""

    @abstractmethod
    def picture(self, path: str | Path) -> dict[str, Any]:
        """What a picture of ``path`` shows (the input as the encoder saw it, in its natural units)."""

    @abstractmethod
    def draw(self, inputs: dict[str, Any], path: str | Path, *, question: str, reference: str, answer: str) -> Path:
        """Save a picture of ``inputs`` (from :meth:`picture` or a data set's ``plot_inputs``) at ``path``."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able file-reading settings an exported model keeps (passed back to the constructor as-is)."""

    def config(self) -> dict[str, Any]:
        """The plugin's full constructor arguments with its class: what exported models store to rebuild it."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", "name": self.name, "description": self.description,
                "trainable": self.trainable, "net": self.net, **self.settings()}


def _plain(node: Mapping) -> dict:
    """A Hydra/OmegaConf node as plain containers (resolved), a dict as-is."""
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # inference without Hydra installed
        pass
    return dict(node)


def modality_order(plugins: Mapping[str, ModalityPlugin]) -> list[str]:
    """The documented order of an untagged question's signals: the modalities as the run config lists them."""
    return list(plugins)
