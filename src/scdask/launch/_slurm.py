"""dask-jobqueue SLURMCluster from a named site profile, with TLS and GPU (dask-cuda) workers."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from distributed import Client

from scdask._errors import InputError
from scdask.launch._connect import announce
from scdask.launch._connect import dashboard_address as _dashboard_address
from scdask.launch._heap import tune_heap
from scdask.launch._profiles import resolve_profile
from scdask.launch._security import SecurityLike, resolve_security

__all__ = ["job_script", "slurm", "slurm_cluster"]

#: The worker command of GPU jobs: ``python -m dask cuda worker`` (dask-cuda registers the
#: ``cuda`` subcommand of the ``dask`` CLI). It starts one worker per GPU the job was given.
CUDA_WORKER_COMMAND = "dask cuda worker"


def _import_slurm_cluster() -> Any:
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:
        raise ImportError(
            "scdask.launch.slurm() needs dask-jobqueue; install it with pip install 'scdask[slurm]'"
        ) from err
    return SLURMCluster


def _has_directive(directives: list[str], flag: str) -> bool:
    return any(d.split("=")[0].split()[0] == flag for d in directives if d.strip())


def _cluster_kwargs(
    profile: str | Mapping[str, Any] | None,
    *,
    gpus_per_job: int | None,
    security: SecurityLike,
    overrides: Mapping[str, Any],
) -> dict[str, Any]:
    """SLURMCluster keyword arguments from a profile, the overrides and scdask's rules."""
    settings = resolve_profile(profile)
    settings.update({k.replace("-", "_"): v for k, v in overrides.items()})

    profile_gpus = settings.pop("gpus_per_job", 0) or 0
    gpus = int(profile_gpus if gpus_per_job is None else gpus_per_job)
    if gpus < 0:
        raise InputError(f"gpus_per_job must be >= 0, got {gpus}")

    if settings.get("cores") is None or settings.get("memory") is None:
        raise InputError(
            "a SLURM job needs 'cores' and 'memory': choose a profile that sets them "
            "(scdask.launch.list_profiles()) or pass cores=..., memory=..."
        )

    directives = list(settings.get("job_extra_directives") or [])
    skip = list(settings.get("job_directives_skip") or [])
    if "--mem" in skip and not any(d.lstrip().startswith("--mem-per-") for d in directives):
        # Without --mem, CR_Core_Memory sites give the job the whole node's memory and the
        # next job pends. Only drop it when another memory request replaces it.
        raise InputError(
            "job_directives_skip=['--mem'] leaves the job without a memory request; keep "
            "--mem, or add a replacement such as job_extra_directives=['--mem-per-gpu=32G']"
        )

    worker_args = list(settings.get("worker_extra_args") or [])
    if gpus:
        if not _has_directive(directives, "--gres") and not _has_directive(directives, "--gpus"):
            directives.append(f"--gres=gpu:{gpus}")
        settings.setdefault("worker_command", CUDA_WORKER_COMMAND)
        if settings["worker_command"] == CUDA_WORKER_COMMAND:
            # dask-cuda starts one worker per GPU; tell dask-jobqueue so that it splits the
            # job's threads and memory per worker and expects `gpus` workers per job.
            settings["processes"] = gpus
            if "--resources" not in worker_args:
                worker_args += ["--resources", "GPU=1"]
    settings["job_extra_directives"] = directives
    settings["job_directives_skip"] = skip
    settings["worker_extra_args"] = worker_args

    sched = dict(settings.get("scheduler_options") or {})
    sched.setdefault("dashboard_address", _dashboard_address(None))
    settings["scheduler_options"] = sched

    sec = resolve_security(security, directory=settings.get("shared_temp_directory"))
    if sec is None:
        host = sched.get("host")
        if host not in ("127.0.0.1", "localhost", "::1"):
            warnings.warn(
                "SLURM cluster without TLS: anyone who can reach the scheduler port can run "
                "code on the workers. Use security=True (the default) unless the network is "
                "trusted.",
                UserWarning,
                stacklevel=3,
            )
    else:
        settings["security"] = sec
        settings["protocol"] = "tls://"
    return settings


def slurm_cluster(
    profile: str | Mapping[str, Any] | None = None,
    *,
    gpus_per_job: int | None = None,
    security: SecurityLike = True,
    **overrides: Any,
) -> Any:
    """A :class:`dask_jobqueue.SLURMCluster` from a profile, with no job submitted yet.

    :func:`slurm` is what most users want; this is for code that manages the cluster itself
    (``cluster.scale``, ``cluster.adapt``) or inspects ``cluster.job_script()``.

    Parameters
    ----------
    profile, gpus_per_job, security, **overrides
        As for :func:`slurm`.

    Returns
    -------
    dask_jobqueue.SLURMCluster

    Examples
    --------
    >>> from scdask.launch import slurm_cluster
    >>> cluster = slurm_cluster("local")
    >>> "#SBATCH --mem=" in cluster.job_script()
    True
    >>> cluster.close()
    """
    slurm_cls = _import_slurm_cluster()
    kwargs = _cluster_kwargs(
        profile, gpus_per_job=gpus_per_job, security=security, overrides=overrides
    )
    return slurm_cls(**kwargs)


def job_script(
    profile: str | Mapping[str, Any] | None = None,
    *,
    gpus_per_job: int | None = None,
    security: SecurityLike = True,
    **overrides: Any,
) -> str:
    """The sbatch script one job of :func:`slurm` would submit (nothing is submitted).

    Parameters
    ----------
    profile, gpus_per_job, security, **overrides
        As for :func:`slurm`.

    Returns
    -------
    str
        The job script, ``#SBATCH`` header and worker command.

    Examples
    --------
    >>> from scdask.launch import job_script
    >>> print(job_script("local", security=False))  # doctest: +SKIP
    #!/usr/bin/env bash
    #SBATCH -J dask-worker
    ...
    """
    cluster = slurm_cluster(profile, gpus_per_job=gpus_per_job, security=security, **overrides)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def slurm(
    profile: str | Mapping[str, Any] | None = None,
    *,
    jobs: int | None = None,
    minimum_jobs: int | None = None,
    maximum_jobs: int | None = None,
    gpus_per_job: int | None = None,
    security: SecurityLike = True,
    **overrides: Any,
) -> Client:
    """Start a SLURM-backed cluster from a named profile and return its Client.

    The scheduler runs in this process (on the login node or in your own job); every SLURM
    job runs one or more workers that connect back to it. Connections use TLS with a
    certificate made for this cluster unless ``security=False``: no plaintext scheduler port.
    Each job script keeps ``--mem``, so a job never takes a whole node's memory by accident.

    Parameters
    ----------
    profile
        Name of a site profile (``local``, ``cpu``, ``gpu`` or one you configured; see
        :func:`list_profiles` and ``deploy/slurm/jobqueue.yaml``), a mapping of settings, or
        ``None`` for the ``scdask.launch.profile`` config key.
    jobs
        Number of jobs to submit now (default 1). Not allowed together with adaptive scaling.
    minimum_jobs, maximum_jobs
        Scale adaptively between these numbers of jobs (either may be given; the other
        defaults to 0 and ``minimum_jobs`` or 1 respectively).
    gpus_per_job
        GPUs per job; above 0 the job asks for ``--gres=gpu:N`` and runs ``dask cuda worker``
        (one worker per GPU, each with the resource ``GPU=1``). Default: the profile's
        ``gpus-per-job``, else 0.
    security
        ``True`` (default): a temporary certificate written (mode 0600) to a private folder
        under ``shared_temp_directory`` or ``scdask.launch.tls-directory`` (default
        ``~/.cache/scdask/tls``, which must be visible to the compute nodes). A folder,
        mapping of files or :class:`~distributed.security.Security`: your certificates.
        ``False``: no TLS (warns unless the scheduler is on 127.0.0.1).
    **overrides
        :class:`dask_jobqueue.SLURMCluster` keyword arguments that replace the profile's
        (``cores``, ``memory``, ``queue``, ``account``, ``walltime``, ``interface``,
        ``job_extra_directives``, ``job_script_prologue``, ``log_directory``, ...).

    Returns
    -------
    distributed.Client
        Connected to the new cluster; ``client.cluster`` is the SLURMCluster. Workers arrive
        when SLURM starts the jobs: ``client.wait_for_workers(n)`` waits for them.

    Raises
    ------
    ImportError
        When dask-jobqueue is not installed (``pip install 'scdask[slurm]'``).

    Examples
    --------
    >>> from scdask.launch import slurm
    >>> client = slurm("cpu", jobs=4, queue="normal", account="lab42")  # doctest: +SKIP
    >>> client = slurm("gpu", minimum_jobs=0, maximum_jobs=8)  # doctest: +SKIP
    >>> client.wait_for_workers(1)  # doctest: +SKIP
    """
    adaptive = minimum_jobs is not None or maximum_jobs is not None
    if adaptive and jobs is not None:
        raise InputError("pass either jobs= or minimum_jobs=/maximum_jobs=, not both")
    cluster = slurm_cluster(profile, gpus_per_job=gpus_per_job, security=security, **overrides)
    try:
        if adaptive:
            low = int(minimum_jobs or 0)
            high = int(maximum_jobs if maximum_jobs is not None else max(low, 1))
            if high < low:
                raise InputError(f"maximum_jobs ({high}) < minimum_jobs ({low})")
            cluster.adapt(minimum_jobs=low, maximum_jobs=high)
        else:
            n = 1 if jobs is None else int(jobs)
            if n < 0:
                raise InputError(f"jobs must be >= 0, got {n}")
            cluster.scale(jobs=n)
        client = Client(cluster, security=cluster.security)
        tune_heap(client)
    except BaseException:
        cluster.close()
        raise
    announce(client, kind="SLURM")
    return client
