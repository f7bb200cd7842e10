"""TLS for scdask clusters: temporary certificates written to private files, or the user's own.

A scheduler that listens on a network port without TLS accepts any client that can reach it, and
a client can run arbitrary code on every worker. ``scdask.launch`` therefore encrypts and
authenticates every connection of a multi-node cluster by default. The certificate is
self-signed, made for this one cluster and shared by the scheduler, the workers and the client;
a peer without it cannot complete the TLS handshake.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dask.config
from distributed.security import Security

from scdask._errors import InputError

__all__ = ["SecurityLike", "certificate_files", "resolve_security", "temporary_security"]

#: What the ``security=`` argument of the launchers accepts.
SecurityLike = bool | None | Security | Mapping[str, Any] | str | os.PathLike

_CA = "ca.pem"
_CERT = "cert.pem"
_KEY = "key.pem"


def _pem_pair_cryptography() -> tuple[str, str]:
    sec = Security.temporary()
    return sec.tls_scheduler_cert, sec.tls_scheduler_key


def _pem_pair_openssl() -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ImportError(
            "Temporary TLS certificates need the 'cryptography' package or the 'openssl' "
            "command; install one of them (pip install cryptography), or pass certificate "
            "files with security={'ca_file': ..., 'cert': ..., 'key': ...}."
        )
    with tempfile.TemporaryDirectory(prefix="scdask-tls-") as tmp:
        cert, key = Path(tmp, _CERT), Path(tmp, _KEY)
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "365",
                "-subj",
                "/CN=dask-internal",
                "-addext",
                "subjectAltName=DNS:dask-internal",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return cert.read_text(), key.read_text()


def _new_pem_pair() -> tuple[str, str]:
    """A new self-signed certificate and its key, as PEM text."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _pem_pair_openssl()
    return _pem_pair_cryptography()


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def certificate_files(*, directory: str | os.PathLike, overwrite: bool = False) -> Security:
    """Write a new self-signed certificate to ``directory`` and return the matching Security.

    The folder is created with mode ``0700`` and the files with ``0600``: only the user who
    starts the cluster can read the key. Use it when the scheduler, the workers and the client
    start separately (``deploy/slurm/scheduler.sbatch``) and must find the same files on a
    shared filesystem.

    Parameters
    ----------
    directory
        Folder for ``ca.pem``, ``cert.pem`` and ``key.pem``.
    overwrite
        Replace existing files. When ``False`` and the three files exist, they are reused.

    Returns
    -------
    distributed.security.Security
        File-based TLS configuration for every role, with ``require_encryption=True``.

    Examples
    --------
    >>> import tempfile
    >>> from scdask.launch import certificate_files
    >>> sec = certificate_files(directory=tempfile.mkdtemp())
    >>> sec.require_encryption
    True
    """
    folder = Path(directory).expanduser()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    ca, cert, key = folder / _CA, folder / _CERT, folder / _KEY
    if overwrite or not (ca.is_file() and cert.is_file() and key.is_file()):
        cert_pem, key_pem = _new_pem_pair()
        _write_private(key, key_pem)
        _write_private(cert, cert_pem)
        # Self-signed: the certificate is its own certificate authority.
        _write_private(ca, cert_pem)
    return _files_security(ca_file=ca, cert=cert, key=key)


def _files_security(
    *, ca_file: str | os.PathLike, cert: str | os.PathLike, key: str | os.PathLike | None
) -> Security:
    paths = {"ca_file": ca_file, "cert": cert, "key": key}
    resolved: dict[str, str | None] = {}
    for name, value in paths.items():
        if value is None:
            resolved[name] = None
            continue
        p = Path(value).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"TLS {name} file not found: {p}")
        resolved[name] = str(p)
    kwargs: dict[str, Any] = {"tls_ca_file": resolved["ca_file"], "require_encryption": True}
    for role in ("scheduler", "worker", "client"):
        kwargs[f"tls_{role}_cert"] = resolved["cert"]
        kwargs[f"tls_{role}_key"] = resolved["key"]
    return Security(**kwargs)


def _temporary_folder(directory: str | os.PathLike | None) -> Path:
    if directory is None:
        directory = dask.config.get("scdask.launch.tls-directory", None) or "~/.cache/scdask/tls"
    parent = Path(os.path.expandvars(str(directory))).expanduser()
    parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Path(tempfile.mkdtemp(prefix="cluster-", dir=parent))


def temporary_security(*, directory: str | os.PathLike | None = None) -> Security:
    """A new certificate for one cluster, in a private folder removed when Python exits.

    Parameters
    ----------
    directory
        Parent folder for the private certificate folder. Workers started by SLURM read the
        files, so on a cluster it must be on a filesystem the compute nodes share. Default:
        ``scdask.launch.tls-directory`` from the dask config, else ``~/.cache/scdask/tls``.

    Returns
    -------
    distributed.security.Security
        File-based TLS configuration with ``require_encryption=True``.

    Examples
    --------
    >>> from scdask.launch import temporary_security
    >>> sec = temporary_security()
    >>> sec.get_connection_args("client")["require_encryption"]
    True
    """
    folder = _temporary_folder(directory)
    try:
        sec = certificate_files(directory=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    # The key lives as long as this process: workers started later still need to read it.
    atexit.register(shutil.rmtree, str(folder), True)
    return sec


def resolve_security(
    security: SecurityLike,
    *,
    directory: str | os.PathLike | None = None,
) -> Security | None:
    """Turn the ``security=`` argument of the launchers into a Security object (or ``None``).

    Parameters
    ----------
    security
        ``True``: a new temporary certificate (see :func:`temporary_security`).
        ``False`` or ``None``: no TLS. A :class:`~distributed.security.Security`: used as is.
        A mapping with ``ca_file``, ``cert`` and ``key`` (``key`` may be omitted when the
        certificate file holds it): those files. A path: a folder with ``ca.pem``,
        ``cert.pem`` and ``key.pem`` as written by :func:`certificate_files`.
    directory
        Where temporary certificates go (``security=True`` only).

    Returns
    -------
    distributed.security.Security or None

    Examples
    --------
    >>> from scdask.launch import resolve_security
    >>> resolve_security(False) is None
    True
    >>> resolve_security(True).require_encryption
    True
    """
    if security is None or security is False:
        return None
    if security is True:
        return temporary_security(directory=directory)
    if isinstance(security, Security):
        return security
    if isinstance(security, Mapping):
        unknown = set(security) - {"ca_file", "cert", "key"}
        if unknown or "ca_file" not in security or "cert" not in security:
            raise InputError(
                "security mapping needs the keys 'ca_file' and 'cert' (and optionally 'key'), "
                f"got {sorted(security)}"
            )
        return _files_security(
            ca_file=security["ca_file"], cert=security["cert"], key=security.get("key")
        )
    if isinstance(security, str | os.PathLike):
        folder = Path(security).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"TLS certificate folder not found: {folder}")
        return _files_security(ca_file=folder / _CA, cert=folder / _CERT, key=folder / _KEY)
    raise TypeError(
        "security must be True, False, None, a distributed.security.Security, a mapping of "
        f"certificate files or a folder, got {type(security).__name__}"
    )
