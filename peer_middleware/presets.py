"""The proxies whose forwarded-certificate headers are understood, and what each one sends.

A :class:`Preset` names a proxy; :func:`preset_format` says which headers it
sets, how the certificate in each is written (decoded by
:mod:`peer_middleware.certs`) and which status values mean "verified" or "no
certificate". Data only: reading the headers of a request is
:class:`peer_middleware.authenticators.ForwardedCertificateAuthenticator`'s
job. What each preset reads, and how to configure each proxy safely:
``docs/proxies.md``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .certs import (
    decode_der_base64,
    decode_der_base64_list,
    decode_der_concatenation,
    decode_pem,
    decode_sf_binary,
    decode_sf_binary_list,
    percent_decode,
)

__all__ = ["Decoder", "Preset", "PresetFormat", "StatusHeader", "preset_format"]

_APACHE_CHAIN_HEADERS = 4


class Preset(str, enum.Enum):
    """The proxies whose forwarded-certificate headers are understood."""

    NGINX = "nginx"
    TRAEFIK = "traefik"
    CADDY = "caddy"
    HAPROXY = "haproxy"
    APACHE = "apache"
    AWS_ALB = "aws-alb"
    AWS_ALB_PASSTHROUGH = "aws-alb-passthrough"
    GCP = "gcp"
    AZURE = "azure"
    RFC9440 = "rfc9440"

    def __str__(self) -> str:
        return self.value


#: Decodes one header value into DER certificates, given the chain's length limit;
#: raises :class:`~peer_middleware.errors.CertificateDecodingError`.
Decoder = Callable[[str, int], list[bytes]]


def _pem_url(value: str, limit: int) -> list[bytes]:
    return decode_pem(percent_decode(value), limit=limit)


def _pem_plain(value: str, limit: int) -> list[bytes]:
    return decode_pem(value, limit=limit)


def _der_b64(value: str, limit: int) -> list[bytes]:
    return decode_der_base64(value)


def _der_b64_list(value: str, limit: int) -> list[bytes]:
    return decode_der_base64_list(value, limit=limit)


def _sf_binary(value: str, limit: int) -> list[bytes]:
    return [decode_sf_binary(value)]


def _sf_list(value: str, limit: int) -> list[bytes]:
    return decode_sf_binary_list(value, limit=limit)


def _der_concat(value: str, limit: int) -> list[bytes]:
    return decode_der_concatenation(value, limit=limit)


@dataclass(frozen=True, slots=True)
class StatusHeader:
    """A header the proxy sends with (or instead of) the certificate."""

    role: str
    header: str
    ok: frozenset[str]
    #: Values that say "the client sent no certificate".
    none: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PresetFormat:
    """The headers one proxy sets, and how each is written."""

    cert_header: str
    decode_cert: Decoder
    #: True when the certificate header holds the whole chain, leaf first.
    cert_is_chain: bool = False
    chain_headers: tuple[str, ...] = ()
    decode_chain: Decoder | None = None
    #: Certificate header values that mean "no certificate".
    absent: frozenset[str] = frozenset({""})
    status: tuple[StatusHeader, ...] = ()


def preset_format(preset: Preset, names: Mapping[str, str]) -> tuple[PresetFormat, frozenset[str]]:
    """The format of ``preset`` with header names overridden by ``names``; and its roles.

    The roles are those whose header names ``names`` may override (the names
    an operator chooses in the proxy's configuration); a preset whose proxy
    fixes its header names has none.
    """

    def name(role: str, default: str) -> str:
        return names.get(role, default)

    if preset is Preset.NGINX:
        fmt = PresetFormat(
            cert_header=name("cert", "x-ssl-client-cert"),
            decode_cert=_pem_url,
            status=(
                StatusHeader(
                    "verify",
                    name("verify", "x-ssl-client-verify"),
                    frozenset({"SUCCESS"}),
                    frozenset({"NONE"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "verify"})
    if preset is Preset.TRAEFIK:
        fmt = PresetFormat(
            cert_header="x-forwarded-tls-client-cert", decode_cert=_der_b64_list, cert_is_chain=True
        )
        return fmt, frozenset()
    if preset is Preset.CADDY:
        fmt = PresetFormat(
            cert_header=name("cert", "x-client-cert"),
            decode_cert=_der_b64,
            absent=frozenset({"", "<nil>"}),
        )
        return fmt, frozenset({"cert"})
    if preset is Preset.HAPROXY:
        fmt = PresetFormat(
            cert_header=name("cert", "x-ssl-client-cert"),
            decode_cert=_der_b64,
            chain_headers=(name("chain", "x-ssl-client-chain"),),
            decode_chain=_der_concat,
            status=(
                StatusHeader(
                    "used", name("used", "x-ssl-client-used"), frozenset({"1"}), frozenset({"0"})
                ),
                StatusHeader("verify", name("verify", "x-ssl-client-verify"), frozenset({"0"})),
            ),
        )
        return fmt, frozenset({"cert", "chain", "used", "verify"})
    if preset is Preset.APACHE:
        cert = name("cert", "x-ssl-client-cert")
        chain_prefix = name("chain", f"{cert}-chain")
        fmt = PresetFormat(
            cert_header=cert,
            decode_cert=_pem_plain,
            chain_headers=tuple(f"{chain_prefix}-{n}" for n in range(_APACHE_CHAIN_HEADERS)),
            decode_chain=_pem_plain,
            absent=frozenset({"", "(null)"}),
            status=(
                StatusHeader(
                    "verify",
                    name("verify", "x-ssl-client-verify"),
                    frozenset({"SUCCESS"}),
                    frozenset({"NONE"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "chain", "verify"})
    if preset is Preset.AWS_ALB:
        fmt = PresetFormat(cert_header="x-amzn-mtls-clientcert-leaf", decode_cert=_pem_url)
        return fmt, frozenset()
    if preset is Preset.AWS_ALB_PASSTHROUGH:
        fmt = PresetFormat(
            cert_header="x-amzn-mtls-clientcert", decode_cert=_pem_url, cert_is_chain=True
        )
        return fmt, frozenset()
    if preset is Preset.GCP:
        fmt = PresetFormat(
            cert_header=name("cert", "x-client-cert-leaf"),
            decode_cert=_sf_binary,
            chain_headers=(name("chain", "x-client-cert-chain"),),
            decode_chain=_sf_list,
            status=(
                StatusHeader(
                    "present",
                    name("present", "x-client-cert-present"),
                    frozenset({"true"}),
                    frozenset({"false"}),
                ),
                StatusHeader(
                    "chain_verified",
                    name("chain_verified", "x-client-cert-chain-verified"),
                    frozenset({"true"}),
                ),
            ),
        )
        return fmt, frozenset({"cert", "chain", "present", "chain_verified"})
    if preset is Preset.AZURE:
        return PresetFormat(cert_header="x-arr-clientcert", decode_cert=_der_b64), frozenset()
    # Preset.RFC9440
    fmt = PresetFormat(
        cert_header="client-cert",
        decode_cert=_sf_binary,
        chain_headers=("client-cert-chain",),
        decode_chain=_sf_list,
    )
    return fmt, frozenset()
