"""Streams, KV buckets and object stores: created by provisioning, bound to by the services.

``provision`` (``python -m praxis_runtime.provision``, as the ``provisioner`` identity, once at
deploy or start-up) creates what a deployment needs (``praxis_contracts.permissions.topology``)
and brings existing ones to their declared settings (replicas, subjects, TTLs). Services never
create, update, purge or delete a stream: at start-up ``verify`` checks that everything they use
exists as declared and stops them with a message naming the step to run if not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from praxis_contracts.permissions import Topology
from praxis_contracts.topology import KeyValueSpec, ObjectStoreSpec, StreamSpec

log = logging.getLogger(__name__)

_RETENTION = {
    "limits": api.RetentionPolicy.LIMITS,
    "workqueue": api.RetentionPolicy.WORK_QUEUE,
    "interest": api.RetentionPolicy.INTEREST,
}
PROVISION_HINT = (
    "run the provisioning step first: python -m praxis_runtime.provision --workcell <name> ... "
    "(as the provisioner identity; make run and the Kubernetes Job do it)"
)


_Drift = Callable[[api.StreamConfig], Iterable[str]]
"""How an existing stream's config differs from its declaration (one line per difference)."""


class TopologyMissing(RuntimeError):
    """A stream, bucket or store a service needs does not exist, or not as declared."""


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


# -- provisioning (the provisioner identity) ----------------------------------------------------


async def provision(js: JetStreamContext, topology: Topology, *, replicas: int = 1) -> list[str]:
    """Create what is missing and align what exists (replicas, marker TTLs); idempotent.
    Returns what it created or changed, for the log."""
    done: list[str] = []
    for stream in topology.streams:
        done += await _stream(js, stream, replicas)
    for kv in topology.key_values:
        done += await _key_value(js, kv, replicas)
    for store in topology.object_stores:
        done += await _object_store(js, store, replicas)
    return done


def _stream_config(spec: StreamSpec, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        retention=_RETENTION[spec.retention],
        storage=api.StorageType.FILE,
        max_age=spec.max_age_seconds or None,
        duplicate_window=spec.duplicate_window_seconds,
        num_replicas=replicas,
    )


async def _stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> list[str]:
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(_stream_config(spec, replicas))
        return [f"created stream {spec.name}"]
    if info.config.num_replicas != replicas:
        config = info.config
        config.num_replicas = replicas
        await js.update_stream(config)
        return [f"stream {spec.name}: {replicas} replicas"]
    return []


async def _key_value(js: JetStreamContext, spec: KeyValueSpec, replicas: int) -> list[str]:
    stream = kv_stream(spec.bucket)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=spec.bucket,
                description=spec.description,
                history=spec.history,
                storage=api.StorageType.FILE,
                limit_marker_ttl=spec.limit_marker_ttl_seconds,
                replicas=replicas,
            )
        )
        return [f"created key-value bucket {spec.bucket}"]
    config, changed = info.config, []
    if spec.limit_marker_ttl_seconds and (
        config.subject_delete_marker_ttl != spec.limit_marker_ttl_seconds
    ):
        config.subject_delete_marker_ttl = spec.limit_marker_ttl_seconds
        changed.append(f"bucket {spec.bucket}: expiry-marker TTL {spec.limit_marker_ttl_seconds}s")
    if config.num_replicas != replicas:
        config.num_replicas = replicas
        changed.append(f"bucket {spec.bucket}: {replicas} replicas")
    if changed:
        await js.update_stream(config)
    return changed


async def _object_store(js: JetStreamContext, spec: ObjectStoreSpec, replicas: int) -> list[str]:
    stream = object_stream(spec.bucket)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.create_object_store(
                spec.bucket,
                api.ObjectStoreConfig(
                    description=spec.description,
                    storage=api.StorageType.FILE,
                    replicas=replicas,
                    ttl=spec.ttl_seconds or None,
                    max_bytes=spec.max_bytes or None,
                ),
            )
        except BadRequestError:
            await js.stream_info(stream)  # created concurrently
        return [f"created object store {spec.bucket}"]
    if info.config.num_replicas != replicas:
        config = info.config
        config.num_replicas = replicas
        await js.update_stream(config)
        return [f"object store {spec.bucket}: {replicas} replicas"]
    return []


# -- binding (every service) ---------------------------------------------------------------------


async def verify(js: JetStreamContext, topology: Topology) -> None:
    """Check that every stream, bucket and store of ``topology`` exists as declared (subjects,
    retention, expiry markers); raise ``TopologyMissing`` naming all that is not."""
    checks = [_check(js, s.name, f"stream {s.name}", _stream_drift(s)) for s in topology.streams]
    checks += [
        _check(js, kv_stream(kv.bucket), f"key-value bucket {kv.bucket}", _kv_drift(kv))
        for kv in topology.key_values
    ]
    checks += [
        _check(js, object_stream(store.bucket), f"object store {store.bucket}", lambda _: [])
        for store in topology.object_stores
    ]
    # All at once: one round trip rather than one per stream (an edge's start-up is a
    # workcell's stall when it restarts).
    problems = [problem for found in await asyncio.gather(*checks) for problem in found]
    if problems:
        raise TopologyMissing("; ".join(problems) + f". {PROVISION_HINT}")


async def verify_store(js: JetStreamContext, spec: ObjectStoreSpec) -> None:
    """One object store bound later (a workcell's state store, when its first snapshot comes)."""
    await verify(js, Topology((), (), (spec,)))


async def _check(js: JetStreamContext, stream: str, what: str, drift: _Drift) -> list[str]:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return [f"{what} is missing"]
    return [f"{what}: {problem}" for problem in drift(info.config)]


def _stream_drift(spec: StreamSpec) -> _Drift:
    def drift(config: api.StreamConfig) -> list[str]:
        problems = []
        if sorted(config.subjects or []) != sorted(spec.subjects):
            problems.append(f"subjects {config.subjects} instead of {spec.subjects}")
        if config.retention != _RETENTION[spec.retention]:
            problems.append(f"retention {config.retention} instead of {spec.retention}")
        return problems

    return drift


def _kv_drift(spec: KeyValueSpec) -> _Drift:
    def drift(config: api.StreamConfig) -> list[str]:
        problems = []
        if spec.limit_marker_ttl_seconds and (
            config.subject_delete_marker_ttl != spec.limit_marker_ttl_seconds
        ):
            problems.append("expiry markers are not set as declared")
        if spec.allow_msg_ttl and not config.allow_msg_ttl:
            problems.append("per-message TTLs are not allowed")
        return problems

    return drift
