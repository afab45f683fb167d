"""Replaying a dead letter: the consumer that dead-lettered a message handles it again, in its
own process, when an operator asks (``POST /api/v1/dead-letters/{seq}/replay``).

Every service with durable consumers answers ``ReplayDeadLetter`` on
``praxis.rpc.deadletters.replay.<its identity>.<durable>`` for each of its durables (the bus
registers them). The request names the dead letter by its sequence; the dead letter is read from
its stream and checked before the consumer's handler gets it as a delivery would:

- it was dead-lettered by this identity's consumer (its headers say so) and stored on the
  dead-letter subject of the subject it came from (which only that subject's consumers may
  write: a dead letter another identity stored by hand cannot pose as this consumer's);
- that subject is one the consumer takes, and the message names it;
- it was published, not stored from a JetStream reply.

The consumer is stopping (its service draining): refused as unavailable, to be asked again.

- The handler's own rules apply: handlers are idempotent, so a replay of a message that was in
  fact handled changes nothing, and a second replay is harmless.
- Each replay is announced, handled or failed, as ``DeadLetterReplayed`` keyed by the identity
  and consumer, with the operator (``actor``) and reason: the audit trail keeps it. A failure
  is also the reply's error; the dead letter stays in its stream either way (nothing may
  delete there).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from praxis_contracts import headers as h
from praxis_contracts.deadletters import DeadLetterReplay, DeadLetterReplayed, ReplayDeadLetter
from praxis_contracts.errors import (
    Conflict,
    InternalError,
    InvalidRequest,
    NotFound,
    PraxisError,
    Unavailable,
)
from praxis_contracts.topology import DEAD_LETTERS, dead_letter_subject
from praxis_runtime.dberrors import as_domain_error
from praxis_runtime.logging import actor_var

log = logging.getLogger(__name__)

Handle = Callable[[Any], Awaitable[None]]
"""A consumer's handler bound to its dependencies."""


def matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more at the end."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for i, want in enumerate(wanted):
        if want == ">":
            return len(tokens) > i
        if i >= len(tokens) or (want != "*" and want != tokens[i]):
            return False
    return len(tokens) == len(wanted)


class Replayer:
    """The replays one bus answers: its consumers by durable name."""

    def __init__(
        self,
        identity: str,
        js: Callable[[], JetStreamContext],
        announce: Callable[[DeadLetterReplayed], Awaitable[Any]],
        accepting: Callable[[type[Any]], bool] = lambda _: True,
    ) -> None:
        self.identity = identity
        self._js = js
        self._announce = announce
        self._accepting = accepting
        self._consumers: dict[str, tuple[type[Any], str, Handle]] = {}

    def add(self, durable: str, message_type: type[Any], filter_subject: str, fn: Handle) -> None:
        self._consumers[durable] = (message_type, filter_subject, fn)

    async def replay(self, request: ReplayDeadLetter) -> DeadLetterReplay:
        found = self._consumers.get(request.consumer)
        if request.identity != self.identity or found is None:
            raise NotFound(f"{self.identity} has no consumer {request.consumer}")
        message_type, filter_subject, fn = found
        if not self._accepting(message_type):
            raise Unavailable(f"{request.consumer} is stopping: ask again")
        try:
            stored = await self._js().get_msg(DEAD_LETTERS.name, request.seq)
        except NotFoundError:
            raise NotFound(f"no dead letter {request.seq}") from None
        headers = stored.headers or {}
        original = headers.get(h.DEAD_LETTER_SUBJECT, "")
        by = (headers.get(h.DEAD_LETTER_IDENTITY), headers.get(h.DEAD_LETTER_CONSUMER))
        if by != (self.identity, request.consumer):
            raise Conflict(
                f"dead letter {request.seq} was not dead-lettered by "
                f"{self.identity}/{request.consumer}",
                identity=by[0],
                consumer=by[1],
            )
        if stored.subject != dead_letter_subject(original):
            raise Conflict(
                f"dead letter {request.seq} is stored on {stored.subject}, not where "
                f"{original or 'its subject'} is dead-lettered"
            )
        if echoed := sorted(h.JETSTREAM_REPLY & set(headers)):
            raise Conflict(f"dead letter {request.seq} was stored from a reply ({echoed[0]})")
        if not matches(original, filter_subject):
            raise Conflict(
                f"dead letter {request.seq} came from {original or 'nowhere known'}, which "
                f"{request.consumer} does not take ({filter_subject})"
            )
        error: PraxisError | None = None
        try:
            await fn(_decoded(message_type, stored.data or b"", original))
        except PraxisError as exc:
            error = exc
        except Exception as exc:
            error = as_domain_error(exc) or _internal(exc)
        await self._announce(
            DeadLetterReplayed(
                seq=request.seq,
                identity=self.identity,
                consumer=request.consumer,
                original_subject=original,
                outcome="failed" if error else "processed",
                error=f"{error.code}: {error.message}" if error else None,
                reason=request.reason,
                actor=request.actor or actor_var.get(),
                at=datetime.now(UTC),
            )
        )
        if error is not None:
            log.warning("replay of dead letter %d failed: %s", request.seq, error.message)
            raise error
        log.info("dead letter %d replayed by %s", request.seq, request.consumer)
        return DeadLetterReplay(
            seq=request.seq,
            identity=self.identity,
            consumer=request.consumer,
            original_subject=original,
            message_type=message_type.__name__,
        )


def _decoded(message_type: type[Any], data: bytes, original: str) -> Any:
    """The dead letter's message, held to what a delivery is held to: valid, and naming the
    subject it was published on."""
    try:
        message = message_type.model_validate_json(data)
    except ValidationError as exc:
        raise InvalidRequest(
            f"the dead letter is a malformed {message_type.__name__}: {exc.error_count()} errors"
        ) from None
    if message.routing_subject() != original:
        raise InvalidRequest(
            f"the dead letter was published on {original} but names {message.routing_subject()}"
        )
    return message


def _internal(exc: Exception) -> PraxisError:
    incident = uuid.uuid4().hex[:12]
    log.exception("replay failed (incident %s)", incident, exc_info=exc)
    return InternalError(f"the handler failed ({type(exc).__name__}; incident {incident})")
