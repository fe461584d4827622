"""TLS files for the etcd listener, as etcd deployments use them: one cluster CA, a server
certificate per node (for its host name or address, and loopback), and one client
certificate that etcdctl presents (``--cacert --cert --key``). Keys are ECDSA P-256; every
file is written 0600 in a 0700 directory, like the cluster keys.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough that a test cluster never sees one expire; an operator replaces them with
# the organisation's own for production.
VALID_DAYS: Final = 3650


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_cert: Path
    node_certs: dict[int, tuple[Path, Path]]  # node id -> (cert, key)
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    try:
        ip = ipaddress.ip_address(host)
        if str(ip) != "127.0.0.1":
            names.append(x509.IPAddress(ip))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    return names


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usage: list[x509.ObjectIdentifier],
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    )
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def write_tls_files(out: Path, hosts: tuple[str, ...], cluster_id: str) -> TlsFiles:
    """Write ``ca.crt`` (and ``ca.key``), ``nK.crt``/``nK.key`` per node and
    ``client.crt``/``client.key`` under ``out`` (created 0700)."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{cluster_id} etcd CA")
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _pem_key(ca_key))
    nodes: dict[int, tuple[Path, Path]] = {}
    for k, host in enumerate(hosts, start=1):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            f"n{k}",
            key,
            ca_name,
            ca_key,
            usage=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            san=_san(host),
        )
        crt_path, key_path = out / f"n{k}.crt", out / f"n{k}.key"
        _write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
        _write(key_path, _pem_key(key))
        nodes[k] = (crt_path, key_path)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("client", client_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    _write(out / "client.crt", client.public_bytes(serialization.Encoding.PEM))
    _write(out / "client.key", _pem_key(client_key))
    return TlsFiles(out / "ca.crt", nodes, out / "client.crt", out / "client.key")
