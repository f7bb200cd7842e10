"""TLS: without the cluster's certificate a client cannot connect; key files stay private."""

from __future__ import annotations

import asyncio
import json
import stat

import dask.array as da
import numpy as np
import pytest
from distributed import Client
from distributed.comm import connect as comm_connect
from distributed.security import Security

from scdask.launch import (
    certificate_files,
    connect,
    local,
    resolve_security,
    temporary_security,
)


def _identity(address: str, security: Security | None) -> dict:
    """Open one comm to the scheduler, ask who it is, return the answer (or raise)."""

    async def ask() -> dict:
        args = security.get_connection_args("client") if security is not None else {}
        comm = await comm_connect(address, timeout="5s", **args)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            await comm.close()

    return asyncio.run(ask())


@pytest.fixture(scope="module")
def tls_client(tmp_path_factory):
    work = tmp_path_factory.mktemp("tls")
    certs = work / "certs"
    sec = certificate_files(directory=certs)
    sched_file = work / "scheduler.json"
    client = local(
        n_workers=1,
        threads_per_worker=1,
        security=sec,
        scheduler_kwargs={"scheduler_file": str(sched_file)},
    )
    yield client, certs, sched_file
    client.shutdown()


def test_tls_cluster_computes_with_the_certificate(tls_client):
    client, certs, _ = tls_client
    assert client.scheduler.address.startswith("tls://127.0.0.1:")
    x = np.arange(1000.0).reshape(100, 10)
    got = client.compute(da.from_array(x, chunks=(10, 10)).sum(axis=1)).result()
    np.testing.assert_array_equal(got, x.sum(axis=1))
    # the certificate opens a raw comm too (the control for the refusals below)
    assert _identity(client.scheduler.address, resolve_security(certs))["type"] == "Scheduler"


def test_plain_client_cannot_connect(tls_client):
    client, _, _ = tls_client
    address = client.scheduler.address
    port = address.rsplit(":", 1)[1]
    # No TLS at all: a plaintext TCP client to the scheduler's port is cut off.
    with pytest.raises(OSError):
        _identity(f"tcp://127.0.0.1:{port}", None)
    # The TLS address without a certificate: the client cannot even start a handshake.
    with pytest.raises(TypeError, match="TLS"):
        _identity(address, None)
    # The same through a full Client.
    with pytest.raises(OSError):
        Client(f"tcp://127.0.0.1:{port}", timeout="5s")


def test_client_with_another_certificate_cannot_connect(tls_client, tmp_path):
    client, _, _ = tls_client
    stranger = certificate_files(directory=tmp_path / "other")
    with pytest.raises(OSError, match="certificate"):
        _identity(client.scheduler.address, stranger)


def test_connect_by_scheduler_file_needs_the_certificate(tls_client):
    client, certs, sched_file = tls_client
    assert json.loads(sched_file.read_text())["address"] == client.scheduler.address

    with connect(sched_file, security=certs) as joined:
        assert joined.submit(sum, [1, 2, 3]).result() == 6
        assert set(joined.scheduler_info()["workers"]) == set(client.scheduler_info()["workers"])
    with connect(client.scheduler.address, security=certs) as joined:
        assert joined.submit(pow, 2, 10).result() == 1024
    with pytest.raises(TypeError, match="TLS"):
        connect(sched_file, timeout="5s")


def test_connect_refuses_a_new_certificate_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="certificate the cluster was started with"):
        connect("tls://127.0.0.1:1", security=True)
    with pytest.raises(FileNotFoundError, match="scheduler file not found"):
        connect(tmp_path / "missing.json")


def test_certificate_files_are_private_and_reused(tmp_path):
    folder = tmp_path / "tls"
    sec = certificate_files(directory=folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in ("ca.pem", "cert.pem", "key.pem"):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert "PRIVATE KEY" in (folder / "key.pem").read_text()
    assert sec.require_encryption
    assert sec.tls_ca_file == str(folder / "ca.pem")
    assert sec.tls_worker_key == str(folder / "key.pem")

    key_before = (folder / "key.pem").read_text()
    certificate_files(directory=folder)
    assert (folder / "key.pem").read_text() == key_before
    certificate_files(directory=folder, overwrite=True)
    assert (folder / "key.pem").read_text() != key_before


def test_temporary_security_uses_a_private_folder(tmp_path):
    import dask.config

    with dask.config.set({"scdask.launch.tls-directory": str(tmp_path)}):
        a = temporary_security()
        b = temporary_security()
    assert a.tls_ca_file != b.tls_ca_file
    for sec in (a, b):
        folder = tmp_path / sec.tls_ca_file.split("/")[-2]
        assert folder.parent == tmp_path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_resolve_security_forms(tmp_path):
    assert resolve_security(None) is None
    assert resolve_security(False) is None
    given = Security()
    assert resolve_security(given) is given

    sec = certificate_files(directory=tmp_path)
    from_folder = resolve_security(tmp_path)
    assert from_folder.tls_client_cert == sec.tls_client_cert
    from_files = resolve_security(
        {"ca_file": tmp_path / "ca.pem", "cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem"}
    )
    assert from_files.tls_scheduler_key == str(tmp_path / "key.pem")

    with pytest.raises(ValueError, match="ca_file"):
        resolve_security({"cert": tmp_path / "cert.pem"})
    with pytest.raises(FileNotFoundError):
        resolve_security({"ca_file": tmp_path / "nope.pem", "cert": tmp_path / "cert.pem"})
    with pytest.raises(FileNotFoundError):
        resolve_security(tmp_path / "no-such-folder")
    with pytest.raises(TypeError):
        resolve_security(42)


@pytest.mark.parametrize("generator", ["openssl", "cryptography"])
def test_generated_certificates_load_as_tls_chain(generator, tmp_path):
    import shutil
    import ssl

    from scdask.launch import _security

    if generator == "openssl":
        if shutil.which("openssl") is None:
            pytest.skip("no openssl command")
        cert, key = _security._pem_pair_openssl()
    else:
        pytest.importorskip("cryptography", reason="cryptography is not installed")
        cert, key = _security._pem_pair_cryptography()
    assert cert.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE KEY-----" in key
    (tmp_path / "cert.pem").write_text(cert)
    (tmp_path / "key.pem").write_text(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")  # raises when they differ
    ctx.load_verify_locations(tmp_path / "cert.pem")
