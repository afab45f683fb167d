"""A run's PyLabRobot objects in a process of its own: copies that forward instrument commands.

Protocol code runs in a sandboxed *runner* process per run; the live PyLabRobot objects (the
machines with their backends, set up once, and the labware trackers every run on the workcell
shares) stay in the orchestrator, the *supervisor*. The runner gets **copies** of its run's leased
assets (``build_copies``), and nothing else: the same classes, names, geometry and state, so
protocol code reads wells, tips and volumes as it always does. On each machine copy (and its
backend) every public coroutine method is replaced by a *forwarder*: a call becomes a ``command``
message (machine, method, arguments), the supervisor executes it on its live object, inside the
run's ``WorkcellView`` (``praxis_plr.guard``: fence, leased machine, leased resources), and
answers with the result and the state of the run's assets that changed, which the runner loads
into its copies (``apply``). The supervisor's objects are the truth; a copy only mirrors it.

Arguments and results cross the boundary through a strict codec (``encode``/``decode``):
numbers, strings, booleans, ``None``, lists, string-keyed dicts, ``Coordinate`` s, PyLabRobot
enum members, and resources *by name* (resolved on the supervisor among the run's leased assets
only: a name of anything else is ``AssetNotLeased``). Nothing else is constructed from a runner's
message; in particular no class is looked up by a name the runner chose.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import inspect
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import Coordinate, Deck, Resource

from praxis_contracts.assets import WorkcellLayout
from praxis_contracts.errors import (
    AssetNotLeased,
    ErrorReply,
    InvalidRequest,
    PraxisError,
    error_from_reply,
)
from praxis_plr._state import state_from_json, state_to_json
from praxis_plr.guard import WorkcellView
from praxis_plr.layout import _LABWARE, is_structure, machine_frames

log = logging.getLogger(__name__)

MAX_DEPTH = 8
MAX_ITEMS = 20_000
NOT_COMMANDS = frozenset({"setup", "stop"})
"""Coroutine methods a run may not call on a machine: the orchestrator sets machines up and
stops them, never a protocol."""
Targets = ("machine", "backend")


class CodecError(TypeError):
    """A value that cannot cross between the runner and the supervisor."""


# -- the codec -------------------------------------------------------------------------------------


def encode(value: Any, *, result: bool = False) -> Any:
    """``value`` as JSON the other side can ``decode``; raises ``CodecError`` for anything
    else (say what can be sent). An instrument's ``result`` may also hold non-finite floats (a
    reader's empty well is NaN) and other objects, which arrive as their ``repr``."""
    return _encode(value, result, 0, [0])


def _encode(value: Any, result: bool, depth: int, count: list[int]) -> Any:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_ITEMS:
        raise CodecError("the value is too deep or too large to send to an instrument")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if result:
            return {"$float": repr(value)}
        raise CodecError(f"{value} cannot be sent to an instrument")
    if isinstance(value, Resource):
        return {"$resource": value.name}
    if isinstance(value, Coordinate):
        return {"$coordinate": [value.x, value.y, value.z]}
    if isinstance(value, enum.Enum):
        cls = type(value)
        if cls.__module__.startswith("pylabrobot."):
            return {"$enum": f"{cls.__module__}:{cls.__qualname__}", "name": value.name}
        if not result:
            raise CodecError(f"only PyLabRobot enums can be sent, not {cls.__qualname__}")
    elif isinstance(value, list | tuple):
        return [_encode(item, result, depth + 1, count) for item in value]
    elif isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            if result:
                return repr(value)[:4000]
            raise CodecError("only dicts with string keys can be sent to an instrument")
        if any(key.startswith("$") for key in value):
            raise CodecError("dict keys may not start with '$'")
        return {key: _encode(item, result, depth + 1, count) for key, item in value.items()}
    if result:
        return repr(value)[:4000]
    raise CodecError(
        f"a {type(value).__name__} cannot be sent to an instrument: pass resources, numbers, "
        "strings, booleans, None, Coordinates, PyLabRobot enums, and lists or dicts of them"
    )


def decode(value: Any, resolve: Callable[[str], Resource], *, result: bool = False) -> Any:
    """The value ``encode`` made, with resources looked up by ``resolve``; non-finite floats
    only in a ``result``."""
    return _decode(value, resolve, result, 0)


def _decode(value: Any, resolve: Callable[[str], Resource], result: bool, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("the value is too deep")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):  # not JSON; a channel never carries one, but check
            raise CodecError(f"{value} cannot be sent to an instrument")
        return value
    if isinstance(value, list):
        return [_decode(item, resolve, result, depth + 1) for item in value]
    if not isinstance(value, dict):
        raise CodecError(f"cannot decode a {type(value).__name__}")
    if "$resource" in value:
        return resolve(_text(value["$resource"]))
    if "$coordinate" in value:
        x, y, z = (float(v) for v in value["$coordinate"])
        if not all(math.isfinite(v) for v in (x, y, z)):
            raise CodecError("a coordinate must be finite")
        return Coordinate(x, y, z)
    if "$enum" in value:
        return _enum(_text(value["$enum"]), _text(value["name"]))
    if "$float" in value:
        if not result:
            raise CodecError(f"{value['$float']} cannot be sent to an instrument")
        text = _text(value["$float"])
        if text not in ("nan", "inf", "-inf"):
            raise CodecError(f"{text!r} is not a float")
        return float(text)
    return {_text(k): _decode(v, resolve, result, depth + 1) for k, v in value.items()}


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise CodecError("expected a string")
    return value


def _enum(path: str, name: str) -> enum.Enum:
    module, _, qualname = path.partition(":")
    # Only a module already imported here: a runner's message never makes this process import.
    obj: Any = sys.modules.get(module) if module.startswith("pylabrobot.") else None
    if obj is None or not qualname:
        raise CodecError(f"{path} is not a PyLabRobot enum")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, enum.Enum)):
        raise CodecError(f"{path} is not an enum")
    try:
        member: enum.Enum = obj[name]
    except KeyError:
        raise CodecError(f"{path} has no member {name!r}") from None
    return member


# -- errors --------------------------------------------------------------------------------------


def error_reply(exc: BaseException) -> dict[str, Any]:
    """An exception raised by a command, as the runner re-raises it (``raise_error``)."""
    if isinstance(exc, PraxisError):
        return {"praxis": exc.to_reply().model_dump(mode="json")}
    cls = type(exc)
    return {"type": f"{cls.__module__}:{cls.__qualname__}", "message": str(exc)[:4000]}


class InstrumentError(Exception):
    """An instrument command failed with an error that could not be rebuilt here."""


def raise_error(error: Mapping[str, Any]) -> None:
    """Raise what ``error_reply`` describes: a Praxis error by its code, a PyLabRobot (or
    built-in) error as its own class when it can be built from its message, else
    ``InstrumentError``."""
    if "praxis" in error:
        raise error_from_reply(ErrorReply.model_validate(error["praxis"]))
    path, message = str(error.get("type", "")), str(error.get("message", ""))
    built = _rebuilt(path, message)
    if built is not None:
        raise built
    raise InstrumentError(f"{path.rpartition(':')[2] or 'error'}: {message}")


def _rebuilt(path: str, message: str) -> Exception | None:
    module, _, qualname = path.partition(":")
    if not (module.startswith("pylabrobot.") or module == "builtins") or not qualname:
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Exception):
            built: Exception = obj(message)
            return built
    except Exception:
        return None
    return None


# -- the runner's copies -------------------------------------------------------------------------

Send = Callable[[str, str, str, list[Any], dict[str, Any]], Awaitable[Any]]
"""``send(machine, target, method, args, kwargs)``: run the command on the supervisor, return its
decoded result (or raise what it raised)."""


def run_assets(layout: WorkcellLayout, leased: Iterable[str]) -> list[str]:
    """The assets a run works with, in layout order: those it leased, the deck and carriers of
    each machine it leased (``machine_frames``: the machine's, as in ``praxis_plr.guard``), and
    the deck and carriers its leased labware sits on (a *frame*, so ``plate.parent`` is where
    the plate is, and a plate moved away by hand can be put back; the guard still counts them
    as their machine's)."""
    names = set(leased)
    by_id = {a.accession_id: a for a in layout.assets}
    machines = {a.name for a in layout.assets if a.name in names and a.kind == "machine"}
    wanted = names | machine_frames(layout, machines)
    for asset in layout.assets:
        if asset.name not in names:
            continue
        parent = by_id.get(asset.parent_id) if asset.parent_id else None
        seen = 0
        while parent is not None and seen < len(by_id):
            if is_structure(parent):
                wanted.add(parent.name)
            parent = by_id.get(parent.parent_id) if parent.parent_id else None
            seen += 1
    return [a.name for a in layout.assets if a.name in wanted]


def copy_layout(layout: WorkcellLayout, names: Iterable[str]) -> WorkcellLayout:
    """The part of ``layout`` a run's copies are built from: the assets ``names`` (``run_assets``),
    each placed in its parent only if that is one of them too (else a root of its own)."""
    wanted = set(names)
    kept = {a.accession_id for a in layout.assets if a.name in wanted}
    assets = [
        a if a.parent_id in kept else a.model_copy(update={"parent_id": None, "slot": None})
        for a in layout.assets
        if a.name in wanted
    ]
    return layout.model_copy(update={"assets": assets})


def forward(machine: Machine, name: str, send: Send) -> None:
    """Replace every public coroutine method of ``machine`` (the copy) and of its backend with
    a forwarder to the supervisor, on the instances (no class is touched)."""
    for target, obj in (("machine", machine), ("backend", machine.backend)):
        for attr in dir(type(obj)):
            if attr.startswith("_") or attr in NOT_COMMANDS:
                continue
            if inspect.iscoroutinefunction(getattr(type(obj), attr, None)):
                setattr(obj, attr, _forwarder(send, name, target, attr))


def _forwarder(send: Send, machine: str, target: str, method: str) -> Callable[..., Any]:
    async def command(*args: Any, **kwargs: Any) -> Any:
        return await send(machine, target, method, list(args), kwargs)

    command.__name__ = command.__qualname__ = method
    return command


def apply(copies: Mapping[str, Resource], changes: Mapping[str, Any]) -> None:
    """Load what the supervisor reports changed: ``states`` (asset name -> the state of its
    resources that changed) and ``placements`` (labware that moved: its new parent's name, or
    None, and its location). Nothing applied here is reported back as a move."""
    global _applying
    _applying += 1
    try:
        for name, place in (changes.get("placements") or {}).items():
            obj = copies.get(name)
            if obj is None:
                continue
            _move(obj, place, copies)
        for name, state in (changes.get("states") or {}).items():
            obj = copies.get(name)
            if isinstance(obj, Resource):  # a machine that is no resource has no state
                obj.load_all_state(state_from_json(state))
    finally:
        _applying -= 1


_applying = 0  # apply() is placing copies: what it moves is the supervisor's news, not a move


def track_moves(copies: Mapping[str, Resource], report: Callable[[dict[str, Any]], None]) -> None:
    """Report each move of a leased asset between the copies (``plate.unassign()``,
    ``reader.assign_child_resource(plate)``: moving labware by hand) as a ``move`` message for
    the supervisor to make on the live objects (``RunObjects.move``). PyLabRobot calls an
    object's assign/unassign callbacks for everything below it: each copy's callbacks report
    the moves whose (old or new) parent is nearest to it, so a move is reported once."""
    assets = {id(obj): name for name, obj in copies.items()}

    def nearest_asset(node: Resource | None) -> int | None:
        while node is not None:
            if id(node) in assets:
                return id(node)
            node = node.parent
        return None

    for obj in copies.values():
        if not isinstance(obj, Resource):  # a pump: nothing sits on it
            continue
        holder = id(obj)

        def will_unassign(child: Resource, holder: int = holder) -> None:
            if not _applying and id(child) in assets and nearest_asset(child.parent) == holder:
                report({"op": "move", "child": assets[id(child)], "parent": None})

        def did_assign(child: Resource, holder: int = holder) -> None:
            if not _applying and id(child) in assets and nearest_asset(child.parent) == holder:
                assert child.parent is not None
                where = child.location
                report(
                    {
                        "op": "move",
                        "child": assets[id(child)],
                        "parent": child.parent.name,
                        "location": [where.x, where.y, where.z] if where is not None else None,
                    }
                )

        obj.register_will_unassign_resource_callback(will_unassign)
        obj.register_did_assign_resource_callback(did_assign)
        obj.register_will_assign_resource_callback(_known_only(assets))


def _known_only(assets: Mapping[int, str]) -> Callable[[Resource], None]:
    """Refuse to put labware that is not in the inventory among the run's copies: the live
    workcell would never have it (nothing is built from a runner's message), so the protocol
    would go on with a deck that is not the real one."""

    def will_assign(child: Resource) -> None:
        if not _applying and id(child) not in assets and child.parent is None:
            raise InvalidRequest(
                f"{child.name!r} is not in the workcell's inventory: a protocol moves the "
                "labware its run leased; new labware is added to the inventory "
                "(POST /api/v1/resources) and leased like any other",
                resource=child.name,
            )

    return will_assign


def _move(obj: Resource, place: Mapping[str, Any], copies: Mapping[str, Resource]) -> None:
    if obj.parent is not None:
        obj.parent.unassign_child_resource(obj)
    parent_name = place.get("parent")
    if parent_name is None:
        return
    for root in copies.values():
        try:
            parent = root if root.name == parent_name else root.get_resource(parent_name)
        except Exception:
            continue
        location = place.get("location")
        where = Coordinate(*location) if location else None
        try:
            parent.assign_child_resource(obj, location=where)
        except TypeError:
            parent.assign_child_resource(obj)
        return


# -- the supervisor: one run's commands ----------------------------------------------------------


class RunObjects:
    """What one run may command and read on the supervisor: its leased assets' live objects
    (``live``: asset name -> object), their resources by name, and what it was last told of
    their state and placement (so each answer carries only what changed).

    ``live`` are the run's assets (``run_assets``: its leased assets and their decks), of
    which ``leased`` are the ones it leased; ``others`` are the live objects of the workcell's
    other assets: a name resolves only to a resource reached from one of the run's assets
    without passing through one of them (a leased liquid handler's deck holds plates the run
    did not lease), and their state is never reported. ``view`` (the run's guard) decides
    where its labware may be moved by hand (``move``)."""

    def __init__(
        self,
        live: Mapping[str, Resource],
        machines: Iterable[str],
        others: Iterable[Resource] = (),
        run_id: object = None,
        *,
        leased: Iterable[str] | None = None,
        view: WorkcellView | None = None,
    ) -> None:
        self.live = dict(live)
        self.machines = set(machines)
        self.run_id = run_id
        self.leased = set(leased) if leased is not None else set(self.live)
        self.view = view
        self._homes = {name: getattr(obj, "parent", None) for name, obj in self.live.items()}
        self._lifted: set[str] = set()  # labware the runner unassigned, not yet put down
        ours = {id(obj) for obj in self.live.values()}
        self._others = {id(obj) for obj in others} - ours
        self._separate = ours | self._others
        self._index: dict[str, Resource] = {}
        self._told_states: dict[int, Any] = {}  # id() of a resource -> its state, as told
        self._watched: dict[int, tuple[Resource, Callable[[Any], None]]] = {}
        self._dirty: set[int] = set()
        self._told_places: dict[str, tuple[str | None, tuple[float, float, float] | None]] = {}
        self.changes()  # what the runner was built with

    def resolve(self, name: str) -> Resource:
        """A resource of the run's leased assets by name; ``AssetNotLeased`` for anything else."""
        found = self._index.get(name)
        if found is None or not self._reached(found):
            self._reindex()
            found = self._index.get(name)
        if found is None:
            run = f" to run {self.run_id}" if self.run_id is not None else ""
            raise AssetNotLeased(
                f"{name!r} is not part of an asset leased{run}", asset=name, run_id=self.run_id
            )
        return found

    def _reindex(self) -> None:
        index: dict[str, Resource] = {}
        for obj in self.live.values():
            stack = [obj]
            while stack:
                node = stack.pop()
                index.setdefault(node.name, node)
                children = getattr(node, "children", ())  # a pump has none
                stack.extend(c for c in children if id(c) not in self._others)
        self._index = index

    def _reached(self, resource: Resource) -> bool:
        """Whether ``resource`` still hangs below a leased asset and no other asset."""
        leased = {id(obj) for obj in self.live.values()}
        node: Resource | None = resource
        while node is not None:
            if id(node) in leased:
                return True
            if id(node) in self._others:
                return False
            node = node.parent
        return False

    def method(self, machine: str, target: str, name: str) -> Callable[..., Awaitable[Any]]:
        """The bound coroutine method a command names, if it is one a run may call."""
        if machine not in self.machines:
            raise AssetNotLeased(f"machine {machine!r} is not leased to this run", asset=machine)
        obj: Any = self.live[machine]
        if target == "backend":
            obj = obj.backend
        elif target != "machine":
            raise InvalidRequest(f"unknown command target {target!r}")
        if name.startswith("_") or name in NOT_COMMANDS:
            raise InvalidRequest(f"{name!r} is not an instrument command a run may send")
        if not inspect.iscoroutinefunction(getattr(type(obj), name, None)):
            raise InvalidRequest(f"{type(obj).__name__} has no instrument command {name!r}")
        bound: Callable[..., Awaitable[Any]] = getattr(obj, name)
        return bound

    def changes(self) -> dict[str, Any]:
        """The state and placement of the run's assets that changed since last asked: per
        asset, the state of each of its resources that changed (``load_all_state`` loads those
        and leaves the rest)."""
        states: dict[str, Any] = {}
        placements: dict[str, Any] = {}
        for name, obj in self.live.items():
            if not isinstance(obj, Resource):  # a machine that is no resource: no state, no place
                continue
            changed: dict[str, Any] = {}
            for part in self._parts(obj):
                key = id(part)
                if key not in self._watched:
                    self._watch(part)
                elif part is not obj and key not in self._dirty:
                    continue  # no state update since it was last told
                state = state_to_json({part.name: part.serialize_state()})[part.name]
                if self._told_states.get(key) != state:
                    self._told_states[key] = state
                    changed[part.name] = state
            if changed:
                states[name] = changed
            parent = obj.parent.name if obj.parent is not None else None
            location = obj.location
            place = (parent, (location.x, location.y, location.z) if location else None)
            if self._told_places.get(name) != place:
                self._told_places[name] = place
                placements[name] = {"parent": place[0], "location": place[1]}
        self._dirty.clear()
        return {"states": states, "placements": placements}

    def undo_pending(self) -> None:
        """After a command that failed: roll back the tracker operations it queued and never
        committed, so the state says what is really there. PyLabRobot queues a multi-channel
        aspiration's trackers channel by channel; when a later channel finds too little
        liquid, the earlier channels' removals stay queued and the wells showed liquid taken
        that never was. A command that ended commits or rolls back its own operations, so with
        no other command of the run under way nothing else is pending."""
        for obj in self.live.values():
            for part in self._parts(obj):
                _rollback(getattr(part, "tracker", None))
            head = getattr(obj, "head", None)  # a liquid handler's channels and their tips
            for channel in head.values() if isinstance(head, dict) else []:
                _rollback(channel)
                if channel.has_tip:
                    _rollback(channel.get_tip().tracker)

    def move(self, child: str, parent: str | None, location: Any) -> None:
        """Make a move the runner made by hand (``track_moves``) on the live objects: only a
        labware asset the run leased moves, only onto a resource of an asset it leased (the
        guard's rule: ``view``) or back where it was when the run began."""
        obj = self.live.get(child)
        if obj is None or child not in self.leased or child in self.machines:
            raise AssetNotLeased(
                f"{child!r} is not labware leased to run {self.run_id}: it cannot be moved",
                asset=child,
                run_id=self.run_id,
            )
        if parent is None:
            # Lifted: taken off its parent once the run sends a command or reaches a
            # checkpoint holding it (``settle``), so a refused placement right after leaves it
            # where it was, not nowhere.
            self._lifted.add(child)
            return
        target = self.resolve(parent)
        if target is not self._homes.get(child) and self.view is not None:
            self.view.check_reachable(target)
        where = None
        if location is not None:
            x, y, z = (float(v) for v in location)
            where = Coordinate(x, y, z)
        self._lifted.discard(child)
        target.assign_child_resource(obj, location=where)
        self._told(child, obj)

    def settle(self) -> None:
        """Take the labware the run lifted and did not put down off its parent."""
        for child in sorted(self._lifted):
            obj = self.live[child]
            if obj.parent is not None:
                obj.unassign()
            self._told(child, obj)
        self._lifted.clear()

    def _told(self, child: str, obj: Resource) -> None:
        """The runner has ``obj`` where it is now (it moved it there itself)."""
        place = obj.parent.name if obj.parent is not None else None
        at = obj.location
        self._told_places[child] = (place, (at.x, at.y, at.z) if at is not None else None)

    def _parts(self, obj: Resource) -> Iterator[Resource]:
        """``obj`` and the resources whose state it owns (as ``own_state`` walks them)."""
        if not isinstance(obj, Resource):
            return
        yield obj
        if not isinstance(obj, _LABWARE):
            return
        for child in obj.children:
            if not isinstance(child, Machine | Deck) and id(child) not in self._separate:
                yield from self._parts(child)

    def _watch(self, part: Resource) -> None:
        """Mark ``part`` changed whenever PyLabRobot reports a state update of it (its volume
        or tip tracker): only those are serialized again. The asset's own object is compared
        on every command (a machine's state, say, has no tracker)."""
        key = id(part)

        def updated(_state: Any, key: int = key) -> None:
            self._dirty.add(key)

        part.register_state_update_callback(updated)
        self._watched[key] = (part, updated)

    def close(self) -> None:
        """Stop watching the live objects (the run ended)."""
        for part, updated in self._watched.values():
            with contextlib.suppress(ValueError):
                part.deregister_state_update_callback(updated)
        self._watched.clear()


def _rollback(tracker: Any) -> None:
    rollback = getattr(tracker, "rollback", None)
    if callable(rollback) and not getattr(tracker, "is_disabled", False):
        rollback()
