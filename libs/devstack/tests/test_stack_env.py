"""What each service process of the local stack is given (no servers needed)."""

from __future__ import annotations

from pathlib import Path

from praxis_devstack.stack import orchestrator_name, service_of, source_policy


def test_the_source_policy_given_is_kept_and_the_stacks_folder_added(tmp_path: Path) -> None:
    given = {
        "SOURCE_ALLOWED_ROOTS": "/home/me/protocols, /srv/git",
        "SOURCE_ALLOWED_SCHEMES": "https",
    }
    policy = source_policy(given, tmp_path)
    assert policy["SOURCE_ALLOWED_ROOTS"].split(",") == [
        "/home/me/protocols",
        "/srv/git",
        str(tmp_path),
    ]
    assert policy["SOURCE_ALLOWED_SCHEMES"].split(",") == ["https", "file"]


def test_without_a_policy_the_stack_allows_its_own_folder_only(tmp_path: Path) -> None:
    policy = source_policy({}, tmp_path)
    assert policy == {
        "SOURCE_ALLOWED_SCHEMES": "https,ssh,file",
        "SOURCE_ALLOWED_ROOTS": str(tmp_path),
    }


def test_processes_name_their_service_and_workcell() -> None:
    assert service_of("orchestrator", "demo") == ("orchestrator", "demo")
    assert service_of(orchestrator_name("bench-2"), "demo") == ("orchestrator", "bench-2")
    assert service_of("gateway-8123", "demo") == ("gateway", "demo")
    assert service_of("scheduler", "demo") == ("scheduler", "demo")
