"""Join a cluster that was started elsewhere, and the helpers every launcher shares."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import dask.config
from distributed import Client

from scdask._errors import InputError
from scdask.launch._security import SecurityLike, resolve_security

__all__ = ["connect"]

_DEFAULT_DASHBOARD = "127.0.0.1:0"


def dashboard_address(value: str | None = None) -> str:
    """The address the scheduler's dashboard binds to: loopback unless the user asks otherwise.

    ``value`` wins, then the ``scdask.launch.dashboard-address`` config key, then
    ``127.0.0.1:0`` (a free port on the loopback interface only: other hosts, and on a shared
    login node other users' browsers, reach it only through an SSH tunnel).
    """
    if value is not None:
        return value
    return str(dask.config.get("scdask.launch.dashboard-address", None) or _DEFAULT_DASHBOARD)


def announce(client: Client, *, kind: str) -> None:
    """Print where the scheduler listens and the dashboard link (stderr keeps stdout clean)."""
    if not dask.config.get("scdask.launch.announce", True):
        return
    link = client.dashboard_link
    print(f"scdask: {kind} cluster at {client.scheduler.address}", file=sys.stderr)
    if link:
        print(f"scdask: dashboard {link}", file=sys.stderr)


def connect(
    address_or_scheduler_file: str | os.PathLike,
    *,
    security: SecurityLike = None,
    timeout: str | float | None = None,
) -> Client:
    """A Client for a cluster started elsewhere (another process, an sbatch job, a notebook).

    Parameters
    ----------
    address_or_scheduler_file
        A scheduler address (``tls://host:8786``) or the path of the JSON scheduler file that
        ``dask scheduler --scheduler-file`` wrote (``deploy/slurm/scheduler.sbatch`` writes one).
    security
        TLS settings, as for :func:`scdask.launch.slurm`: a folder with ``ca.pem``, ``cert.pem``
        and ``key.pem``, a mapping of those files, or a
        :class:`~distributed.security.Security`. ``None`` uses the ``distributed.comm.tls``
        config (a plain TCP connection when that is unset). ``True`` is refused: a new
        certificate cannot match a running cluster.
    timeout
        How long to try to connect (default: ``distributed.comm.timeouts.connect``).

    Returns
    -------
    distributed.Client

    Examples
    --------
    >>> from scdask.launch import connect
    >>> client = connect("~/scdask/scheduler.json", security="~/scdask/tls")  # doctest: +SKIP
    >>> client.submit(sum, [1, 2, 3]).result()  # doctest: +SKIP
    6
    """
    if security is True:
        raise InputError(
            "connect() needs the certificate the cluster was started with: pass its folder, "
            "files or Security object, not True"
        )
    sec = resolve_security(security)
    kwargs: dict = {}
    if sec is not None:
        kwargs["security"] = sec
    if timeout is not None:
        kwargs["timeout"] = timeout

    target = os.fspath(address_or_scheduler_file)
    path = Path(target).expanduser()
    if "://" not in target and path.is_file():
        with path.open() as f:
            info = json.load(f)
        if "address" not in info:
            raise InputError(f"{path} is not a dask scheduler file (no 'address' key)")
        client = Client(scheduler_file=str(path), **kwargs)
    elif "://" not in target and (target.endswith(".json") or os.sep in target):
        raise FileNotFoundError(f"scheduler file not found: {path}")
    else:
        client = Client(target, **kwargs)
    announce(client, kind="remote")
    return client
