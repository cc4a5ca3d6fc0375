"""Composing a run's config outside Hydra's app, for the benchmarks."""

from __future__ import annotations

import tempfile

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig


def compose_for_bench(config_name: str, fixed: list[str], overrides: list[str]) -> DictConfig:
    """``conf/<config_name>.yaml`` with ``fixed`` then the user's ``overrides``, ready for ``build_run``.

    No Hydra run happens here, so the interpolations of Hydra's runtime (``${hydra:...}``, used by ``run_name`` and
    the output folders) have nothing to read: both get concrete values (a fresh temporary output folder).
    """
    from mmmed.config_dir import config_dir

    outside_hydra = ["run_name=bench", f"paths.output_dir={tempfile.mkdtemp(prefix='mmmed-bench-')}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name, overrides=[*outside_hydra, *fixed, *overrides])
