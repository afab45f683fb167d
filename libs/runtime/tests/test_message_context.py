"""The context a message carries on: correlation id and actor, from the headers it came with
to the headers of what its handler publishes."""

from __future__ import annotations

import asyncio

from praxis_contracts import headers as h
from praxis_runtime.logging import (
    actor_var,
    context_headers,
    correlation_id_var,
    log_context,
    message_context,
    system_context,
)


def test_outgoing_headers_carry_the_correlation_and_the_actor_when_there_is_one() -> None:
    alone = context_headers()
    assert set(alone) == {h.CORRELATION_ID} and len(alone[h.CORRELATION_ID]) == 32
    with log_context(correlation_id="c-1", actor="token:alice"):
        assert context_headers() == {h.CORRELATION_ID: "c-1", h.ACTOR: "token:alice"}
        assert context_headers("c-2")[h.CORRELATION_ID] == "c-2"
    assert actor_var.get() is None and correlation_id_var.get() is None


def test_a_received_message_sets_its_senders_context_even_to_no_actor() -> None:
    with log_context(actor="token:stale"):
        with message_context({h.CORRELATION_ID: "c-9", h.ACTOR: "oidc:bob"}) as correlation:
            assert correlation == "c-9"
            assert context_headers() == {h.CORRELATION_ID: "c-9", h.ACTOR: "oidc:bob"}
        with message_context(None) as correlation:  # the system's message: nobody's
            assert actor_var.get() is None and len(correlation) == 32
        assert actor_var.get() == "token:stale"


async def test_background_work_acts_for_nobody_but_keeps_the_rest() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def work() -> None:
        seen.append((actor_var.get(), correlation_id_var.get()))

    with log_context(actor="token:alice", correlation_id="c-3"):
        await asyncio.get_running_loop().create_task(work(), context=system_context())
        await asyncio.get_running_loop().create_task(work())
    assert seen == [(None, "c-3"), ("token:alice", "c-3")]
