"""Source policy: which URLs, paths, refs and credential references a source may name.

Pure: name resolution is passed in (``Resolve``), so unit tests run over a table of URLs
without a network. Every refusal is a ``SourceRefused`` whose message starts with the rule
(``details["rule"]`` carries it for machines).

Rules, in the order they are checked:

- ``option``: a URL, path or ref starting with ``-`` (git would read it as an option).
- ``transport_helper``: ``<helper>::<address>`` (``ext::``, ``fd::``, remote helpers) runs programs.
- ``scheme``: the URL's scheme is not in ``SOURCE_ALLOWED_SCHEMES``; scp-like ``user@host:path``
  is ``ssh``, a bare path is ``file``.
- ``credentials_in_url``: a password in the URL (credentials come from ``credentials_ref``).
- ``host``: a missing or malformed host, or one not in ``SOURCE_ALLOWED_HOSTS`` (empty: any).
- ``address``: the host is, or resolves to, an address that is not public: loopback, link-local
  (cloud metadata), unspecified, multicast, reserved are always refused; private networks
  (RFC 1918, fc00::/7, 100.64/10) only unless ``SOURCE_ALLOW_PRIVATE_HOSTS``.
- ``outside_roots``: a ``file`` URL or ``filesystem`` path that is not absolute, or whose real
  path (symlinks followed) is not under one of ``SOURCE_ALLOWED_ROOTS`` (empty: all refused).
- ``ref``: a ref or commit git's ``check-ref-format`` rules reject.
- ``credentials_ref``: not ``file:<name>`` / ``env:<NAME>``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from praxis_contracts.errors import SourceRefused

KNOWN_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
"""The transports git itself speaks; the allow-list is a subset of these."""

Resolve = Callable[[str], Iterable[str]]
"""Host name -> the IP addresses it resolves to (raises ``OSError`` if it does not)."""

_HELPER = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCP = re.compile(r"^(?:(?P<user>[^@/:]+)@)?(?P<host>\[[^\]]+\]|[^/:@]+):(?P<path>.*)$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_SCHEME_ALIASES = {"git+ssh": "ssh", "ssh+git": "ssh"}
_PRIVATE_NETWORKS = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),
    ipaddress.ip_network("fc00::/7"),
)


@dataclass(frozen=True)
class SourcePolicy:
    schemes: frozenset[str] = frozenset({"https", "ssh"})
    hosts: frozenset[str] = frozenset()
    roots: tuple[Path, ...] = ()
    allow_private: bool = False

    def git_protocols(self) -> str:
        """``GIT_ALLOW_PROTOCOL``: the transports git may use, also on redirects."""
        return ":".join(sorted(self.schemes))


@dataclass(frozen=True)
class Target:
    """What a source names, once allowed."""

    scheme: str  # https, http, ssh, git or file
    host: str | None = None
    path: Path | None = None  # file and filesystem: the real path
    addresses: tuple[str, ...] = field(default=())
    port: int | None = None

    def pinned_address(self) -> str | None:
        """``http.curloptResolve`` for http(s): git connects to the address checked here, so a
        name that resolves differently a moment later (DNS rebinding) cannot redirect it."""
        if self.scheme not in ("http", "https") or not self.host or not self.addresses:
            return None
        if _is_ip(self.host):
            return None  # nothing to resolve
        port = self.port or (443 if self.scheme == "https" else 80)
        address = self.addresses[0]
        return f"{self.host}:{port}:{f'[{address}]' if ':' in address else address}"


def refuse(rule: str, message: str) -> SourceRefused:
    return SourceRefused(f"{rule}: {message}", rule=rule)


def check_source(kind: str, url: str, policy: SourcePolicy, resolve: Resolve) -> Target:
    """The target ``url`` names if ``policy`` allows it; raises ``SourceRefused`` otherwise."""
    if url.startswith("-"):
        raise refuse("option", f"{url!r} starts with '-' and would be read as a git option")
    if kind == "filesystem":
        return Target("file", path=_under_roots(url, policy))
    if _HELPER.match(url):
        raise refuse("transport_helper", "git transport helpers ('<helper>::…') are not allowed")
    scheme, host, path = _split(url)
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes)) or "none"
        raise refuse("scheme", f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    if scheme == "file":
        if host not in ("", "localhost"):
            raise refuse("host", f"a file URL names no host, not {host!r}")
        return Target("file", path=_under_roots(path, policy))
    host = host.lower().rstrip(".")
    addresses = _check_host(host, policy, resolve)
    try:
        port = urlsplit(url).port if _SCHEME.match(url) else None
    except ValueError as exc:
        raise refuse("host", f"{url!r} has an invalid port") from exc
    return Target(scheme, host, addresses=addresses, port=port)


def check_ref(ref: str, what: str = "ref") -> str:
    """``ref`` if git's ``check-ref-format`` rules (plus: no leading ``-``) accept it."""
    if ref.startswith("-"):
        raise refuse("option", f"{what} {ref!r} starts with '-' and would be read as an option")
    problem = _ref_problem(ref)
    if problem:
        raise refuse("ref", f"{what} {ref!r} is not a valid git ref: {problem}")
    return ref


def check_credentials_ref(ref: str) -> tuple[str, str]:
    """``(kind, name)`` of a credentials reference: ``file:<name>`` or ``env:<NAME>``."""
    kind, _, name = ref.partition(":")
    if kind not in ("file", "env") or not _SECRET_NAME.match(name) or ".." in name:
        raise refuse(
            "credentials_ref",
            "credentials_ref is 'file:<name>' (a file in SOURCE_SECRETS_DIR) or 'env:<NAME>' "
            "(variable SOURCE_SECRET_<NAME>)",
        )
    return kind, name


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why a source may not be fetched from ``address``, or None."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for flag in ("loopback", "link_local", "unspecified", "multicast", "reserved"):
        if getattr(ip, f"is_{flag}"):
            return f"{flag.replace('_', '-')} address"
    if any(ip in net for net in _PRIVATE_NETWORKS if net.version == ip.version):
        return None if allow_private else "private address (SOURCE_ALLOW_PRIVATE_HOSTS is off)"
    if not ip.is_global:
        return "non-public address"
    return None


# -- helpers ------------------------------------------------------------------------------------
def _split(url: str) -> tuple[str, str, str]:
    """``(scheme, host, path)`` of a git URL as git reads it."""
    match = _SCHEME.match(url)
    if match:
        scheme = match.group(1).lower()
        parts = urlsplit(url)
        if parts.password is not None:
            raise refuse("credentials_in_url", "put credentials in credentials_ref, not the URL")
        if scheme != "file" and (parts.username or "").startswith("-"):
            raise refuse("option", "a user name starting with '-'")
        return _SCHEME_ALIASES.get(scheme, scheme), _host_of(parts.netloc), parts.path
    scp = _SCP.match(url)
    if scp and "/" not in url.split(":", 1)[0]:
        return "ssh", scp.group("host").strip("[]"), scp.group("path")
    return "file", "", url


def _host_of(netloc: str) -> str:
    host = netloc.rpartition("@")[2]
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.split(":", 1)[0]


def _check_host(host: str, policy: SourcePolicy, resolve: Resolve) -> tuple[str, ...]:
    if not host or host.startswith("-") or not (_HOSTNAME.match(host) or _is_ip(host)):
        raise refuse("host", f"{host!r} is not a host name")
    if policy.hosts and host not in policy.hosts:
        raise refuse("host", f"host {host!r} is not in SOURCE_ALLOWED_HOSTS")
    try:
        addresses = tuple(dict.fromkeys([host] if _is_ip(host) else resolve(host)))
    except OSError as exc:
        raise refuse("host", f"host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise refuse("host", f"host {host!r} does not resolve")
    for address in addresses:
        problem = address_problem(address, policy.allow_private)
        if problem:
            raise refuse("address", f"host {host!r} is a {problem} ({address})")
    return addresses


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _under_roots(raw: str, policy: SourcePolicy) -> Path:
    if not policy.roots:
        raise refuse("outside_roots", "local sources are off (SOURCE_ALLOWED_ROOTS is empty)")
    path = Path(raw)
    if not path.is_absolute():
        raise refuse("outside_roots", f"{raw!r} is not an absolute path")
    real = Path(os.path.realpath(path))
    for root in policy.roots:
        if real.is_relative_to(os.path.realpath(root)):
            return real
    raise refuse("outside_roots", f"{raw!r} is not under SOURCE_ALLOWED_ROOTS")


def _ref_problem(ref: str) -> str | None:
    if not ref or len(ref) > 200:
        return "empty or longer than 200 characters"
    if ref == "@" or "@{" in ref:
        return "contains '@{'"
    if _REF_FORBIDDEN.search(ref):
        return "contains a space, control character or one of ~^:?*[\\"
    if ".." in ref or "//" in ref or ref.startswith("/") or ref.endswith(("/", ".")):
        return "contains '..' or '//', or starts with '/' or ends with '/' or '.'"
    if any(part.startswith(".") or part.endswith(".lock") for part in ref.split("/")):
        return "a component starts with '.' or ends with '.lock'"
    return None
