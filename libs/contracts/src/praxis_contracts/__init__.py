"""Praxis wire contracts. Pure pydantic: no I/O, no framework, no PyLabRobot imports."""

from praxis_contracts.base import Command, Empty, Event, Message, Request, all_message_types

__all__ = ["Command", "Empty", "Event", "Message", "Request", "all_message_types"]
