"""mmmed's Hydra configs, installed as the package ``mmmed_conf`` (pyproject.toml maps it to this folder).

This file exists because Hydra's ``pkg://`` search path (``@hydra.main(config_path="pkg://mmmed_conf")``,
``initialize_config_module("mmmed_conf")``) only accepts a package with an ``__init__.py``; the config
groups below it are plain folders of yaml, shipped as package data. Only this folder is a package.

From the repo root it also makes ``import conf`` find this (empty) package; no installed distribution
provides a top-level ``conf`` (tests/test_package_configs.py checks), so nothing is shadowed. encoders/ and
datasets/ stay without one: ``datasets`` is Hugging Face's library (tests/test_layout.py).
"""
