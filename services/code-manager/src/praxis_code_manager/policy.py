"""Source policy: which URLs, paths, refs and credential references a source may name.

Pure but for what a local source is: name resolution is passed in (``Resolve``), so unit tests
run over a table of URLs without a network; a local path is looked at on disk, as git would
look at it. Every refusal is a ``SourceRefused`` whose message starts with the rule
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
  (RFC 1918, fc00::/7, 100.64/10) only unless ``SOURCE_ALLOW_PRIVATE_HOSTS``. An IPv6 address
  that carries an IPv4 one (IPv4-mapped or -compatible, 6to4, Teredo, NAT64) reaches that IPv4
  address: each one it carries is checked as if it had been given.
- ``outside_roots``: a ``file`` URL or ``filesystem`` path that is not absolute, or whose real
  path (symlinks followed) is not under one of ``SOURCE_ALLOWED_ROOTS`` (empty: all refused);
  nor may anything git reads through a local repository lead out of them: the repository git
  would pick for the path (``.git``, ``<path>.git``), a ``.git`` file's ``gitdir:``, the git
  dir's ``commondir``, ``objects/info/alternates`` (of alternates too), any symlink in the tree
  or the repository; ``objects/info/http-alternates`` is refused outright. The message names
  the roots.
- ``ref``: a ref or commit git's ``check-ref-format`` rules reject.
- ``credentials_ref``: not ``file:<name>`` / ``env:<NAME>``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
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
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_SMALL_FILE = 64 * 1024
_ALTERNATES_DEPTH = 5
"""git follows alternates of alternates this deep (``link_alt_odb_entries``)."""
_C_ESCAPES = {
    b"a": b"\a",
    b"b": b"\b",
    b"f": b"\f",
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"v": b"\v",
    b"\\": b"\\",
    b'"': b'"',
}
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
        folder = _under_roots(url, policy)
        _links_within_roots([folder], policy)
        return Target("file", path=folder)
    if _HELPER.match(url):
        raise refuse("transport_helper", "git transport helpers ('<helper>::…') are not allowed")
    scheme, host, path = _split(url)
    if scheme not in policy.schemes:
        allowed = ", ".join(sorted(policy.schemes)) or "none"
        raise refuse("scheme", f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    if scheme == "file":
        if host not in ("", "localhost"):
            raise refuse("host", f"a file URL names no host, not {host!r}")
        repository = _under_roots(path, policy)
        check_local_repository(repository, policy)
        return Target("file", path=repository)
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
    """Why a source may not be fetched from ``address``, or None.

    An IPv6 address that carries an IPv4 one is refused for what that IPv4 address is: a
    connection to it is translated or tunnelled to the IPv4 host (a NAT64 gateway, a 6to4 or
    Teredo relay, a dual-stack socket), so ``2002:7f00:1::`` is as much loopback as
    ``127.0.0.1``. What the IPv6 address is itself is then checked too (IPv4-mapped ones
    excepted: a socket connects to the IPv4 address and nowhere else)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        for how, carried in embedded_ipv4(ip):
            problem = _address_class_problem(carried, allow_private)
            if problem:
                return f"{how} address carrying {carried}, {_a(problem)}"
        if ip.ipv4_mapped is not None:
            return None
    return _address_class_problem(ip, allow_private)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses ``ip`` carries, each named by how it carries it.

    IPv4-mapped ``::ffff:a.b.c.d``; 6to4 ``2002::/16`` (bits 16..48); Teredo ``2001::/32``
    (the server in bits 32..64, the client in the last 32 bits, inverted); NAT64's well-known
    prefix ``64:ff9b::/96`` (the last 32 bits) and its local-use ``64:ff9b:1::/48`` (RFC 8215:
    the operator picks the prefix length, so every RFC 6052 position that fits); and the
    deprecated IPv4-compatible ``::a.b.c.d``."""
    if ip.ipv4_mapped is not None:
        return [("IPv4-mapped", ip.ipv4_mapped)]
    if ip.sixtofour is not None:
        return [("6to4", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo server", server), ("Teredo client", client)]
    value = int(ip)
    if ip in _NAT64:
        return [("NAT64", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    if ip in _NAT64_LOCAL:
        return [("NAT64", _rfc6052_ipv4(value, length)) for length in (96, 64, 56, 48)]
    if ip in _IPV4_COMPATIBLE and value > 1:  # :: and ::1 are what they are
        return [("IPv4-compatible", ipaddress.IPv4Address(value & 0xFFFFFFFF))]
    return []


def check_local_repository(path: Path, policy: SourcePolicy) -> None:
    """Refuse (``outside_roots``) a local repository through which git would read outside the
    roots: the path git picks (``<path>/.git``, ``<path>``, ``<path>.git/.git``,
    ``<path>.git``, each followed through symlinks), a ``.git`` file's ``gitdir:``, the git
    dir's ``commondir``, ``objects/info/alternates`` (relative lines from the objects folder,
    alternates of alternates as deep as git goes), any symlink in all of these; and
    ``objects/info/http-alternates``, which would fetch objects over the network.

    Checking only the path's own real path would let a repository under the roots lend git
    objects from anywhere the service can read. A path that does not exist passes: git fails
    on it at sync. A repository changed between this check and git's clone is checked again
    at the next sync (the mirror is made with ``--no-local``, so it keeps no alternates)."""
    real_roots = _real_roots(policy)
    tops: list[str] = []
    base = str(path)
    for candidate in (f"{base}/.git", base, f"{base}.git/.git", f"{base}.git"):
        if not os.path.lexists(candidate):
            continue
        _within(candidate, candidate, policy, real_roots)
        real = os.path.realpath(candidate)
        tops.append(real)
        if os.path.isfile(real):
            gitdir = _gitfile_target(candidate, real)
            if gitdir is not None:
                _within(gitdir, f"{candidate} (gitdir: {gitdir})", policy, real_roots)
                tops.append(os.path.realpath(gitdir))
    for gitdir in [t for t in tops if os.path.lexists(os.path.join(t, "HEAD"))]:  # git dirs
        objects = os.path.join(gitdir, "objects")
        commondir = _read_small(os.path.join(gitdir, "commondir"), policy, real_roots)
        if commondir is not None:
            common = os.path.join(gitdir, commondir.rstrip("\r\n"))
            _within(common, f"{gitdir}/commondir ({common})", policy, real_roots)
            tops.append(os.path.realpath(common))
            objects = os.path.join(common, "objects")
        tops.extend(_alternates(objects, policy, real_roots, depth=0))
    _links_within_roots([Path(t) for t in tops], policy)


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
            raise refuse("address", f"host {host!r} is {_a(problem)} ({address})")
    return addresses


def _address_class_problem(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_private: bool
) -> str | None:
    for flag in ("loopback", "link_local", "unspecified", "multicast", "reserved"):
        if getattr(ip, f"is_{flag}"):
            return f"{flag.replace('_', '-')} address"
    if any(ip in net for net in _PRIVATE_NETWORKS if net.version == ip.version):
        return None if allow_private else "private address (SOURCE_ALLOW_PRIVATE_HOSTS is off)"
    if not ip.is_global:
        return "non-public address"
    return None


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _rfc6052_ipv4(value: int, length: int) -> ipaddress.IPv4Address:
    """The IPv4 address in an RFC 6052 IPv4-embedded IPv6 address with a ``length`` prefix:
    the 32 bits after the prefix, skipping bits 64..71 (which are always zero)."""
    if length == 96:
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    joined = ((value >> 64) << 56) | (value & ((1 << 56) - 1))  # 120 bits, without 64..71
    return ipaddress.IPv4Address((joined >> (120 - length - 32)) & 0xFFFFFFFF)


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
        raise refuse(
            "outside_roots",
            f"{raw!r} is not an absolute path under SOURCE_ALLOWED_ROOTS ({_roots_text(policy)})",
        )
    _within(raw, repr(raw), policy, _real_roots(policy))
    return Path(os.path.realpath(path))


def _real_roots(policy: SourcePolicy) -> tuple[str, ...]:
    return tuple(os.path.realpath(root) for root in policy.roots)


def _roots_text(policy: SourcePolicy) -> str:
    return ", ".join(str(root) for root in policy.roots) or "none"


def _within(path: str, what: str, policy: SourcePolicy, real_roots: tuple[str, ...]) -> None:
    """Refuse unless ``path``'s real path (every symlink followed) is under one of the roots;
    the message says ``what`` led there and names the roots."""
    real = Path(os.path.realpath(path))
    if not any(real.is_relative_to(root) for root in real_roots):
        via = "" if str(real) in what else f" (which leads to {real})"
        raise refuse(
            "outside_roots",
            f"{what}{via} is not under SOURCE_ALLOWED_ROOTS ({_roots_text(policy)})",
        )


def _links_within_roots(tops: list[Path], policy: SourcePolicy) -> None:
    """Refuse if any symlink under ``tops`` (not followed into) leads out of the roots, even
    one that dangles now: git and discovery read through symlinks wherever they lead."""
    real_roots = _real_roots(policy)
    done: list[Path] = []
    for top in sorted(tops, key=lambda t: len(t.parts)):  # a folder before what it holds
        if not top.is_dir() or any(top.is_relative_to(d) for d in done):
            continue
        done.append(top)
        folders = [str(top)]
        while folders:
            try:
                entries = list(os.scandir(folders.pop()))
            except OSError:
                continue  # what the service cannot list, git cannot read either
            for entry in entries:
                if entry.is_symlink():
                    try:
                        target = os.readlink(entry.path)
                    except OSError:  # gone since it was listed
                        continue
                    _within(entry.path, f"symlink {entry.path} -> {target}", policy, real_roots)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)


def _read_small(path: str, policy: SourcePolicy, real_roots: tuple[str, ...]) -> str | None:
    """A small regular file git would read (``.git``, ``commondir``, ``alternates``), or None
    if there is none; it must itself be under the roots. Not a FIFO: reading would block."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    _within(path, path, policy, real_roots)
    try:
        with open(path, "rb") as file:
            return file.read(_SMALL_FILE).decode(errors="surrogateescape")
    except OSError:  # what the service cannot read, git cannot either
        return None


def _gitfile_target(candidate: str, real: str) -> str | None:
    """The git dir a ``.git`` file names (``gitdir: <path>``, relative to the file's folder as
    git reads it), or None if it is no git file."""
    try:
        with open(real, "rb") as file:
            text = file.read(_SMALL_FILE).decode(errors="surrogateescape")
    except OSError:
        return None
    if not text.startswith("gitdir: "):
        return None
    gitdir = text[len("gitdir: ") :].rstrip("\r\n")
    return os.path.join(os.path.dirname(candidate), gitdir) if gitdir else None


def _alternates(
    objects: str, policy: SourcePolicy, real_roots: tuple[str, ...], depth: int
) -> list[str]:
    """The object folders ``objects`` borrows from (and they from others, as deep as git goes),
    each checked to be under the roots; ``http-alternates`` is refused outright."""
    http = os.path.join(objects, "info", "http-alternates")
    if os.path.lexists(http):
        raise refuse(
            "outside_roots",
            f"{http} would fetch objects over the network, from outside SOURCE_ALLOWED_ROOTS "
            f"({_roots_text(policy)})",
        )
    listed = _read_small(os.path.join(objects, "info", "alternates"), policy, real_roots)
    if listed is None or depth > _ALTERNATES_DEPTH:
        return []
    found = []
    for line in listed.split("\n"):
        entry = _alternate_entry(line)
        if not entry:
            continue
        borrowed = os.path.normpath(os.path.join(os.path.realpath(objects), entry))
        what = f"{objects}/info/alternates entry {entry!r}"
        _within(borrowed, what, policy, real_roots)
        found.append(os.path.realpath(borrowed))
        found.extend(_alternates(borrowed, policy, real_roots, depth + 1))
    return found


def _alternate_entry(line: str) -> str:
    """One line of ``objects/info/alternates`` as git reads it: ``#`` starts a comment, a line
    starting with ``"`` is C-quoted (if it unquotes), anything else is the path as is."""
    if line.startswith("#"):
        return ""
    if line.startswith('"'):
        unquoted = _c_unquote(line)
        if unquoted is not None:
            return unquoted
    return line


def _c_unquote(text: str) -> str | None:
    """git's ``unquote_c_style`` of a line starting with ``"``, byte for byte: None where git
    would give up on it (and take the line as is)."""
    raw, out, i = text.encode(errors="surrogateescape"), bytearray(), 1
    while i < len(raw):
        byte = raw[i : i + 1]
        if byte == b'"':
            return out.decode(errors="surrogateescape")
        if byte != b"\\":
            out += byte
            i += 1
        elif raw[i + 1 : i + 2] in _C_ESCAPES:
            out += _C_ESCAPES[raw[i + 1 : i + 2]]
            i += 2
        elif re.fullmatch(rb"[0-3][0-7][0-7]", raw[i + 1 : i + 4]):
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            return None
    return None


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
