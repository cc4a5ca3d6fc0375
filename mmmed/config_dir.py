"""Where the Hydra configs are: the package ``mmmed_conf``, the repo's conf/ folder (pyproject.toml).

Code finds them through the installed package, never by a path relative to its own file, so they are found
the same way from a checkout (the editable install maps ``mmmed_conf`` to conf/, where a git-ignored
conf/local/default.yaml is seen) and from a wheel in site-packages, from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

CONFIG_MODULE = "mmmed_conf"
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"  # what @hydra.main(config_path=...) takes


def config_dir() -> Path:
    """The installed conf/ folder (for initialize_config_dir, or to read one yaml by its path)."""
    # A regular package installed as files (a checkout or an unzipped wheel) is one real folder.
    return Path(str(files(CONFIG_MODULE)))
