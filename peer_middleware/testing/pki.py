"""A throw-away PKI for tests: root and intermediate CAs, X.509-SVIDs, TLS server certificates.

Everything is generated in memory with :mod:`cryptography` when a test runs; no key
material ships with the package. Nothing here is fit for production: the keys live
in process memory, are written unencrypted by :meth:`Svid.write`, and
:meth:`TestCA.issue_svid` deliberately does **not** validate the SPIFFE ID or the
extensions it is asked for, so that tests can build the malformed certificates a
verifier must refuse (two URI SANs, a CA leaf, a wrong key usage, a bad ID).

Certificates follow the X.509-SVID profile as SPIRE and Istio issue them:

* a CA has ``basicConstraints CA=TRUE`` (critical), ``keyUsage keyCertSign, cRLSign``
  (critical), a subject key identifier and the URI SAN ``spiffe://<trust domain>``;
* a leaf SVID has exactly one URI SAN (the SPIFFE ID), ``basicConstraints CA=FALSE``
  (critical), ``keyUsage digitalSignature`` (critical; plus ``keyEncipherment`` for
  RSA), ``extendedKeyUsage serverAuth, clientAuth`` and authority/subject key
  identifiers. ``style="spire"`` gives it the subject ``O=SPIRE, C=US``;
  ``style="istio"`` gives it an empty subject and a critical SAN extension.

Times are timezone-aware UTC. By default a certificate is valid from five minutes ago
(to tolerate clock skew between processes) until one day from now (ten days for CAs).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import ClassVar, Literal, TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["KeyType", "PrivateKey", "Style", "Svid", "TestCA", "write_private"]

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyType = Literal["ec", "rsa"]
Style = Literal["spire", "istio"]

_SKEW = timedelta(minutes=5)
_LEAF_LIFETIME = timedelta(days=1)
_CA_LIFETIME = timedelta(days=10)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _generate_key(key_type: KeyType) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _key_type_of(key: PrivateKey) -> KeyType:
    return "rsa" if isinstance(key, rsa.RSAPrivateKey) else "ec"


def _validity(
    not_before: datetime | None, not_after: datetime | None, lifetime: timedelta
) -> tuple[datetime, datetime]:
    now = _now()
    start = now - _SKEW if not_before is None else not_before
    end = now + lifetime if not_after is None else not_after
    for name, value in (("not_before", start), ("not_after", end)):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware (use datetime.now(timezone.utc))")
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def _default_key_usage(key_type: KeyType) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=key_type == "rsa",
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _ski(key: PrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


@dataclass(frozen=True)
class Svid:
    """A certificate, its private key and the intermediates between it and the root.

    Used both for X.509-SVIDs (:meth:`TestCA.issue_svid`) and for plain TLS server
    certificates (:meth:`TestCA.issue_server_cert`). ``chain`` holds the intermediate
    CA certificates, nearest first; it excludes the leaf and the root.
    """

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def cert_pem(self) -> bytes:
        """The leaf certificate alone, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        """The leaf followed by its intermediates, PEM (what a TLS peer presents)."""
        return b"".join(
            cert.public_bytes(serialization.Encoding.PEM)
            for cert in (self.certificate, *self.chain)
        )

    @property
    def key_pem(self) -> bytes:
        """The private key, unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def der(self) -> bytes:
        """The leaf certificate, DER."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint_sha256(self) -> str:
        """Lower-case hex SHA-256 of the leaf's DER: what Envoy puts in XFCC ``Hash=``."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def uris(self) -> tuple[str, ...]:
        """The URI SANs of the leaf, in order (empty if it has none)."""
        try:
            san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return ()
        return tuple(san.value.get_values_for_type(x509.UniformResourceIdentifier))

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``<name>.pem`` (leaf + intermediates) and ``<name>-key.pem`` (mode 0600).

        Returns ``(cert_path, key_path)``. Existing files are overwritten. Write only
        into a temporary directory: the key is not encrypted.
        """
        directory = Path(directory)
        cert_path = directory / f"{name}.pem"
        key_path = directory / f"{name}-key.pem"
        cert_path.write_bytes(self.chain_pem)
        write_private(key_path, self.key_pem)
        return cert_path, key_path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable and writable by the owner only (0600).

    The file is created with mode 0600 (never briefly world-readable) and, if it
    already existed, has its mode reset before it is truncated and written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        if hasattr(os, "fchmod"):
            os.fchmod(handle.fileno(), 0o600)
        handle.write(data)


@dataclass(frozen=True)
class TestCA:
    """A certificate authority for one SPIFFE trust domain, for tests only.

    Create a root with :meth:`create`, an intermediate with :meth:`intermediate`,
    leaves with :meth:`issue_svid` and :meth:`issue_server_cert`. A verifier should
    trust :attr:`root` (``ca.root.pem``); intermediates travel in the leaf's chain.
    """

    __test__: ClassVar[bool] = False  # not a pytest test class, despite the name

    certificate: x509.Certificate
    private_key: PrivateKey = field(repr=False)
    trust_domain: str
    parent: TestCA | None = field(default=None, repr=False)

    @classmethod
    def create(
        cls,
        trust_domain: str = "cluster.local",
        *,
        key_type: KeyType = "ec",
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        common_name: str = "peer-middleware test root CA",
    ) -> TestCA:
        """Make a self-signed root CA whose URI SAN is ``spiffe://<trust_domain>``."""
        key = _generate_key(key_type)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        start, end = _validity(not_before, not_after, _CA_LIFETIME)
        ski = _ski(key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]
                ),
                critical=False,
            )
        )
        certificate = builder.sign(key, hashes.SHA256())
        return cls(certificate=certificate, private_key=key, trust_domain=trust_domain)

    @property
    def pem(self) -> bytes:
        """This CA's certificate, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def root(self) -> TestCA:
        """The self-signed root at the top of this CA's chain (``self`` for a root)."""
        ca = self
        while ca.parent is not None:
            ca = ca.parent
        return ca

    @property
    def chain(self) -> tuple[x509.Certificate, ...]:
        """This CA's certificate and those above it, nearest first, excluding the root."""
        certs: list[x509.Certificate] = []
        ca: TestCA | None = self
        while ca is not None and ca.parent is not None:
            certs.append(ca.certificate)
            ca = ca.parent
        return tuple(certs)

    @property
    def key_type(self) -> KeyType:
        """``"ec"`` or ``"rsa"``: the kind of key this CA signs with."""
        return _key_type_of(self.private_key)

    def intermediate(
        self,
        *,
        common_name: str = "peer-middleware test intermediate CA",
        path_length: int | None = 0,
        key_type: KeyType | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        trust_domain: str | None = None,
    ) -> TestCA:
        """Make an intermediate CA signed by this one.

        ``path_length=0`` (the default) lets it sign leaves only; pass ``None`` for no
        limit or a larger number to nest intermediates. ``trust_domain`` defaults to
        this CA's; its URI SAN is ``spiffe://<trust_domain>``.
        """
        domain = self.trust_domain if trust_domain is None else trust_domain
        key = _generate_key(key_type or self.key_type)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        start, end = _validity(not_before, not_after, _CA_LIFETIME)
        builder = (
            self._builder(key, subject, start, end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_CA_KEY_USAGE, critical=True)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{domain}")]),
                critical=False,
            )
        )
        certificate = self._sign(builder)
        return TestCA(certificate=certificate, private_key=key, trust_domain=domain, parent=self)

    def issue_svid(
        self,
        spiffe_id: str | None,
        *,
        dns_names: Iterable[str] = (),
        extra_uris: Iterable[str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        is_ca: bool = False,
        key_usage: x509.KeyUsage | None = None,
        subject: x509.Name | None = None,
        style: Style = "spire",
        key_type: KeyType | None = None,
    ) -> Svid:
        """Issue an X.509-SVID leaf for ``spiffe_id``; nothing about it is validated.

        The URI SAN is exactly ``spiffe_id`` followed by ``extra_uris`` (pass one to
        make an invalid two-ID certificate; pass ``spiffe_id=None`` for none at all).
        ``is_ca`` and ``key_usage`` override the SVID profile for negative tests.
        ``subject`` overrides the style's subject. ``key_type`` defaults to the CA's.
        """
        if style not in ("spire", "istio"):
            raise ValueError(f"style must be 'spire' or 'istio', not {style!r}")
        key = _generate_key(key_type or self.key_type)
        if subject is None:
            subject = (
                x509.Name([])
                if style == "istio"
                else x509.Name(
                    [
                        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIRE"),
                    ]
                )
            )
        uris = [*([] if spiffe_id is None else [spiffe_id]), *extra_uris]
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri) for uri in uris]
        names.extend(x509.DNSName(name) for name in dns_names)
        start, end = _validity(not_before, not_after, _LEAF_LIFETIME)
        builder = (
            self._builder(key, subject, start, end)
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .add_extension(
                _default_key_usage(_key_type_of(key)) if key_usage is None else key_usage,
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=style == "istio"
            )
        return Svid(certificate=self._sign(builder), private_key=key, chain=self.chain)

    def issue_server_cert(
        self,
        hostnames: Sequence[str] = ("localhost",),
        ips: Sequence[str] = ("127.0.0.1", "::1"),
        *,
        spiffe_id: str | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        key_type: KeyType | None = None,
    ) -> Svid:
        """Issue a TLS server certificate (for a proxy or test server) for names and IPs.

        It has DNS and IP SANs, ``extendedKeyUsage serverAuth`` and, if ``spiffe_id``
        is given, that URI SAN too (a sidecar's own identity, which Envoy reports as
        XFCC ``By=``).
        """
        key = _generate_key(key_type or self.key_type)
        common_name = hostnames[0] if hostnames else (ips[0] if ips else "test server")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in hostnames]
        names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips)
        if spiffe_id is not None:
            names.append(x509.UniformResourceIdentifier(spiffe_id))
        start, end = _validity(not_before, not_after, _LEAF_LIFETIME)
        builder = (
            self._builder(key, subject, start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_default_key_usage(_key_type_of(key)), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return Svid(certificate=self._sign(builder), private_key=key, chain=self.chain)

    def _builder(
        self, key: PrivateKey, subject: x509.Name, start: datetime, end: datetime
    ) -> x509.CertificateBuilder:
        issuer_ski = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(_ski(key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                critical=False,
            )
        )

    def _sign(self, builder: x509.CertificateBuilder) -> x509.Certificate:
        return builder.sign(self.private_key, hashes.SHA256())
