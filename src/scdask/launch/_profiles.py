"""Named SLURM site profiles: the job sizes and site settings that ``scdask.launch.slurm`` uses.

A profile is a mapping of :class:`dask_jobqueue.SLURMCluster` keyword arguments (YAML keys may
use dashes, as in dask's own config files) plus one scdask key, ``gpus-per-job``. Profiles come
from three places, later ones replacing earlier ones of the same name:

1. the built-in profiles below (``local``, ``cpu``, ``gpu``);
2. the dask config under ``scdask.launch.profiles`` (so a YAML file in ``~/.config/dask/``,
   such as the repository's ``deploy/slurm/jobqueue.yaml``, adds site profiles);
3. the file named by the ``scdask.launch.profiles-file`` config key, if set.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
import yaml

from scdask._errors import InputError

__all__ = ["BUILTIN_PROFILES", "list_profiles", "load_profiles", "resolve_profile"]

#: Profiles that ship with scdask. ``deploy/slurm/jobqueue.yaml`` repeats them (a test checks
#: that the two agree) next to commented site examples.
BUILTIN_PROFILES: dict[str, dict[str, Any]] = {
    # The one-node SLURM of scripts/slurm-local.sh (tests, CI, trying things on a laptop).
    "local": {
        "cores": 1,
        "memory": "1GiB",
        "processes": 1,
        "queue": "debug",
        "walltime": "00:30:00",
        "death-timeout": 60,
        "scheduler-options": {"host": "127.0.0.1"},
    },
    # A generic CPU node share: one worker process with 8 threads and 32 GiB per job.
    "cpu": {
        "cores": 8,
        "memory": "32GiB",
        "processes": 1,
        "walltime": "02:00:00",
        "death-timeout": 120,
        "local-directory": "$TMPDIR",
    },
    # One GPU per job, one dask-cuda worker per GPU.
    "gpu": {
        "cores": 8,
        "memory": "64GiB",
        "gpus-per-job": 1,
        "walltime": "02:00:00",
        "death-timeout": 120,
        "local-directory": "$TMPDIR",
    },
}


def _normalise(profile: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).replace("-", "_"): copy.deepcopy(v) for k, v in profile.items()}


def load_profiles(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read the profiles of one YAML file.

    The file holds ``scdask: launch: profiles: {name: {...}}`` (the layout of a dask config
    file, so the same file can be dropped into ``~/.config/dask/``), or just ``{name: {...}}``.

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    dict
        Profile name → settings, with keys as written in the file.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from scdask.launch import load_profiles
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "site.yaml"
    >>> _ = p.write_text("scdask:\\n  launch:\\n    profiles:\\n      tiny: {cores: 1, memory: 1GiB}\\n")
    >>> load_profiles(p)
    {'tiny': {'cores': 1, 'memory': '1GiB'}}
    """
    with Path(path).expanduser().open() as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, Mapping):
        raise InputError(f"{path}: expected a mapping of profiles, got {type(data).__name__}")
    if "scdask" in data:
        data = (data.get("scdask") or {}).get("launch", {}).get("profiles", {}) or {}
    out: dict[str, dict[str, Any]] = {}
    for name, settings in data.items():
        if not isinstance(settings, Mapping):
            raise InputError(f"{path}: profile {name!r} must be a mapping, got {settings!r}")
        out[str(name)] = dict(settings)
    return out


def _all_profiles() -> dict[str, dict[str, Any]]:
    profiles: dict[str, dict[str, Any]] = {k: dict(v) for k, v in BUILTIN_PROFILES.items()}
    configured = dask.config.get("scdask.launch.profiles", None) or {}
    for name, settings in configured.items():
        profiles[str(name)] = dict(settings)
    extra_file = dask.config.get("scdask.launch.profiles-file", None)
    if extra_file:
        profiles.update(load_profiles(os.path.expandvars(str(extra_file))))
    return profiles


def list_profiles() -> list[str]:
    """Names of the SLURM profiles available now (built-in, configured, and from a file).

    Returns
    -------
    list of str
        Sorted profile names.

    Examples
    --------
    >>> from scdask.launch import list_profiles
    >>> "local" in list_profiles()
    True
    """
    return sorted(_all_profiles())


def resolve_profile(profile: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """The settings of a profile, with dashes in keys turned into underscores.

    Parameters
    ----------
    profile
        A profile name, a mapping of settings (used as is), or ``None`` for the profile named
        by the ``scdask.launch.profile`` config key (no profile when that is unset).

    Returns
    -------
    dict
        :class:`dask_jobqueue.SLURMCluster` keyword arguments plus ``gpus_per_job`` when the
        profile sets it. A fresh copy: changing it does not change the profile.

    Examples
    --------
    >>> from scdask.launch import resolve_profile
    >>> resolve_profile("local")["scheduler_options"]
    {'host': '127.0.0.1'}
    """
    if profile is None:
        profile = dask.config.get("scdask.launch.profile", None)
        if profile is None:
            return {}
    if isinstance(profile, Mapping):
        return _normalise(profile)
    profiles = _all_profiles()
    if profile not in profiles:
        raise KeyError(
            f"unknown SLURM profile {profile!r}; available: {', '.join(sorted(profiles))}. "
            "Add site profiles under 'scdask.launch.profiles' in a dask config file "
            "(see deploy/slurm/jobqueue.yaml)."
        )
    return _normalise(profiles[profile])
