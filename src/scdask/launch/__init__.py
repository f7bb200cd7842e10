"""Start or join the engine that runs scdask's graphs.

The rest of scdask only builds Dask graphs; which cluster runs them is decided here, and only
here (no other module imports a cluster class):

- :func:`local` — a LocalCluster of worker processes on this machine (the default engine);
- :func:`cuda` — a dask-cuda LocalCUDACluster, one worker per GPU (``pip install 'scdask[gpu]'``);
- :func:`slurm` — a dask-jobqueue SLURMCluster from a named site profile, TLS by default
  (``pip install 'scdask[slurm]'``);
- :func:`connect` — a client for a cluster started elsewhere (a scheduler address or file).

The three launchers set the workers' heaps up for scdask's block-sized allocations
(:func:`tune_heap`, which a cluster started another way can call too).

Examples
--------
>>> import scdask.launch
>>> client = scdask.launch.local(n_workers=2)  # doctest: +SKIP
>>> client = scdask.launch.slurm("cpu", jobs=4)  # doctest: +SKIP
"""

from __future__ import annotations

from scdask.launch._connect import connect
from scdask.launch._cuda import cuda
from scdask.launch._heap import tune_heap
from scdask.launch._local import local, machine_size
from scdask.launch._profiles import (
    BUILTIN_PROFILES,
    list_profiles,
    load_profiles,
    resolve_profile,
)
from scdask.launch._security import (
    certificate_files,
    resolve_security,
    temporary_security,
)
from scdask.launch._slurm import job_script, slurm, slurm_cluster

__all__ = [
    "BUILTIN_PROFILES",
    "certificate_files",
    "connect",
    "cuda",
    "job_script",
    "list_profiles",
    "load_profiles",
    "local",
    "machine_size",
    "resolve_profile",
    "resolve_security",
    "slurm",
    "slurm_cluster",
    "temporary_security",
    "tune_heap",
]
