"""The live PyLabRobot objects of one workcell, built from a ``WorkcellLayout``.

Threading model: a ``LiveWorkcell`` belongs to the loop (and thread) that built it: building,
extending, stopping, snapshots and restores refuse to run elsewhere. It starts no threads of its
own. Protocols drive the live objects from other threads, each run on an event loop of its own
(see ``praxis_orchestrator.isolation``): PyLabRobot 0.2.2's liquid handler, plate reader and
their chatterbox backends hold no loop-bound asyncio object (no ``asyncio.Lock``/``Event`` is
created or awaited in ``liquid_handling``, ``plate_reading``, ``machines``, ``resources``), so
an operation may come from any one loop at a time. Some hardware backends do hold them
(``io/socket.py``, the BioTek, Tecan and Inheco backends): those would need their commands
marshalled to the loop that set them up. Nothing in them is thread-safe: two runs may
only drive one machine at a time, which the leases see to (a shareable machine would need a
lock of its own). Every machine's backend is guarded (``praxis_plr.guard``): inside a run, only
the run's leased assets can be commanded.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Collection, Iterable
from types import TracebackType
from typing import Any
from uuid import UUID

from pylabrobot.machines.backend import MachineBackend
from pylabrobot.machines.machine import Machine
from pylabrobot.resources import (
    Coordinate,
    Deck,
    Resource,
    ResourceHolder,
    set_tip_tracking,
    set_volume_tracking,
)
from pylabrobot.resources.errors import ResourceNotFoundError
from pylabrobot.utils.object_parsing import find_subclass

from praxis_contracts.assets import Asset, WorkcellLayout
from praxis_contracts.errors import InvalidRequest, UnknownAssetType
from praxis_contracts.state import Placement
from praxis_plr._state import state_from_json, state_to_json
from praxis_plr.guard import WorkcellView, guard_machine, install_navigation_guard
from praxis_plr.layout import (
    _LABWARE,  # one definition of labware: what drafts store state for
    definition_location,
    is_moved,
    machine_frames,
    placed_definition,
)
from praxis_plr.types import import_type

log = logging.getLogger(__name__)

# PyLabRobot finds backend classes by *class name* among already-imported subclasses. These
# packages import their backends (chatterboxes included); they are imported on demand.
_MACHINE_PACKAGES = (
    "liquid_handling",
    "plate_reading",
    "heating_shaking",
    "temperature_controlling",
    "shaking",
    "thermocycling",
    "centrifuge",
    "scales",
    "storage",
    "tilting",
    "sealing",
    "peeling",
    "pumps",
    "plate_washing",
    "powder_dispensing",
    "arms",
    "barcode_scanners",
    "only_fans",
)


def enable_tracking() -> None:
    """Turn on PyLabRobot's tip and volume tracking.

    They are process-wide switches, off by default, consulted at operation time. Praxis needs them
    on: the tip and well-volume state is what assets carry, what ``snapshot``/``restore`` move,
    and what makes a liquid handler refuse to pick up a missing tip or aspirate from an empty well.
    One orchestrator process owns all live workcells and they all want tracking, so the switches
    are turned on and never turned off again.
    """
    set_tip_tracking(True)
    set_volume_tracking(True)


class LiveWorkcell:
    """The live PyLabRobot objects of one workcell, by asset name.

    Build it with ``await LiveWorkcell.build(layout)``: root assets (``parent_id`` None) are
    deserialized from their ``definition`` (machines with their ``backend``), every machine is set
    up, then each asset's ``state`` is loaded. Non-root assets are found by name inside their
    root's tree: their own ``definition`` is not used to build anything. Usable as an async
    context manager that stops the machines on exit.
    """

    def __init__(
        self, layout: WorkcellLayout, objects: dict[str, Resource], machines: list[str]
    ) -> None:
        """Wrap already-built objects; use :meth:`build` instead."""
        self._layout = layout  # where things are (``follow_moves``)
        self._fetched = layout  # what the inventory said when last asked (``extend``)
        self._objects = objects
        self._machines = machines
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._detached: dict[UUID, Resource] = {}  # moved by ``extend``, placed again by ``_add``

    @classmethod
    def copies(cls, layout: WorkcellLayout) -> LiveWorkcell:
        """Copies of the layout's assets for a run's own process (``praxis_plr.remote``): the
        same classes, names, geometry and state, but no machine is set up or guarded (their
        commands are forwarded to the orchestrator's live objects)."""
        workcell = cls(layout, {}, [])
        workcell._build_objects(layout, layout.assets)
        workcell._machines = [
            a.name for a in layout.assets if isinstance(workcell._objects[a.name], Machine)
        ]
        workcell._load_states(layout.assets, set())
        return workcell

    @classmethod
    async def build(cls, layout: WorkcellLayout) -> LiveWorkcell:
        """Build, set up and load the state of a workcell's live objects.

        Raises:
            UnknownAssetType: an asset's ``fqn`` or a machine's backend type is unknown.
            InvalidRequest: the layout is inconsistent (duplicate names, missing parents, an asset
                that cannot be placed, a definition PyLabRobot cannot deserialize).
        """
        workcell = cls(layout, {}, [])
        workcell._loop = asyncio.get_running_loop()
        try:
            await workcell._add(layout, layout.assets)
        except BaseException:
            try:
                await workcell.stop()
            except Exception:
                log.exception("Stopping machines after a failed build failed too")
            raise
        return workcell

    async def extend(self, layout: WorkcellLayout) -> list[str]:
        """Follow the inventory's ``layout``: add what is new, move what moved, drop what is gone.

        Assets are matched by accession id, not name: a plate deleted and created again under
        its name (a new id) is a new plate, not the old one's live object with the old liquid.
        Labware that was deleted, or that now sits in another slot or parent (by id) or has
        another name, is taken out of its holder first, so its replacement can take the site;
        labware that moved or was renamed keeps its live object and state (its wells keep their
        names). A renamed machine or deck keeps its live object too. Machines are never stopped
        or dropped here (other runs may be driving them). Everything else keeps its live state.
        Returns the names added, moved or renamed.
        The inventory refuses to move or delete an asset a run holds, so none of this touches
        an asset in use.
        """
        self._check_owner()
        by_id = _index(layout.assets)
        # Compared with what the inventory said before, not with where things are: a move a
        # run made that the inventory has not recorded yet is not undone here.
        live = {asset.accession_id: asset for asset in self._fetched.assets}
        # A machine or deck renamed in the inventory: the same live object, under its new name.
        for old in live.values():
            now = by_id.get(old.accession_id)
            if old.kind == "resource" or now is None or now.name == old.name:
                continue
            if old.name in self._objects and now.name not in self._objects:
                obj = self._objects.pop(old.name)
                if getattr(obj, "parent", None) is None:  # a pump has no parent at all
                    obj.name = now.name
                # else PyLabRobot refuses to rename an assigned resource (a deck in its
                # handler): the live object keeps its name, the workcell knows it by the new one
                self._objects[now.name] = obj
                self._machines = [now.name if m == old.name else m for m in self._machines]
        moved: list[Asset] = []
        for old in sorted(live.values(), key=lambda a: -len(_ancestors(a, live))):
            if old.kind != "resource" or old.name not in self._objects:
                continue
            now = by_id.get(old.accession_id)
            if now is not None and (now.parent_id, now.slot, now.name) == (
                old.parent_id,
                old.slot,
                old.name,
            ):
                continue
            # Deleted, moved or renamed: out of its holder (a rename too, so the deck's index
            # of names learns the new one when it is placed again).
            obj = self._objects.pop(old.name)
            if obj.parent is not None:
                obj.parent.unassign_child_resource(obj)
            if now is not None:
                moved.append(now)
                self._detached[now.accession_id] = obj
            log.info("%s %r", "dropping" if now is None else "moving", old.name)
        # Labware is the same asset by id; machines and decks by name (they are not replaced
        # under a running orchestrator: a re-registered workcell gives them new ids).
        live_labware = {a.accession_id for a in live.values() if a.name in self._objects}
        moving = {asset.accession_id for asset in moved}
        new = [
            asset
            for asset in layout.assets
            if asset.accession_id not in moving
            and not (asset.kind == "resource" and asset.accession_id in live_labware)
            and not (asset.kind != "resource" and asset.name in self._objects)
        ]
        self._layout = self._fetched = layout
        await self._add(layout, [*new, *moved])
        return [asset.name for asset in [*new, *moved]]

    def has(self, assets: dict[UUID, str]) -> bool:
        """Whether each asset id is live under that name (``extend`` brings it if not)."""
        ids = {asset.accession_id: asset.name for asset in self._layout.assets}
        return all(
            ids.get(asset_id) == name and name in self._objects for asset_id, name in assets.items()
        )

    async def _add(self, layout: WorkcellLayout, assets: list[Asset]) -> None:
        moved, ordered = self._build_objects(layout, assets)
        machines = [a.name for a in ordered if isinstance(self._objects[a.name], Machine)]
        self._machines.extend(machines)
        install_navigation_guard()
        for name in machines:
            machine = self._objects[name]
            assert isinstance(machine, Machine)
            if not machine.setup_finished:
                await machine.setup()
            guard_machine(machine, name, self._thread)
        # After setup: LiquidHandler.setup() replaces its head trackers, dropping head state.
        self._load_states(ordered, moved)

    def _load_states(self, assets: Iterable[Asset], moved: set[UUID]) -> None:
        for asset in assets:
            if asset.state is not None and asset.accession_id not in moved:
                self._objects[asset.name].load_all_state(state_from_json(asset.state))

    def _build_objects(
        self, layout: WorkcellLayout, assets: list[Asset]
    ) -> tuple[set[UUID], list[Asset]]:
        """Deserialize (or move) ``assets`` into ``self._objects``; the ids that moved, and the
        assets parents first."""
        enable_tracking()
        by_id = _index(layout.assets)
        for asset in assets:
            import_type(class_name(asset))  # validates it; PLR's find-by-class-name needs it
            if asset.backend is not None:
                _ensure_backend_class(asset.backend)
            backend_def = asset.definition.get("backend")
            if isinstance(backend_def, dict):
                _ensure_backend_class(backend_def)

        depth = {asset.name: len(_ancestors(asset, by_id)) for asset in assets}
        ordered = sorted(assets, key=lambda asset: depth[asset.name])  # stable: layout order
        moved: set[UUID] = set()
        for asset in ordered:
            detached = self._detached.pop(asset.accession_id, None)
            if detached is not None:  # moved: the same live object (and liquid), a new place
                moved.add(asset.accession_id)
                detached.name = asset.name
                self._objects[asset.name] = (
                    _place(asset, detached, self._objects[by_id[asset.parent_id].name])
                    if asset.parent_id is not None
                    else detached
                )
            elif asset.parent_id is None:
                self._objects[asset.name] = _deserialize_root(asset)
            else:
                root = _ancestors(asset, by_id)[-1]
                found = _find_in_tree(self._objects[root.name], asset)
                parent = self._objects[by_id[asset.parent_id].name]
                self._objects[asset.name] = found or _attach(asset, parent)
            if asset.kind == "machine" and not isinstance(self._objects[asset.name], Machine):
                raise InvalidRequest(
                    f"Asset {asset.name!r} has kind 'machine' but is a "
                    f"{type(self._objects[asset.name]).__name__}.",
                    asset=asset.name,
                )
        return moved, ordered

    @property
    def layout(self) -> WorkcellLayout:
        """The layout this workcell was built from."""
        return self._layout

    def get(self, name: str) -> Any:
        """The live PyLabRobot object of the asset ``name``.

        Raises:
            KeyError: no asset of that name in this workcell.
        """
        try:
            return self._objects[name]
        except KeyError:
            raise KeyError(
                f"No asset named {name!r} in workcell {self._layout.workcell.name!r}; "
                f"known: {sorted(self._objects)}"
            ) from None

    def view(
        self, run_id: object, names: Iterable[str], fence: Callable[[], None] | None = None
    ) -> WorkcellView:
        """What a run leasing the assets ``names`` may reach (set it as ``current_view`` in the
        task running its protocol)."""
        names = list(names)
        machines = [name for name in names if isinstance(self._objects.get(name), Machine)]
        # A leased machine's deck and carriers are the machine's: its sites may be used.
        frame = machine_frames(self._layout, machines)
        leased = {name: self.get(name) for name in [*names, *sorted(frame)]}
        assets = {id(obj): name for name, obj in self._objects.items()}
        return WorkcellView(run_id, leased, assets, fence)

    def names(self) -> list[str]:
        """Asset names, in layout order."""
        return [asset.name for asset in self._layout.assets]

    def machine_names(self) -> list[str]:
        """Names of the machine assets, in setup order."""
        return list(self._machines)

    async def stop(self) -> None:
        """Stop every set-up machine (reverse setup order), trying all before raising."""
        self._check_owner()
        errors: list[Exception] = []
        for name in reversed(self._machines):
            machine = self._objects[name]
            assert isinstance(machine, Machine)
            if not machine.setup_finished:
                continue
            try:
                await machine.stop()
            except Exception as exc:
                log.exception("Stopping machine %r failed", name)
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("Stopping machines failed", errors)

    def snapshot(self, names: Iterable[str], *, sole_writer: bool = False) -> dict[str, Any]:
        """The state each named asset owns (:func:`own_state`), as detached strict JSON.

        Only what the asset owns, never what sits on it: a liquid handler's
        ``serialize_all_state()`` carries its whole deck (94 KB for the demo workcell) and a run
        record must fit in one NATS message. Labware placed on a machine or deck is an asset of
        its own and has its own entry when a run is bound to it.

        ``sole_writer``: the caller is the only one changing these assets (a run's worker thread
        holding their leases), so it may read them from its own thread. Only a read: the table
        of objects is copied in one step (atomic under the GIL), and the owner's loop neither
        changes an asset a run holds (``extend`` leaves leased assets alone) nor loads state
        into one (restores skip them).
        """
        if not sole_writer:
            self._check_owner()
        separate = {id(obj) for obj in list(self._objects.values())}
        return {name: state_to_json(own_state(self.get(name), separate)) for name in names}

    def placements(self, names: Iterable[str]) -> dict[str, Placement]:
        """Where each named labware asset is now (``Placement``), for the inventory to follow
        the moves runs make; machines and decks are not moved by runs and have none. A read
        only, like ``snapshot(sole_writer=True)``: a run's worker may call it for the labware
        its run holds."""
        objects = dict(self._objects)  # one step (atomic under the GIL)
        owners = {id(obj): name for name, obj in objects.items()}
        assets = {asset.name: asset for asset in self._layout.assets}
        found = {}
        for name in names:
            asset = assets.get(name)
            if asset is not None and asset.kind == "resource" and name in objects:
                found[name] = placement_of(objects[name], owners, assets)
        return found

    def follow_moves(self) -> WorkcellLayout:
        """The layout with each labware asset where it is now: runs move labware, and the
        copies a run gets, its frame (``run_assets``) and what ``extend`` compares the
        inventory with must say where it is, not where it was when the workcell was built."""
        self._check_owner()
        by_id = {asset.accession_id: asset for asset in self._layout.assets}
        places = self.placements([a.name for a in self._layout.assets if a.kind == "resource"])
        assets, changed = [], False
        for asset in self._layout.assets:
            place = places.get(asset.name)
            parent = by_id.get(asset.parent_id) if asset.parent_id is not None else None
            if place is None or not is_moved(
                parent_id=asset.parent_id,
                parent_name=parent.name if parent is not None else None,
                slot=asset.slot,
                definition=asset.definition,
                placement=place,
            ):
                assets.append(asset)
                continue
            changed = True
            definition = placed_definition(
                asset.definition, place.slot or place.parent, place.location
            )
            update = {"parent_id": place.parent_id, "slot": place.slot, "definition": definition}
            assets.append(asset.model_copy(update=update))
        if changed:
            self._layout = self._layout.model_copy(update={"assets": assets})
        return self._layout

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Load a :meth:`snapshot` back (e.g. to roll back a failed step).

        PyLabRobot limit: restored tips forget which tip spot they came from.
        """
        self._check_owner()
        targets = [(self.get(name), state_from_json(state)) for name, state in snapshot.items()]
        for target, state in targets:
            if isinstance(target, Resource):  # a machine that is no resource has no state
                target.load_all_state(state)

    async def __aenter__(self) -> LiveWorkcell:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _check_owner(self) -> None:
        """Refuse use from another thread or event loop than the one that built the workcell."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if threading.get_ident() != self._thread or (
            loop is not None and self._loop is not None and loop is not self._loop
        ):
            raise RuntimeError(
                "A LiveWorkcell must be used from the thread and event loop that built it."
            )


def own_state(obj: Resource, separate: Collection[int] = ()) -> dict[str, dict[str, Any]]:
    """The state ``obj`` owns, keyed by resource name like ``serialize_all_state()``.

    * Labware (plates, tip racks, tube racks, troughs, tubes, lids): its own state and that of
      its parts (wells, tip spots, rack slots and their tubes, the lid on it), which is what
      ``drafts_for_tree`` stores as a labware asset's ``state``.
    * Anything else (a machine, a deck, a carrier): ``serialize_state()`` of itself only; for a
      ``LiquidHandler`` that is its head (tips held), not the deck below it.

    Inside labware, a machine or deck and any object whose ``id`` is in ``separate`` (the live
    objects of other assets) are skipped with everything below them: they have their own entry.
    ``load_all_state`` accepts the result (it loads only the names it finds).
    """
    if not isinstance(obj, Resource):  # a machine that is no resource (a pump) keeps none
        return {}
    state = {obj.name: obj.serialize_state()}
    if isinstance(obj, _LABWARE):
        for child in obj.children:
            if not isinstance(child, Machine | Deck) and id(child) not in separate:
                state.update(own_state(child, separate))
    return state


def placement_of(obj: Resource, owners: dict[int, str], assets: dict[str, Asset]) -> Placement:
    """Where ``obj`` is: the nearest live asset above it (``owners``: ``id()`` of each asset's
    object -> its name), the resource of that asset it sits in, and its location where that
    resource does not place what it holds by itself (a ``ResourceHolder`` does)."""
    holder = obj.parent
    node = holder
    while node is not None and id(node) not in owners:
        node = node.parent
    if holder is None or node is None:
        return Placement()
    parent = owners[id(node)]
    where = obj.location
    location = None
    if not isinstance(holder, ResourceHolder) and where is not None:
        location = (float(where.x), float(where.y), float(where.z))
    parent_asset = assets.get(parent)
    return Placement(
        parent_id=parent_asset.accession_id if parent_asset is not None else None,
        parent=parent,
        slot=None if holder is node else holder.name,
        location=location,
    )


def _location(definition: dict[str, Any]) -> Coordinate | None:
    where = definition_location(definition)
    return Coordinate(*where) if where is not None else None


def _index(assets: list[Asset]) -> dict[UUID, Asset]:
    names = [asset.name for asset in assets]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidRequest(f"Duplicate asset names in layout: {duplicates}", names=duplicates)
    by_id = {asset.accession_id: asset for asset in assets}
    for asset in assets:
        if asset.parent_id is not None and asset.parent_id not in by_id:
            raise InvalidRequest(
                f"Asset {asset.name!r} has parent {asset.parent_id} which is not in the layout.",
                asset=asset.name,
            )
    return by_id


def _ancestors(asset: Asset, by_id: dict[UUID, Asset]) -> list[Asset]:
    """Parent, grandparent, …, root (empty for a root)."""
    chain: list[Asset] = []
    current = asset
    while current.parent_id is not None:
        current = by_id[current.parent_id]
        if current is asset or current in chain:
            raise InvalidRequest(f"Asset {asset.name!r} is in a parent cycle.", asset=asset.name)
        chain.append(current)
    return chain


def _find_backend_class(type_name: str) -> type[MachineBackend] | None:
    found = find_subclass(type_name, cls=MachineBackend)
    return None if found is None or inspect.isabstract(found) else found


def _ensure_backend_class(backend: dict[str, Any]) -> None:
    """Make sure PyLabRobot can find the backend class by name, importing its package if needed."""
    type_name = backend.get("type")
    if not isinstance(type_name, str):
        raise UnknownAssetType(f"Machine backend without a 'type': {backend!r}")
    if _find_backend_class(type_name) is not None:
        return
    for package in _MACHINE_PACKAGES:
        # Some packages keep their simulators out of their namespace (pumps, fans).
        for module in (f"pylabrobot.{package}", f"pylabrobot.{package}.chatterbox"):
            try:
                importlib.import_module(module)
            except Exception:  # an optional hardware dependency missing, or no such module
                log.debug("Could not import %s", module, exc_info=True)
    if _find_backend_class(type_name) is None:
        raise UnknownAssetType(
            f"Unknown machine backend {type_name!r}: no concrete PyLabRobot backend of that name.",
            backend=type_name,
        )


def _deserialize_root(asset: Asset) -> Resource:
    """Deserialize a root asset with PyLabRobot's own deserializer for its class.

    Traps handled: deserializers mutate their input (``MachineBackend.deserialize`` pops
    ``"type"``), so they get a deep copy; ``LiquidHandler.deserialize`` drops the handler's name,
    so it is set back (allowed: a root has no parent); the asset's ``backend`` wins over the one
    inside ``definition`` (``Machine.serialize()`` includes it).
    """
    cls = import_type(class_name(asset))
    data = restore_orderings(copy.deepcopy(asset.definition))
    if issubclass(cls, Machine):
        backend = asset.backend if asset.backend is not None else data.get("backend")
        if not isinstance(backend, dict):
            raise InvalidRequest(f"Machine asset {asset.name!r} has no backend.", asset=asset.name)
        data["backend"] = copy.deepcopy(backend)
    try:
        obj = cls.deserialize(data)  # no allow_marshal: never run code that came over the wire
    except (ValueError, TypeError, KeyError, AssertionError) as exc:
        raise InvalidRequest(
            f"PyLabRobot cannot deserialize asset {asset.name!r} ({asset.fqn}): {exc!r}",
            asset=asset.name,
        ) from exc
    if not isinstance(obj, cls):
        raise InvalidRequest(
            f"Asset {asset.name!r} deserialized to {type(obj).__name__}, not {cls.__name__}.",
            asset=asset.name,
        )
    if getattr(obj, "name", None) != asset.name:  # a pump has none: it gets the asset's
        obj.name = asset.name
    return obj


def restore_orderings(definition: Any) -> Any:
    """Put every itemized resource's ``ordering`` back in the order of its ``children``.

    PyLabRobot maps an identifier such as ``"B1"`` to a child by the identifier's position in
    ``ordering``, which must follow ``children`` (column-major). Stores that do not keep JSON key
    order (PostgreSQL JSONB sorts keys) turn ``A1, B1, C1`` into ``A1, A10, A11``: wells resolve
    transposed. Rebuilding the order from ``children`` makes any such round trip safe.
    """
    if isinstance(definition, list):
        return [restore_orderings(item) for item in definition]
    if not isinstance(definition, dict):
        return definition
    fixed = {key: restore_orderings(value) for key, value in definition.items()}
    ordering, children = fixed.get("ordering"), fixed.get("children")
    if isinstance(ordering, dict) and isinstance(children, list):
        position = {
            child.get("name"): i for i, child in enumerate(children) if isinstance(child, dict)
        }
        fixed["ordering"] = dict(
            sorted(ordering.items(), key=lambda item: position.get(item[1], len(position)))
        )
    return fixed


def class_name(asset: Asset) -> str:
    """The class to build an asset with: its own class even when created from a factory."""
    return asset.type_mro[0] if asset.type_mro else asset.fqn


def _find_in_tree(root_obj: Resource, asset: Asset) -> Resource | None:
    try:
        found: Resource = root_obj.get_resource(asset.name)
    except ResourceNotFoundError:
        return None
    return found


def _attach(asset: Asset, parent: Resource) -> Resource:
    """An asset added after its root was defined: built from its own definition and placed in
    the resource its ``slot`` names inside its parent (a carrier site, say), or in the parent."""
    return _place(asset, _deserialize_root(asset), parent)


def _place(asset: Asset, obj: Resource, parent: Resource) -> Resource:
    """Put ``obj`` in the resource ``asset.slot`` of ``parent`` (or in ``parent``): a holder
    (a carrier site, a reader) places it itself; anything else at the location its definition
    records (a deck position)."""
    try:
        holder = parent.get_resource(asset.slot) if asset.slot else parent
        if isinstance(holder, ResourceHolder):
            if holder.resource is not None:
                raise ValueError(f"it already holds {holder.resource.name!r}")
            holder.assign_child_resource(obj)
        else:
            holder.assign_child_resource(obj, location=_location(asset.definition))
    except Exception as exc:
        raise InvalidRequest(
            f"Cannot place asset {asset.name!r} in {asset.slot or parent.name!r}: {exc}. "
            "Name a free slot that holds one resource (e.g. a carrier site) as its slot.",
            asset=asset.name,
        ) from exc
    return obj
