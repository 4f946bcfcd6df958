"""A throwaway PKI for the local control plane: CA, apiserver serving cert, client certs, SA key."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


class Pki:
    """Creates every file the control plane needs under `root`; `Pki(root).create()` is idempotent."""

    def __init__(self, root: Path, extra_ips: tuple[str, ...] = ()) -> None:
        self.root = root
        #: More addresses the apiserver answers on (a cluster in a network namespace: its node IP).
        self.extra_ips = extra_ips

    def path(self, name: str) -> Path:
        return self.root / name

    def create(self) -> Pki:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.path("ca.crt").exists():
            return self
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("hubbub-test-ca"))
            .issuer_name(_name("hubbub-test-ca"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        _write_key(self.path("ca.key"), ca_key)
        self.path("ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

        def leaf(name: str, subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> None:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(subject)
                .issuer_name(ca.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now)
                .not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            )
            if sans:
                builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
            _write_key(self.path(f"{name}.key"), key)
            cert = builder.sign(ca_key, hashes.SHA256())
            self.path(f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.extra_ips),
        ]
        leaf("apiserver", _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, sans)
        leaf("admin", _name("admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
        # The aggregator presents this identity to extension API servers (custom metrics).
        leaf("front-proxy-client", _name("front-proxy-client"), ExtendedKeyUsageOID.CLIENT_AUTH, [])
        _write_key(self.path("sa.key"), rsa.generate_private_key(public_exponent=65537, key_size=2048))
        return self
