"""The source policy over a table of URLs (no network: names resolve through a fake)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from praxis_code_manager.policy import (
    SourcePolicy,
    address_problem,
    check_credentials_ref,
    check_ref,
    check_source,
)
from praxis_contracts.errors import InvalidInput, SourceRefused

ROOT = Path("/srv/protocols")
DNS = {
    "github.com": ["140.82.121.4"],
    "gitlab.example.org": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "internal.corp": ["10.1.2.3"],
    "rebind.example.com": ["93.184.215.14", "127.0.0.1"],
    "metadata.example.com": ["169.254.169.254"],
}


def resolve(host: str) -> Iterable[str]:
    if host not in DNS:
        raise OSError(f"unknown host {host}")
    return DNS[host]


DEFAULT = SourcePolicy()
LOCAL = SourcePolicy(schemes=frozenset({"https", "ssh", "file"}), roots=(ROOT,))

ALLOWED = [
    (DEFAULT, "git", "https://github.com/org/repo.git", "https", "github.com"),
    (DEFAULT, "git", "HTTPS://GitHub.com/org/repo", "https", "github.com"),
    (DEFAULT, "git", "https://github.com:443/org/repo", "https", "github.com"),
    (DEFAULT, "git", "ssh://git@github.com/org/repo.git", "ssh", "github.com"),
    (DEFAULT, "git", "git+ssh://git@github.com/org/repo.git", "ssh", "github.com"),
    (DEFAULT, "git", "git@github.com:org/repo.git", "ssh", "github.com"),
    (DEFAULT, "git", "github.com:org/repo.git", "ssh", "github.com"),
    (DEFAULT, "git", "https://gitlab.example.org/g/r", "https", "gitlab.example.org"),
    (LOCAL, "git", "file:///srv/protocols/repo", "file", None),
    (LOCAL, "git", "/srv/protocols/repo", "file", None),
    (LOCAL, "filesystem", "/srv/protocols/folder", "file", None),
    (
        SourcePolicy(allow_private=True),
        "git",
        "https://internal.corp/r.git",
        "https",
        "internal.corp",
    ),
    (
        SourcePolicy(hosts=frozenset({"github.com"})),
        "git",
        "https://github.com/o/r",
        "https",
        "github.com",
    ),
]


@pytest.mark.parametrize(("policy", "kind", "url", "scheme", "host"), ALLOWED)
def test_allowed(policy: SourcePolicy, kind: str, url: str, scheme: str, host: str | None) -> None:
    target = check_source(kind, url, policy, resolve)
    assert (target.scheme, target.host) == (scheme, host)


REFUSED = [
    # (policy, kind, url, rule)
    (LOCAL, "git", "file:///home/someone/other-repo", "outside_roots"),
    (LOCAL, "git", "/home/someone/other-repo", "outside_roots"),
    (LOCAL, "git", "file:///srv/protocols/../../etc", "outside_roots"),
    (LOCAL, "git", "relative/repo", "outside_roots"),
    (LOCAL, "git", "file://otherhost/srv/protocols/repo", "host"),
    (DEFAULT, "git", "file:///srv/protocols/repo", "scheme"),
    (DEFAULT, "git", "/srv/protocols/repo", "scheme"),
    (DEFAULT, "filesystem", "/etc/apt", "outside_roots"),
    (LOCAL, "filesystem", "/etc/apt", "outside_roots"),
    (LOCAL, "filesystem", "srv/protocols", "outside_roots"),
    (DEFAULT, "git", "http://127.0.0.1:8080/repo.git", "scheme"),
    (SourcePolicy(schemes=frozenset({"http"})), "git", "http://127.0.0.1:8080/r", "address"),
    (DEFAULT, "git", "https://127.0.0.1/r", "address"),
    (DEFAULT, "git", "https://[::1]/r", "address"),
    (DEFAULT, "git", "https://[::ffff:127.0.0.1]/r", "address"),
    (DEFAULT, "git", "https://0.0.0.0/r", "address"),
    (DEFAULT, "git", "https://169.254.169.254/latest", "address"),
    (DEFAULT, "git", "https://metadata.example.com/r", "address"),
    (DEFAULT, "git", "https://rebind.example.com/r", "address"),
    (DEFAULT, "git", "https://10.0.0.5/r", "address"),
    (DEFAULT, "git", "https://internal.corp/r", "address"),
    (SourcePolicy(allow_private=True), "git", "https://127.0.0.1/r", "address"),
    (SourcePolicy(allow_private=True), "git", "https://169.254.169.254/r", "address"),
    (DEFAULT, "git", "https://no-such-host.invalid/r", "host"),
    (DEFAULT, "git", "https:///r", "host"),
    (DEFAULT, "git", "ssh://-oProxyCommand=touch%20x/r", "host"),
    (DEFAULT, "git", "git@127.0.0.1:org/repo.git", "address"),
    (SourcePolicy(hosts=frozenset({"github.com"})), "git", "https://gitlab.example.org/r", "host"),
    (DEFAULT, "git", "ext::sh -c touch% /tmp/pwned", "transport_helper"),
    (DEFAULT, "git", "fd::3", "transport_helper"),
    (DEFAULT, "git", "https::github.com/o/r", "transport_helper"),
    (DEFAULT, "git", "--upload-pack=touch /tmp/pwned", "option"),
    (DEFAULT, "filesystem", "-rf", "option"),
    (DEFAULT, "git", "git://github.com/o/r", "scheme"),
    (DEFAULT, "git", "ftp://github.com/o/r", "scheme"),
    (DEFAULT, "git", "https://user:token@github.com/o/r", "credentials_in_url"),
]


@pytest.mark.parametrize(("policy", "kind", "url", "rule"), REFUSED)
def test_refused_naming_the_rule(policy: SourcePolicy, kind: str, url: str, rule: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        check_source(kind, url, policy, resolve)
    assert refused.value.details["rule"] == rule
    assert refused.value.message.startswith(f"{rule}: ")
    assert isinstance(refused.value, InvalidInput)  # a 422, not a sync failure


def test_local_paths_follow_symlinks_out_of_the_roots(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    policy = SourcePolicy(schemes=frozenset({"file"}), roots=(root,))
    assert check_source("git", str(root / "repo"), policy, resolve).path == root / "repo"
    with pytest.raises(SourceRefused, match=r"^outside_roots"):
        check_source("filesystem", str(root / "link"), policy, resolve)


@pytest.mark.parametrize(
    "ref", ["HEAD", "main", "feature/x-1", "v1.2.3", "a" * 40, "refs/tags/v1", "release-2026.1"]
)
def test_good_refs(ref: str) -> None:
    assert check_ref(ref) == ref


@pytest.mark.parametrize(
    ("ref", "rule"),
    [
        ("--output=/tmp/x", "option"),
        ("-x", "option"),
        ("", "ref"),
        ("a..b", "ref"),
        ("a b", "ref"),
        ("a~1", "ref"),
        ("a^{commit}", "ref"),
        ("a:b", "ref"),
        ("@{-1}", "ref"),
        ("@", "ref"),
        ("x.lock", "ref"),
        ("a/.hidden", "ref"),
        ("a//b", "ref"),
        ("/a", "ref"),
        ("a/", "ref"),
        ("a.", "ref"),
        ("a\\b", "ref"),
        ("a\x00b", "ref"),
        ("x" * 201, "ref"),
    ],
)
def test_bad_refs(ref: str, rule: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        check_ref(ref)
    assert refused.value.details["rule"] == rule


@pytest.mark.parametrize(
    ("ref", "parsed"), [("file:gh-token", ("file", "gh-token")), ("env:GH", ("env", "GH"))]
)
def test_credentials_refs(ref: str, parsed: tuple[str, str]) -> None:
    assert check_credentials_ref(ref) == parsed


@pytest.mark.parametrize("ref", ["gh-token", "file:../etc/passwd", "file:a/b", "env:", "vault:x"])
def test_bad_credentials_refs(ref: str) -> None:
    with pytest.raises(SourceRefused, match=r"^credentials_ref"):
        check_credentials_ref(ref)


def test_address_classes() -> None:
    assert address_problem("140.82.121.4", allow_private=False) is None
    assert address_problem("192.168.1.2", allow_private=True) is None
    assert address_problem("fd00::1", allow_private=True) is None
    assert "private" in (address_problem("192.168.1.2", allow_private=False) or "")
    assert "loopback" in (address_problem("127.0.0.2", allow_private=True) or "")
    assert "link-local" in (address_problem("fe80::1%eth0", allow_private=True) or "")
    assert "multicast" in (address_problem("224.0.0.1", allow_private=True) or "")


def test_git_protocols_is_the_allow_list() -> None:
    assert LOCAL.git_protocols() == "file:https:ssh"


@pytest.mark.parametrize(
    ("url", "pin"),
    [
        ("https://github.com/o/r", "github.com:443:140.82.121.4"),
        ("https://gitlab.example.org:8443/g/r", "gitlab.example.org:8443:93.184.215.14"),
        ("ssh://git@github.com/o/r", None),
    ],
)
def test_http_targets_pin_the_checked_address(url: str, pin: str | None) -> None:
    assert check_source("git", url, DEFAULT, resolve).pinned_address() == pin


def test_an_ipv6_address_is_pinned_in_brackets_and_a_literal_not_at_all() -> None:
    target = check_source("git", "https://gitlab.example.org/r", DEFAULT, lambda _: ["2606::1"])
    assert target.pinned_address() == "gitlab.example.org:443:[2606::1]"
    literal = check_source("git", "https://[2606:4700::1]/r", DEFAULT, resolve)
    assert literal.pinned_address() is None
