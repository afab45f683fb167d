"""Code-manager against real git repositories, NATS (request/reply, events, object store), Postgres.

The service runs in-process (one instance for the module); every test makes its own repository
and protocol name, so tests do not see each other's definitions.
"""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from praxis_code_manager.app import Settings, build_app
from praxis_contracts.errors import (
    Conflict,
    InvalidParameters,
    InvalidRequest,
    NotFound,
    SourceSyncFailed,
    Unavailable,
)
from praxis_contracts.protocols import (
    ListProtocolDefinitions,
    ListProtocolSources,
    ParameterSpec,
    ProtocolDefinition,
    ProtocolSource,
    ProtocolSourceSynced,
    RegisterProtocolSource,
    ResolveProtocol,
    SyncProtocolSource,
)
from praxis_contracts.topology import PROTOCOL_CODE
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

START_ATTEMPTS = 80  # a race: repeated so that a regression shows in (nearly) every run
SYNC_TIMEOUT = 60.0  # a first sync clones and imports; generous for slow machines

MIX = '''"""Mixing protocols."""

from praxis_sdk import protocol_function


@protocol_function(version="{version}")
async def {name}(volume: float = 10.0) -> float:
    """Mix a well by pipetting up and down."""
    return volume
'''


def settings(
    nats: dict[str, Any], database_url: str, work_dir: Path, sources: dict[str, Any]
) -> Settings:
    return Settings(
        **nats,
        **sources,
        database_url=database_url,
        protocol_repo_dir=work_dir,
        health_port=None,
        graceful_timeout_seconds=5,
    )


@pytest.fixture(scope="module")
async def code_manager(
    nats_identity: NatsIdentity,
    make_database: MakeDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    services: Any,
    local_sources: dict[str, Any],
) -> Any:
    work_dir = tmp_path_factory.mktemp("code-manager")
    nats = nats_identity("code-manager")
    return await services(build_app, settings(nats, make_database("cm"), work_dir, local_sources))


@pytest.fixture
async def cm(code_manager: Any, client: Bus) -> Bus:
    """The client bus, once the code-manager is serving."""
    return client


def mix_source(name: str, version: str) -> dict[str, str]:
    return {"protos/mix.py": MIX.format(name=name, version=version)}


def protocol_name() -> str:
    return f"mix_{uuid.uuid4().hex[:10]}"


def source_name() -> str:
    return f"src-{uuid.uuid4().hex[:10]}"


async def register(cm: Bus, **fields: Any) -> ProtocolSource:
    return await cm.request(RegisterProtocolSource(**fields), timeout=SYNC_TIMEOUT)


async def definitions(cm: Bus, **fields: Any) -> list[ProtocolDefinition]:
    page = await cm.request(ListProtocolDefinitions(**fields))
    assert page.total == len(page.items)
    return page.items


async def source_named(cm: Bus, name: str) -> ProtocolSource:
    page = await cm.request(ListProtocolSources())
    (found,) = [s for s in page.items if s.name == name]
    return found


async def test_register_syncs_discovers_and_archives(cm: Bus, git_repo: Any, tap: Any) -> None:
    name, src = protocol_name(), source_name()
    sha = git_repo.commit(mix_source(name, "1.0.0"), "first")
    synced = await tap(ProtocolSourceSynced, where=lambda e: e.source.name == src)

    source = await register(cm, name=src, kind="git", url=git_repo.url)

    assert (source.status, source.commit, source.error) == ("synced", sha, None)
    assert (source.kind, source.url, source.ref) == ("git", git_repo.url, "HEAD")
    assert source.last_synced_at is not None
    (definition,) = await definitions(cm, name=name)
    assert (definition.source_id, definition.source_name) == (source.accession_id, src)
    assert definition.commit == sha
    spec = definition.spec
    assert (spec.name, spec.version, spec.module, spec.qualname) == (
        name,
        "1.0.0",
        "protos.mix",
        name,
    )
    assert spec.description == "Mix a well by pipetting up and down."
    assert spec.assets == []
    (volume,) = spec.parameters
    assert isinstance(volume, ParameterSpec)
    assert (volume.name, volume.type_hint, volume.optional, volume.default) == (
        "volume",
        "float",
        True,
        10.0,
    )
    assert volume.json_schema.get("type") == "number"

    event = await synced.next()
    assert event.source.accession_id == source.accession_id
    assert event.source.commit == sha
    assert event.definitions == [definition.accession_id]

    store = await cm.js.object_store(PROTOCOL_CODE.bucket)
    bundle = await store.get(definition.code_bundle)
    with tarfile.open(fileobj=io.BytesIO(bundle.data or b"")) as tar:
        member = tar.extractfile("protos/mix.py")
        assert member is not None
        assert member.read().decode() == mix_source(name, "1.0.0")["protos/mix.py"]


async def test_resolve_validates_and_coerces_parameters(cm: Bus, git_repo: Any) -> None:
    name = protocol_name()
    git_repo.commit(mix_source(name, "1.0.0"))
    await register(cm, name=source_name(), url=git_repo.url)

    resolved = await cm.request(ResolveProtocol(protocol_name=name, parameters={"volume": "2.5"}))
    assert resolved.parameters == {"volume": 2.5}
    assert resolved.definition.spec.name == name
    defaulted = await cm.request(ResolveProtocol(protocol_name=name))
    assert defaulted.parameters == {"volume": 10.0}

    with pytest.raises(InvalidParameters) as not_a_number:
        await cm.request(ResolveProtocol(protocol_name=name, parameters={"volume": "abc"}))
    assert [e["loc"] for e in not_a_number.value.details["errors"]] == ["volume"]
    with pytest.raises(InvalidParameters) as unknown:
        await cm.request(ResolveProtocol(protocol_name=name, parameters={"speed": 3}))
    assert [e["loc"] for e in unknown.value.details["errors"]] == ["speed"]


async def test_resolve_needs_a_known_protocol(cm: Bus) -> None:
    with pytest.raises(NotFound):
        await cm.request(ResolveProtocol(protocol_name=protocol_name()))
    with pytest.raises(NotFound):
        await cm.request(ResolveProtocol(definition_id=uuid.uuid4()))
    with pytest.raises(InvalidRequest):
        await cm.request(ResolveProtocol())


async def test_new_commit_supersedes_old_definitions_by_name(
    cm: Bus, git_repo: Any, tap: Any
) -> None:
    name, src = protocol_name(), source_name()
    first = git_repo.commit(mix_source(name, "1.0.0"), "v1")
    source = await register(cm, name=src, url=git_repo.url)
    (old,) = await definitions(cm, name=name)
    second = git_repo.commit(mix_source(name, "2.0.0"), "v2")
    synced = await tap(ProtocolSourceSynced, where=lambda e: e.source.name == src)

    resynced = await cm.request(
        SyncProtocolSource(source_id=source.accession_id), timeout=SYNC_TIMEOUT
    )

    assert (resynced.status, resynced.commit) == ("synced", second)
    event = await synced.next()
    assert event.source.commit == second
    assert old.accession_id not in event.definitions
    newest = await cm.request(ResolveProtocol(protocol_name=name))
    assert (newest.definition.spec.version, newest.definition.commit) == ("2.0.0", second)
    assert newest.definition.accession_id in event.definitions
    with pytest.raises(NotFound):  # only the source's current commit is resolvable by name
        await cm.request(ResolveProtocol(protocol_name=name, version="1.0.0"))
    pinned = await cm.request(
        ResolveProtocol(definition_id=old.accession_id, parameters={"volume": 1})
    )
    assert (pinned.definition.spec.version, pinned.definition.commit) == ("1.0.0", first)
    assert pinned.parameters == {"volume": 1.0}
    listed = await definitions(cm, name=name, filters={"sort_by": "version"})
    assert [(d.spec.version, d.commit) for d in listed] == [("1.0.0", first), ("2.0.0", second)]


async def test_resync_of_the_same_commit_is_idempotent(cm: Bus, git_repo: Any) -> None:
    name = protocol_name()
    git_repo.commit(mix_source(name, "1.0.0"))
    source = await register(cm, name=source_name(), url=git_repo.url)
    (definition,) = await definitions(cm, name=name)

    again = await cm.request(SyncProtocolSource(source_id=source.accession_id))

    assert again.commit == source.commit
    assert [d.accession_id for d in await definitions(cm, name=name)] == [definition.accession_id]


async def test_pinned_source_stays_at_its_commit(cm: Bus, git_repo: Any) -> None:
    name = protocol_name()
    first = git_repo.commit(mix_source(name, "1.0.0"), "v1")
    head = git_repo.commit(mix_source(name, "2.0.0"), "v2")

    following = await register(cm, name=source_name(), url=git_repo.url)
    pinned = await register(cm, name=source_name(), url=git_repo.url, commit=first)

    assert following.commit == head
    assert pinned.commit == first
    (at_pin,) = await definitions(cm, source_id=pinned.accession_id)
    assert (at_pin.spec.version, at_pin.commit) == ("1.0.0", first)
    resynced = await cm.request(SyncProtocolSource(source_id=pinned.accession_id))
    assert resynced.commit == first  # a sync without a commit keeps the pin
    by_version = await cm.request(ResolveProtocol(protocol_name=name, version="1.0.0"))
    assert by_version.definition.source_id == pinned.accession_id
    newest = await cm.request(ResolveProtocol(protocol_name=name))
    assert (newest.definition.source_id, newest.definition.spec.version) == (
        following.accession_id,
        "2.0.0",
    )


async def test_unreachable_repository_fails_and_is_recorded(cm: Bus, tmp_path: Path) -> None:
    src = source_name()
    with pytest.raises(SourceSyncFailed):
        await register(cm, name=src, url=str(tmp_path / "no-such-repo"))

    recorded = await source_named(cm, src)
    assert (recorded.status, recorded.commit) == ("failed", None)
    assert recorded.error and "git fetch" in recorded.error


async def test_pin_to_a_commit_the_repository_lacks_fails(cm: Bus, git_repo: Any) -> None:
    git_repo.commit(mix_source(protocol_name(), "1.0.0"))
    src = source_name()
    with pytest.raises(SourceSyncFailed):  # e.g. a full sha of a commit that was never pushed
        await register(cm, name=src, url=git_repo.url, commit="0" * 40)
    assert (await source_named(cm, src)).status == "failed"


async def test_pin_to_an_unknown_short_ref_fails(cm: Bus, git_repo: Any) -> None:
    git_repo.commit(mix_source(protocol_name(), "1.0.0"))
    src = source_name()
    with pytest.raises(SourceSyncFailed):
        await register(cm, name=src, url=git_repo.url, commit="no-such-tag")
    assert (await source_named(cm, src)).status == "failed"


async def test_source_whose_modules_all_fail_to_import_fails(cm: Bus, git_repo: Any) -> None:
    git_repo.commit({"protos/broken.py": "import definitely_not_a_module_praxis\n"})
    src = source_name()
    with pytest.raises(SourceSyncFailed):
        await register(cm, name=src, url=git_repo.url)
    assert (await source_named(cm, src)).status == "failed"


async def test_one_broken_module_does_not_hide_the_others(cm: Bus, git_repo: Any) -> None:
    name = protocol_name()
    git_repo.commit(
        {**mix_source(name, "1.0.0"), "protos/broken.py": "raise RuntimeError('nope')\n"}
    )
    source = await register(cm, name=source_name(), url=git_repo.url)
    assert source.status == "synced"
    assert [d.spec.name for d in await definitions(cm, source_id=source.accession_id)] == [name]


async def test_duplicate_source_name_conflicts(cm: Bus, git_repo: Any) -> None:
    git_repo.commit(mix_source(protocol_name(), "1.0.0"))
    src = source_name()
    first = await register(cm, name=src, url=git_repo.url)
    with pytest.raises(Conflict):
        await register(cm, name=src, url=git_repo.url)
    assert (await source_named(cm, src)).accession_id == first.accession_id


async def test_fresh_replica_resolves_without_the_code(
    code_manager: Any, cm: Bus, git_repo: Any, tmp_path: Path
) -> None:
    """Parameters are checked against the schemas recorded at discovery: a replica with an
    empty work dir resolves without fetching or importing any protocol code."""
    name = protocol_name()
    git_repo.commit(mix_source(name, "1.0.0"))
    await register(cm, name=source_name(), url=git_repo.url)
    (definition,) = await definitions(cm, name=name)

    fresh = tmp_path / "fresh-replica"
    current = code_manager.settings
    nats = {"nats_url": current.nats_url, "nats_user": current.nats_user}
    nats["nats_password"] = current.nats_password
    sources = {
        "source_allowed_schemes": current.source_allowed_schemes,
        "source_allowed_roots": current.source_allowed_roots,
    }
    await code_manager.restart(
        settings(nats, current.database_url.get_secret_value(), fresh, sources)
    )

    resolved = await cm.request(
        ResolveProtocol(definition_id=definition.accession_id, parameters={"volume": "4"})
    )
    assert resolved.parameters == {"volume": 4.0}
    with pytest.raises(InvalidParameters):
        await cm.request(
            ResolveProtocol(definition_id=definition.accession_id, parameters={"volume": "x"})
        )
    assert not (fresh / "trees").exists()


async def test_a_started_replica_answers_at_once(code_manager: Any, cm: Bus) -> None:
    """``Service.start()`` returns "once it is serving": a request right after it is answered.

    The module's replica is stopped meanwhile, so only the replica under test can answer.
    """
    settings = code_manager.settings
    await code_manager.stop()
    unanswered = []
    try:
        for attempt in range(START_ATTEMPTS):
            replica = build_app(settings)
            await replica.start()
            try:
                await cm.request(ListProtocolSources())
            except Unavailable:
                unanswered.append(attempt)
            finally:
                await replica.stop()
    finally:
        await code_manager.start()
    assert unanswered == [], f"no responder right after start() in attempts {unanswered}"
