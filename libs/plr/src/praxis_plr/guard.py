"""A run's view of its workcell: it reaches only the assets it leased.

Two runs on one workcell share the live PyLabRobot objects but not their leases, so the guard is
per run: a ``WorkcellView`` in the context variable ``current_view``, set in the task that runs
the protocol (tasks and ``asyncio.to_thread`` calls it starts inherit it). Outside any run (the
orchestrator setting machines up or stopping them) nothing changes.

Two lines of defence:

* The hard guarantee, at the backend boundary. Every coroutine method of each live machine's
  backend is wrapped on that backend instance (``guard_machine``; no class is touched). Before
  the backend sees a command, the current view checks its fence (the run's leases are still
  held, from the lease keeper's local state: no network round trip; the run was not abandoned),
  that the machine is leased, and that every resource in the command (ops carry ``.resource``:
  tip spots, wells, containers, plates being moved) belongs to a leased asset. PyLabRobot
  queues its tip and volume tracker changes before the backend call and rolls them back when
  the backend raises, so a refused command leaves the plate's state as it was. A command from a
  thread other than the one that built the workcell, with no view (a thread the protocol
  started by hand), is refused too.
* The friendlier first line, at navigation: ``Resource.get_resource`` (and ``Deck``'s),
  ``Resource.get_root`` refuse, inside a run, to hand out a resource of an asset the run did not
  lease. These two class methods are wrapped once (``install_navigation_guard``); without a
  current view the wrappers return exactly what the originals do. Plain attributes (``parent``,
  ``children``, ``lh.deck``) cannot be guarded without changing PyLabRobot's classes for every
  caller: what is reached through them is still stopped at the backend.

Ownership: a resource belongs to the nearest asset at or above it (a well to its plate). A
deck inside a leased machine counts as the machine's (a liquid handler's trash, its carriers'
sites). A resource under no asset at all is nobody's and is let through.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import Deck, Resource

from praxis_contracts.errors import AssetNotLeased, LeaseLost

current_view: ContextVar[WorkcellView | None] = ContextVar("praxis_workcell_view", default=None)

GUARDED_ATTR = "_praxis_guarded_machine"
_DEPTH = 3  # ops are dataclasses holding resources, lists of them, or lists of such ops


class WorkcellView:
    """What one run may reach: its leased assets, while its fence holds.

    ``assets`` maps ``id()`` of every asset's live object in the workcell to the asset's name
    (to find the asset a resource belongs to); ``leased`` names the run's assets; ``fence``
    raises ``LeaseLost`` when a lease is no longer the run's.
    """

    def __init__(
        self,
        run_id: object,
        leased: Mapping[str, Resource],
        assets: Mapping[int, str],
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.run_id = str(run_id)
        self.assets = dict(assets)
        self.leased = set(leased)
        for obj in leased.values():  # a machine's own deck is the machine's
            if isinstance(obj, Machine):
                self.leased.update(
                    self.assets[id(child)]
                    for child in getattr(obj, "children", ())  # a pump has none
                    if isinstance(child, Deck) and id(child) in self.assets
                )
        self.fence = fence
        self.abandoned: str | None = None  # why, once the orchestrator gave the run up
        self.commands = 0  # instrument commands sent
        self.in_flight = 0  # instrument commands under way now
        self.interrupted = (
            False  # a command was cancelled midway: the instrument's state is unknown
        )

    def owner_of(self, resource: Resource) -> str | None:
        """The asset ``resource`` belongs to (nearest at or above it), or None."""
        node: Resource | None = resource
        while node is not None:
            name = self.assets.get(id(node))
            if name is not None:
                return name
            node = node.parent
        return None

    def check_reachable(self, resource: Resource) -> None:
        owner = self.owner_of(resource)
        if owner is not None and owner not in self.leased:
            what = "" if owner == resource.name else f" ({resource.name} belongs to it)"
            raise AssetNotLeased(
                f"asset {owner!r}{what} is not leased to run {self.run_id}",
                asset=owner,
                run_id=self.run_id,
            )

    def abandon(self, why: str) -> None:
        """Refuse every further command: the orchestrator no longer answers for this run."""
        self.abandoned = why

    def check_fence(self) -> None:
        if self.abandoned is not None:
            raise LeaseLost(
                f"run {self.run_id} was abandoned ({self.abandoned}); instrument commands are "
                "refused",
                run_id=self.run_id,
            )
        if self.fence is not None:
            self.fence()

    def check_command(self, machine: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Before an instrument command: fence, the machine, every resource it touches."""
        self.check_fence()
        if machine not in self.leased:
            raise AssetNotLeased(
                f"machine {machine!r} is not leased to run {self.run_id}",
                asset=machine,
                run_id=self.run_id,
            )
        for value in (*args, *kwargs.values()):
            for resource in _resources_in(value, _DEPTH):
                self.check_reachable(resource)


def _resources_in(value: Any, depth: int) -> Iterator[Resource]:
    if isinstance(value, Resource):
        yield value
    elif depth <= 0 or isinstance(value, str | bytes | int | float | bool | None):
        return
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _resources_in(item, depth - 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _resources_in(item, depth - 1)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _resources_in(getattr(value, f.name, None), depth - 1)


def guard_machine(machine: Machine, name: str, owner_thread: int | None = None) -> None:
    """Wrap every public coroutine method of ``machine``'s backend, on the instance, with the
    current view's command check. Idempotent. ``owner_thread``: the thread allowed to command
    the machine with no view (the one that sets machines up and stops them)."""
    backend = machine.backend
    if getattr(backend, GUARDED_ATTR, None) is not None:
        return
    owner = threading.get_ident() if owner_thread is None else owner_thread
    for attr in dir(type(backend)):
        if attr.startswith("_"):
            continue
        if inspect.iscoroutinefunction(getattr(type(backend), attr, None)):
            setattr(backend, attr, _guarded(getattr(backend, attr), name, owner))
    setattr(backend, GUARDED_ATTR, name)


def _guarded(method: Callable[..., Any], machine: str, owner: int) -> Callable[..., Any]:
    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        view = current_view.get()
        if view is None:
            if threading.get_ident() != owner:
                raise AssetNotLeased(
                    f"instrument command {method.__name__} on {machine!r} outside any run "
                    "(from a thread the orchestrator did not start for a run)",
                    asset=machine,
                )
            return await method(*args, **kwargs)
        view.check_command(machine, args, kwargs)
        view.commands += 1
        view.in_flight += 1
        try:
            return await method(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled midway through the command
                view.interrupted = True
            raise
        finally:
            view.in_flight -= 1

    return guarded


_installed = False
_install_lock = threading.Lock()


def install_navigation_guard() -> None:
    """Make ``get_resource`` / ``get_root`` refuse, inside a run, what the run did not lease.
    Idempotent; without a current view the wrapped methods behave exactly as before."""
    global _installed
    with _install_lock:
        if _installed:
            return
        for cls, attr in (
            (Resource, "get_resource"),
            (Deck, "get_resource"),
            (Resource, "get_root"),
        ):
            original = cls.__dict__[attr]
            setattr(cls, attr, _navigation(original))
        _installed = True


def _navigation(original: Callable[..., Resource]) -> Callable[..., Resource]:
    @functools.wraps(original)
    def navigate(self: Resource, *args: Any, **kwargs: Any) -> Resource:
        found = original(self, *args, **kwargs)
        view = current_view.get()
        if view is not None:
            view.check_reachable(found)
        return found

    return navigate
