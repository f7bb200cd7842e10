"""Register scdask's defaults in ``dask.config`` (namespace ``scdask``)."""

from __future__ import annotations

import os
from pathlib import Path

import dask.config
import yaml

_DEFAULTS = Path(__file__).with_name("scdask.yaml")


def _register() -> None:
    with _DEFAULTS.open() as f:
        defaults = yaml.safe_load(f)
    dask.config.update_defaults(defaults)
    # Re-read the environment so DASK_SCDASK__* variables win over the defaults.
    dask.config.refresh()


def cache_dir() -> Path:
    """The folder for scdask's on-disk caches, created on first use.

    Examples
    --------
    >>> from scdask._config import cache_dir
    >>> cache_dir().is_dir()
    True
    """
    path = Path(os.path.expanduser(str(dask.config.get("scdask.cache-dir"))))
    path.mkdir(parents=True, exist_ok=True)
    return path


_register()
