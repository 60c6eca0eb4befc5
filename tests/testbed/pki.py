"""Certificates, keys, tokens and kubeconfigs for the throw-away test-bed control plane.

Why Python instead of openssl: ``cryptography`` is already a dev dependency, works the
same on every CI image and lets us write everything into one per-run directory without
shelling out.  Clients authenticate with static bearer tokens (``--token-auth-file``);
only the API server needs a serving certificate, and the service-account signing key is
a plain RSA key shared by the API server and the controller-manager.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Clients that get a kubeconfig.  All are in system:masters: the test bed tests the
# operator's RBAC with ServiceAccount tokens, not the control plane's own identities.
CLIENTS = ("admin", "kcm", "sched", "kwok")

_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
_SANS_IP = ("127.0.0.1", "10.96.0.1")


@dataclass(frozen=True)
class Pki:
    """Paths of everything :func:`generate` wrote."""

    dir: Path
    ca_crt: Path
    ca_key: Path
    apiserver_crt: Path
    apiserver_key: Path
    sa_key: Path
    sa_pub: Path
    tokens_csv: Path
    tokens: dict[str, str]


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def generate(pki_dir: Path, *, days: int = 30) -> Pki:
    """Create a CA, an API-server serving cert, the SA signing key and client tokens."""
    pki_dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

    ca_key = _key()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("tokenscale-testbed-ca"))
        .issuer_name(_name("tokenscale-testbed-ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    srv_key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in _SANS_DNS]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _SANS_IP]
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("kube-apiserver"))
        .issuer_name(ca_cert.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    sa_key = _key()

    paths = {
        "ca_crt": pki_dir / "ca.crt",
        "ca_key": pki_dir / "ca.key",
        "apiserver_crt": pki_dir / "apiserver.crt",
        "apiserver_key": pki_dir / "apiserver.key",
        "sa_key": pki_dir / "sa.key",
        "sa_pub": pki_dir / "sa.pub",
    }
    paths["ca_crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["ca_key"], ca_key)
    paths["apiserver_crt"].write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(paths["apiserver_key"], srv_key)
    _write_key(paths["sa_key"], sa_key)
    paths["sa_pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    tokens = {client: secrets.token_hex(16) for client in CLIENTS}
    tokens_csv = pki_dir / "tokens.csv"
    tokens_csv.write_text(
        "".join(f'{tok},{user},{user},"system:masters"\n' for user, tok in tokens.items())
    )
    tokens_csv.chmod(0o600)
    return Pki(dir=pki_dir, tokens_csv=tokens_csv, tokens=tokens, **paths)


def write_kubeconfig(
    path: Path, *, server: str, ca_path: Path, user: str, token: str, namespace: str = "default"
) -> Path:
    """Write a single-context kubeconfig that authenticates with a bearer token."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {"server": server, "certificate-authority": str(ca_path)},
            }
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {
                "name": "testbed",
                "context": {"cluster": "testbed", "user": user, "namespace": namespace},
            }
        ],
        "current-context": "testbed",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def serving_cert(
    ca_crt: Path,
    ca_key: Path,
    out_dir: Path,
    *,
    cn: str,
    ips: tuple[str, ...] = ("127.0.0.1",),
    dns: tuple[str, ...] = ("localhost",),
    days: int = 30,
) -> tuple[Path, Path]:
    """A serving cert signed by the test bed's CA, written as ``tls.crt``/``tls.key``.

    Why: webhooks the API server calls on loopback (the LWS manager's) must present a cert
    the API server trusts through the webhook configuration's ``caBundle``; the names are
    the ones controller-runtime's webhook server reads from its cert dir.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ca = x509.load_pem_x509_certificate(ca_crt.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    if not isinstance(signer, rsa.RSAPrivateKey):
        raise TypeError(f"{ca_key} is not an RSA key")
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False
        )
        .sign(signer, hashes.SHA256())
    )
    crt_path, key_path = out_dir / "tls.crt", out_dir / "tls.key"
    crt_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key_path, key)
    return crt_path, key_path
