"""The source policy over a table of URLs (no network: names resolve through a fake), and
local repositories on disk."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from praxis_code_manager.policy import (
    SourcePolicy,
    address_problem,
    check_credentials_ref,
    check_local_repository,
    check_ref,
    check_source,
    embedded_ipv4,
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
    if rule == "outside_roots":  # says where local sources may be
        assert "SOURCE_ALLOWED_ROOTS" in refused.value.message
        assert all(str(root) in refused.value.message for root in policy.roots)


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


# -- addresses carrying an IPv4 address ----------------------------------------------------------
CARRYING = [
    # (address, the IPv4 address it carries, what that is)
    ("2002:7f00:1::", "127.0.0.1", "loopback"),  # 6to4: bits 16..48
    ("2002:a9fe:a9fe:1::1", "169.254.169.254", "link-local"),
    ("2002:a00:5::", "10.0.0.5", "private"),
    ("64:ff9b::7f00:1", "127.0.0.1", "loopback"),  # NAT64 well-known prefix
    ("64:ff9b::a9fe:a9fe", "169.254.169.254", "link-local"),
    ("64:ff9b::c0a8:102", "192.168.1.2", "private"),
    ("64:ff9b:1::7f00:1", "127.0.0.1", "loopback"),  # NAT64 local-use, /96
    ("2001:0:7f00:1::", "127.0.0.1", "loopback"),  # Teredo server: bits 32..64
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1", "loopback"),  # Teredo client, ~bits
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "10.0.0.5", "private"),
    ("::7f00:1", "127.0.0.1", "loopback"),  # IPv4-compatible (deprecated)
    ("::a9fe:a9fe", "169.254.169.254", "link-local"),
    ("::ffff:127.0.0.1", "127.0.0.1", "loopback"),  # IPv4-mapped
    ("::ffff:a00:5", "10.0.0.5", "private"),
]


@pytest.mark.parametrize(("address", "carried", "kind"), CARRYING)
def test_an_address_carrying_a_refused_ipv4_is_refused_for_it(
    address: str, carried: str, kind: str
) -> None:
    for url, resolver in [
        (f"https://[{address}]/r", resolve),
        ("https://tunnel.example.com/r", lambda _: [address]),  # a name resolving to it
    ]:
        with pytest.raises(SourceRefused) as refused:
            check_source("git", url, DEFAULT, resolver)
        assert refused.value.details["rule"] == "address"
        assert f"carrying {carried}, a {kind}" in refused.value.message


@pytest.mark.parametrize(("address", "carried", "kind"), [c for c in CARRYING if c[2] != "private"])
def test_an_address_carrying_loopback_or_link_local_is_refused_even_with_private_hosts(
    address: str, carried: str, kind: str
) -> None:
    problem = address_problem(address, allow_private=True) or ""
    assert f"carrying {carried}, a {kind}" in problem


@pytest.mark.parametrize("address", ["2002:a00:5::", "::ffff:a00:5", "2001:0:a00:5::73ad:86fb"])
def test_a_carried_private_ipv4_is_judged_as_a_plain_one(address: str) -> None:
    assert "carrying 10.0.0.5, a private" in (address_problem(address, allow_private=False) or "")
    assert "carrying" not in (address_problem(address, allow_private=True) or "")
    assert address_problem("::ffff:140.82.121.4", allow_private=False) is None


@pytest.mark.parametrize(
    ("address", "carried"),
    [
        ("2002:8c52:7904::1", [("6to4", "140.82.121.4")]),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            [("Teredo server", "65.54.227.120"), ("Teredo client", "192.0.2.45")],
        ),
        ("64:ff9b::8c52:7904", [("NAT64", "140.82.121.4")]),
        (  # local-use: every RFC 6052 prefix length the operator may have picked
            "64:ff9b:1:7f00:0:100::",
            [
                ("NAT64", "0.0.0.0"),
                ("NAT64", "0.1.0.0"),
                ("NAT64", "0.0.1.0"),
                ("NAT64", "127.0.0.1"),
            ],
        ),
        ("::8c52:7904", [("IPv4-compatible", "140.82.121.4")]),
        ("::ffff:8c52:7904", [("IPv4-mapped", "140.82.121.4")]),
        ("2606:4700::1", []),
        ("::1", []),
    ],
)
def test_embedded_ipv4(address: str, carried: list[tuple[str, str]]) -> None:
    found = embedded_ipv4(ipaddress.IPv6Address(address))
    assert [(how, str(ip)) for how, ip in found] == carried


# -- local repositories: what git reads through them --------------------------------------------
Layout = Callable[[Path, Path], Path]
"""(root, outside) -> the path a source names, after laying out files."""


def git(*args: str | Path) -> None:
    subprocess.run(["git", *map(str, args)], check=True, capture_output=True)


def bare(path: Path) -> Path:
    git("init", "-q", "--bare", path)
    return path


def work_tree(path: Path) -> Path:
    git("init", "-q", path)
    return path


def gitfile_absolute(root: Path, outside: Path) -> Path:
    (root / "repo").mkdir()
    (root / "repo" / ".git").write_text(f"gitdir: {bare(outside / 'real.git')}\n")
    return root / "repo"


def gitfile_relative(root: Path, outside: Path) -> Path:
    bare(outside / "real.git")
    (root / "repo").mkdir()
    (root / "repo" / ".git").write_text("gitdir: ../../outside/real.git\n")
    return root / "repo"


def gitfile_is_the_path(root: Path, outside: Path) -> Path:
    (root / "repo").write_text(f"gitdir: {bare(outside / 'real.git')}\n")
    return root / "repo"


def dot_git_symlink(root: Path, outside: Path) -> Path:
    (root / "repo").mkdir()
    (root / "repo" / ".git").symlink_to(bare(outside / "real.git"))
    return root / "repo"


def dot_git_suffix_symlink(root: Path, outside: Path) -> Path:
    (root / "repo.git").symlink_to(bare(outside / "real.git"))  # git tries <path>.git
    return root / "repo"


def commondir_out(root: Path, outside: Path) -> Path:
    bare(outside / "common.git")
    repo = bare(root / "repo.git")
    (repo / "commondir").write_text("../../outside/common.git\n")
    return repo


def alternates_absolute(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    lent = bare(outside / "lender.git") / "objects"
    (repo / "objects" / "info" / "alternates").write_text(f"# lent\n{lent}\n")
    return repo


def alternates_relative(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    bare(outside / "lender.git")
    (repo / "objects" / "info" / "alternates").write_text("../../../outside/lender.git/objects")
    return repo


def alternates_quoted(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    bare(outside / "lender.git")
    line = '"\\057' + str(outside / "lender.git" / "objects")[1:] + '"'  # \057 is '/'
    (repo / "objects" / "info" / "alternates").write_text(line + "\n")
    return repo


def alternates_of_alternates(root: Path, outside: Path) -> Path:
    repo, middle = bare(root / "repo.git"), bare(root / "middle.git")
    lent = bare(outside / "lender.git") / "objects"
    (repo / "objects" / "info" / "alternates").write_text(f"{middle / 'objects'}\n")
    (middle / "objects" / "info" / "alternates").write_text(f"{lent}\n")
    return repo


def alternates_of_a_work_tree(root: Path, outside: Path) -> Path:
    repo = work_tree(root / "repo")
    lent = bare(outside / "lender.git") / "objects"
    (repo / ".git" / "objects" / "info" / "alternates").write_text(f"{lent}\n")
    return repo


def alternates_file_symlink(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    (outside / "alternates").write_text(f"{root}\n")
    (repo / "objects" / "info" / "alternates").symlink_to(outside / "alternates")
    return repo


def http_alternates(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    (repo / "objects" / "info" / "http-alternates").write_text("https://example.com/o\n")
    return repo


def symlink_in_work_tree(root: Path, outside: Path) -> Path:
    repo = work_tree(root / "repo")
    (repo / "protos").mkdir()
    (outside / "secret.txt").write_text("secret")
    (repo / "protos" / "leak.txt").symlink_to(outside / "secret.txt")
    return repo


def dangling_symlink_in_work_tree(root: Path, outside: Path) -> Path:
    repo = work_tree(root / "repo")
    (repo / "later").symlink_to(outside / "not-yet")
    return repo


def symlink_in_objects(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    (repo / "objects" / "pack").rmdir()
    (repo / "objects" / "pack").symlink_to(bare(outside / "lender.git") / "objects" / "pack")
    return repo


def symlinked_objects_folder(root: Path, outside: Path) -> Path:
    repo = bare(root / "repo.git")
    subprocess.run(["rm", "-r", str(repo / "objects")], check=True)
    (repo / "objects").symlink_to(bare(outside / "lender.git") / "objects")
    return repo


SIDE_DOORS: list[Layout] = [
    gitfile_absolute,
    gitfile_relative,
    gitfile_is_the_path,
    dot_git_symlink,
    dot_git_suffix_symlink,
    commondir_out,
    alternates_absolute,
    alternates_relative,
    alternates_quoted,
    alternates_of_alternates,
    alternates_of_a_work_tree,
    alternates_file_symlink,
    http_alternates,
    symlink_in_work_tree,
    dangling_symlink_in_work_tree,
    symlink_in_objects,
    symlinked_objects_folder,
]


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, SourcePolicy]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    return root, outside, SourcePolicy(schemes=frozenset({"file"}), roots=(root,))


@pytest.mark.parametrize("layout", SIDE_DOORS, ids=lambda f: f.__name__)
def test_a_local_repository_leading_out_of_the_roots_is_refused(
    roots: tuple[Path, Path, SourcePolicy], layout: Layout
) -> None:
    root, outside, policy = roots
    path = layout(root, outside)
    for url in (str(path), f"file://{path}"):
        with pytest.raises(SourceRefused) as refused:
            check_source("git", url, policy, resolve)
        assert refused.value.details["rule"] == "outside_roots"
        assert refused.value.message.startswith("outside_roots: ")
        assert f"SOURCE_ALLOWED_ROOTS ({root})" in refused.value.message
        assert isinstance(refused.value, InvalidInput)


def within_roots(root: Path, outside: Path) -> Path:
    """Everything git may follow, but inside the roots: a worktree's git file and commondir,
    alternates (absolute, relative), symlinks to elsewhere under the roots."""
    main = work_tree(root / "main")
    lender = bare(root / "shared" / "lender.git")
    (main / ".git" / "objects" / "info" / "alternates").write_text(
        f"{lender / 'objects'}\n../../../shared/lender.git/objects\n"
    )
    worktree = main / ".git" / "worktrees" / "wt"
    worktree.mkdir(parents=True)
    (worktree / "HEAD").write_text("ref: refs/heads/main\n")
    (worktree / "commondir").write_text("../..\n")
    (root / "wt").mkdir()
    (root / "wt" / ".git").write_text(f"gitdir: {worktree}\n")
    (root / "wt" / "notes").symlink_to(root / "shared")
    (root / "wt" / "self").symlink_to(".")
    return root / "wt"


def test_a_local_repository_within_the_roots_is_allowed(
    roots: tuple[Path, Path, SourcePolicy],
) -> None:
    root, outside, policy = roots
    path = within_roots(root, outside)
    assert check_source("git", f"file://{path}", policy, resolve).path == path
    check_local_repository(root / "main", policy)
    check_local_repository(root / "no-such-repo", policy)  # git fails on it at sync


def test_a_filesystem_source_with_a_symlink_out_of_the_roots_is_refused(
    roots: tuple[Path, Path, SourcePolicy],
) -> None:
    root, outside, policy = roots
    folder = root / "folder"
    (folder / "deep").mkdir(parents=True)
    (folder / "deep" / "inside.py").symlink_to(root / "elsewhere.py")  # under the roots: fine
    assert check_source("filesystem", str(folder), policy, resolve).path == folder
    (folder / "deep" / "leak").symlink_to(outside)
    with pytest.raises(SourceRefused) as refused:
        check_source("filesystem", str(folder), policy, resolve)
    assert refused.value.message == (
        f"outside_roots: symlink {folder}/deep/leak -> {outside} is not under "
        f"SOURCE_ALLOWED_ROOTS ({root})"
    )
