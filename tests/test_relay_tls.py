"""The relay serves TLS when given a certificate (defence in depth; the
protocol does not rely on it). A real relay process on 127.0.0.1."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SECURECHAN = Path(sys.executable).with_name("securechan")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (test data, made per run)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_relay_serves_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    proc = subprocess.Popen(
        [
            str(SECURECHAN),
            "relay",
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "relay"),
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = ""
        assert proc.stdout is not None
        for _ in range(10):  # key, fingerprint, ... then the URL
            line = proc.stdout.readline()
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        assert url.startswith("https://127.0.0.1:"), url

        async def check() -> None:
            trusted = ssl.create_default_context(cafile=str(cert))
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/healthz", ssl=trusted) as r:
                    assert r.status == 200
                    assert await r.json() == {"status": "ok"}
                # A client that does not trust the certificate refuses to talk.
                try:
                    async with s.get(url + "/healthz", ssl=ssl.create_default_context()):
                        raise AssertionError("an untrusted certificate was accepted")
                except aiohttp.ClientConnectorCertificateError:
                    pass

        asyncio.run(asyncio.wait_for(check(), timeout=20))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_relay_refuses_half_a_tls_config(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    run = subprocess.run(
        [
            str(SECURECHAN),
            "relay",
            "serve",
            "--port",
            "0",
            "--data",
            str(tmp_path / "r"),
            "--tls-cert",
            str(cert),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == ["securechan: give both --tls-cert and --tls-key"]
