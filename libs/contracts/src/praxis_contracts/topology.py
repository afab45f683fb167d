"""JetStream streams, KV buckets and object stores: declared once, created by the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

DAY = 24 * 3600


class StreamSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    subjects: list[str]
    retention: Literal["limits", "workqueue", "interest"]
    max_age_seconds: float = 0
    duplicate_window_seconds: float = 120
    description: str = ""


class KeyValueSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    history: int = 1
    limit_marker_ttl_seconds: float | None = None
    allow_msg_ttl: bool = False
    description: str = ""


class ObjectStoreSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    ttl_seconds: float = 0
    """Objects older than this are removed by the server (0: kept)."""
    max_bytes: int = 0
    """The store's size limit (0: none); a write past it fails."""
    description: str = ""


EVENTS = StreamSpec(
    name="PRAXIS_EVENTS",
    subjects=["praxis.evt.>"],
    retention="limits",
    max_age_seconds=30 * DAY,
    description="Every domain event; audit and metrics subscribers read it.",
)
COMMANDS = StreamSpec(
    name="PRAXIS_COMMANDS",
    subjects=["praxis.cmd.>"],
    retention="workqueue",
    max_age_seconds=7 * DAY,
    description="Commands, each consumed once by its owning service.",
)
DEAD_LETTERS = StreamSpec(
    name="PRAXIS_DEAD_LETTERS",
    subjects=["praxis.dlq.>"],
    retention="limits",
    max_age_seconds=30 * DAY,
    description="Messages a consumer could not process, with the reason in headers.",
)
# nats-server raises every per-message TTL to at least the marker TTL (README, Design
# measurements), so the marker TTL is the shortest lease possible.
ASSET_LEASES = KeyValueSpec(
    bucket="praxis_asset_leases",
    history=64,
    limit_marker_ttl_seconds=1,
    allow_msg_ttl=True,
    description="One key per leased asset; value = holder; revision = fencing token.",
)
# One key per live orchestrator process (``edge.<workcell>.<instance>``), written with a TTL at
# every heartbeat: the key leaves the bucket when the process stops beating. History 1 so the
# expiry leaves no older revision behind (the server then writes a marker watchers see).
EDGES = KeyValueSpec(
    bucket="praxis_edges",
    history=1,
    limit_marker_ttl_seconds=1,
    allow_msg_ttl=True,
    description="Edge heartbeats: one key per live orchestrator, value = EdgeHeartbeat.",
)
# One key per API token (its id); value = the token's record with the SHA-256 of its secret, never
# the secret. Gateways watch the bucket, so a new or revoked token reaches every replica at once.
API_TOKENS = KeyValueSpec(
    bucket="praxis_api_tokens",
    history=1,
    description="HTTP API tokens: one key per token id, value = hashed token record.",
)
PROTOCOL_CODE = ObjectStoreSpec(
    bucket="praxis_protocol_code",
    description="Protocol source archives, one per (source, commit).",
)
STREAMS = (EVENTS, COMMANDS, DEAD_LETTERS)
KEY_VALUES = (ASSET_LEASES, EDGES, API_TOKENS)
OBJECT_STORES = (PROTOCOL_CODE,)
"""What every deployment has; per workcell and per identity stores come on top (below)."""

STATE_PREFIX = "praxis_state_"
CLAIMS_PREFIX = "praxis_claims_"
CLAIMS_TTL_SECONDS = 600


def workcell_state(workcell: str) -> ObjectStoreSpec:
    """Snapshots of one workcell's live labware state (``praxis_contracts.state``): written by
    its orchestrator alone (a store per workcell: object-store access cannot be narrowed by
    object name), read and pruned by the asset-manager to the newest ``SNAPSHOTS_KEPT``."""
    return ObjectStoreSpec(
        bucket=f"{STATE_PREFIX}{workcell}",
        description=f"State snapshots of workcell {workcell}: <workcell>/<snapshot id>, JSON.",
    )


def claims(identity: str) -> ObjectStoreSpec:
    """Request and reply bodies over the inline threshold (``praxis_runtime.claims``) one
    identity sends: only it writes (and deletes) them, every requester or responder reads
    them. The TTL removes what was read, or never will be."""
    return ObjectStoreSpec(
        bucket=f"{CLAIMS_PREFIX}{identity}",
        ttl_seconds=CLAIMS_TTL_SECONDS,
        max_bytes=1024**3,  # retries of 64 MiB bodies during an outage must not fill JetStream
        description=f"Bodies {identity} sends over the inline threshold, compressed.",
    )


DEAD_LETTER_PREFIX = "praxis.dlq"


def dead_letter_subject(original: str) -> str:
    """Where a message from ``original`` goes when it cannot be processed."""
    return f"{DEAD_LETTER_PREFIX}.{original.removeprefix('praxis.')}"
