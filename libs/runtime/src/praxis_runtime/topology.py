"""Create the streams, KV buckets and object stores declared in ``praxis_contracts.topology``.

Every service ensures the whole topology at start-up; creation is idempotent, so whichever service
starts first creates it and the rest find it.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError

from praxis_contracts.topology import (
    KEY_VALUES,
    OBJECT_STORES,
    STREAMS,
    KeyValueSpec,
    ObjectStoreSpec,
    StreamSpec,
)

log = logging.getLogger(__name__)

_RETENTION = {
    "limits": api.RetentionPolicy.LIMITS,
    "workqueue": api.RetentionPolicy.WORK_QUEUE,
    "interest": api.RetentionPolicy.INTEREST,
}


async def ensure_topology(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create what is missing; ``replicas`` (``NATS_REPLICAS``) applies to what is created."""
    for stream in STREAMS:
        await ensure_stream(js, stream, replicas)
    for kv in KEY_VALUES:
        await ensure_key_value(js, kv, replicas)
    for store in OBJECT_STORES:
        await ensure_object_store(js, store, replicas)


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int = 1) -> None:
    config = api.StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=spec.subjects,
        retention=_RETENTION[spec.retention],
        storage=api.StorageType.FILE,
        max_age=spec.max_age_seconds or None,
        duplicate_window=spec.duplicate_window_seconds,
        num_replicas=replicas,
    )
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("created stream %s", spec.name)
        except BadRequestError:
            await js.stream_info(spec.name)  # created concurrently by another service


async def ensure_key_value(js: JetStreamContext, spec: KeyValueSpec, replicas: int = 1) -> None:
    try:
        await js.key_value(spec.bucket)
        await _align_marker_ttl(js, spec)
        return
    except (NotFoundError, Exception) as exc:
        if not _is_missing(exc):
            raise
    try:
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
        log.info("created key-value bucket %s", spec.bucket)
    except BadRequestError:
        await js.key_value(spec.bucket)


async def _align_marker_ttl(js: JetStreamContext, spec: KeyValueSpec) -> None:
    """An existing bucket keeps its expiry-marker TTL unless told: bring it to the spec's."""
    if not spec.limit_marker_ttl_seconds:
        return
    info = await js.stream_info(f"KV_{spec.bucket}")
    if info.config.subject_delete_marker_ttl != spec.limit_marker_ttl_seconds:
        config = info.config
        config.subject_delete_marker_ttl = spec.limit_marker_ttl_seconds
        await js.update_stream(config)
        log.info("set %s expiry-marker TTL to %ss", spec.bucket, spec.limit_marker_ttl_seconds)


async def ensure_object_store(
    js: JetStreamContext, spec: ObjectStoreSpec, replicas: int = 1
) -> None:
    try:
        await js.object_store(spec.bucket)
        return
    except Exception as exc:
        if not _is_missing(exc):
            raise
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
        log.info("created object store %s", spec.bucket)
    except BadRequestError:
        await js.object_store(spec.bucket)


def _is_missing(exc: Exception) -> bool:
    return isinstance(exc, NotFoundError) or type(exc).__name__.endswith("NotFoundError")
