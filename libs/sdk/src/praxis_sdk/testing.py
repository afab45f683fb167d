"""Test a protocol as the edge runs it, with no server: a simulated workcell in your test.

``SimulatedWorkcell`` builds real PyLabRobot objects (their chatterbox backends) from an
inventory: the asset drafts the HTTP API takes (``POST /workcells``), as a list or a JSON file.
``run`` executes a protocol function on it the way an orchestrator does: its assets bound (by
the names you give, else the asset named like the requirement, else the first of its type),
its parameters validated, ``PraxisState`` and ``RunContext`` injected, the workcell guard on
(touching an asset the run did not get raises ``AssetNotLeased``), tip and volume tracking on
(aspirating from an empty well raises), every nested protocol-function call logged with its
arguments and result, pause/cancel checkpoints in place. It returns what the run view would
say: status, result or error, final state, the calls and the bound assets' states.

```python
from praxis_sdk.testing import SimulatedWorkcell

async def test_transfer_moves_liquid() -> None:
    async with SimulatedWorkcell.from_file("inventory.json") as workcell:
        run = await workcell.run(transfer, parameters={"volume": 30, "wells": ["C3"]})
    assert run.status == "completed", run.error
    assert run.volume("source_plate", "C3") == 170
```

The pytest plugin (``-p praxis_sdk.testing``, or ``pytest_plugins = ["praxis_sdk.testing"]`` in
the root conftest) adds the ``simulated_workcell`` fixture: a factory taking drafts or a file
path. What it does not do: process isolation, leases and scheduling (the services' business).
Unlike the edge, the protocol runs in the test's process: a PyLabRobot switch it sets acts on
its own run (the harness turns tracking back on after each run, so never on the next).
"""

from __future__ import annotations

import asyncio
import json
import typing
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from praxis_contracts.assets import Asset, AssetDraft, WorkcellLayout
from praxis_contracts.errors import InvalidRequest
from praxis_plr._state import state_to_json
from praxis_plr.guard import current_view
from praxis_plr.layout import layout_from_drafts
from praxis_plr.live import LiveWorkcell, enable_tracking, own_state
from praxis_plr.remote import run_assets
from praxis_sdk.context import CallRecord, RunCancelled, RunContext, RunControl, current_run
from praxis_sdk.decorators import call_arguments, spec_of, validate_parameters
from praxis_sdk.state import PraxisState

Status = Literal["completed", "failed", "cancelled"]


@dataclass
class TestRun:
    """What a simulated run did (the run view's fields, and the objects themselves)."""

    __test__ = False  # not a pytest test class

    status: Status
    result: Any = None
    error: BaseException | None = None
    state: dict[str, Any] = field(default_factory=dict)
    bindings: dict[str, str] = field(default_factory=dict)
    """Requirement -> the asset's name."""
    calls: list[CallRecord] = field(default_factory=list)
    """Every protocol-function call's final record (started ones that never ended as running)."""
    asset_states: dict[str, Any] = field(default_factory=dict)
    """Each bound asset's PyLabRobot state after the run, as the edge reports it."""

    def volume(self, asset: str, well: str) -> float:
        """The liquid volume of ``well`` (e.g. ``"C3"``) of the bound plate ``asset``."""
        state = self.asset_states[asset]
        entry = state.get(f"{asset}_well_{well}") or state[well]
        return float(entry["volume"])


class _Calls:
    def __init__(self) -> None:
        self.records: dict[uuid.UUID, CallRecord] = {}

    async def record(self, call: CallRecord) -> None:
        self.records[call.call_id] = call


class SimulatedWorkcell:
    """A workcell of live PyLabRobot objects for tests; ``async with`` sets it up and stops it."""

    def __init__(self, layout: WorkcellLayout) -> None:
        self.layout = layout
        self.live: LiveWorkcell | None = None

    @classmethod
    def from_drafts(cls, drafts: Iterable[AssetDraft], name: str = "test") -> SimulatedWorkcell:
        """From asset drafts (as ``POST /workcells`` takes them: parents by name)."""
        return cls(layout_from_drafts(list(drafts), name))

    @classmethod
    def from_file(cls, path: str | Path) -> SimulatedWorkcell:
        """An inventory file: ``{"name": ..., "assets": [asset drafts]}`` or just the list."""
        data = json.loads(Path(path).read_text())
        name = data.get("name", Path(path).stem) if isinstance(data, dict) else Path(path).stem
        drafts = data["assets"] if isinstance(data, dict) else data
        return cls.from_drafts([AssetDraft.model_validate(d) for d in drafts], name)

    async def __aenter__(self) -> SimulatedWorkcell:
        enable_tracking()
        self.live = await LiveWorkcell.build(self.layout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.live is not None:
            await self.live.stop()
            self.live = None

    def get(self, name: str) -> Any:
        """A live object by asset name (to arrange a test or look after it)."""
        assert self.live is not None, "use the workcell inside 'async with'"
        return self.live.get(name)

    async def run(
        self,
        fn: Callable[..., Any],
        *,
        parameters: dict[str, Any] | None = None,
        assets: dict[str, str] | None = None,
        initial_state: dict[str, Any] | None = None,
        control: RunControl | None = None,
    ) -> TestRun:
        """Run the protocol function ``fn`` as an edge would; its outcome, never an exception
        from the protocol (that is ``error``)."""
        live = self.live
        assert live is not None, "use the workcell inside 'async with'"
        spec = spec_of(fn)
        if spec is None:
            raise InvalidRequest(f"{getattr(fn, '__name__', fn)!r} is not a protocol function")
        kwargs = validate_parameters(fn, parameters or {})
        bindings = bind(spec.assets, self.layout.assets, assets or {})
        run_id = uuid.uuid4()
        calls = _Calls()
        ctx = RunContext(
            run_id=run_id,
            state=PraxisState(initial_state or {}),
            sink=calls,
            control=control or RunControl(),
        )
        for requirement, name in bindings.items():
            kwargs[requirement] = live.get(name)
        kwargs = call_arguments(fn, kwargs, ctx)
        view = live.view(run_id, run_assets(self.layout, bindings.values()))
        run = TestRun(status="completed", bindings=bindings)
        enable_tracking()
        token_view, token_run = current_view.set(view), current_run.set(ctx)
        try:
            run.result = await fn(**kwargs)
        except (RunCancelled, asyncio.CancelledError):
            run.status = "cancelled"
        except Exception as exc:
            run.status, run.error = "failed", exc
        finally:
            current_run.reset(token_run)
            current_view.reset(token_view)
            # PyLabRobot's tracking switches are process-wide: whatever the protocol set, the
            # next run finds them on, as on the edge (where its copies' switches never reach
            # the instruments' objects).
            enable_tracking()
        run.state = ctx.state.to_dict()
        run.calls = sorted(calls.records.values(), key=lambda c: c.sequence)
        run.asset_states = {
            name: state_to_json(own_state(live.get(name))) for name in bindings.values()
        }
        return run


def bind(requirements: Iterable[Any], assets: list[Asset], pins: dict[str, str]) -> dict[str, str]:
    """Requirement -> asset name: the pin, else the asset named like the requirement, else the
    first of its type by name; distinct assets (``InvalidRequest`` naming what is missing)."""
    used: set[str] = set()
    chosen: dict[str, str] = {}
    by_name = {a.name: a for a in assets}
    for req in requirements:
        pin = pins.get(req.name)
        of_type = sorted(
            (a for a in assets if req.type_fqn in a.type_mro and a.name not in used),
            key=lambda a: (a.name != req.name, a.name),
        )
        if pin is not None:
            asset = by_name.get(pin)
            if asset is None or req.type_fqn not in asset.type_mro:
                raise InvalidRequest(f"{req.name}: {pin!r} is no {req.type_fqn} of the workcell")
        elif of_type:
            asset = of_type[0]
        elif req.optional:
            continue
        else:
            raise InvalidRequest(f"{req.name}: the workcell has no free {req.type_fqn}")
        used.add(asset.name)
        chosen[req.name] = asset.name
    return chosen


# -- the pytest plugin ---------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pytest is not a dependency of protocols; the plugin needs it
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    async def simulated_workcell() -> AsyncIterator[
        Callable[[Iterable[AssetDraft] | str | Path], typing.Awaitable[SimulatedWorkcell]]
    ]:
        """A factory: ``await simulated_workcell(drafts_or_inventory_file)`` gives a set-up
        ``SimulatedWorkcell``, stopped at the end of the test."""
        opened: list[SimulatedWorkcell] = []

        async def make(source: Iterable[AssetDraft] | str | Path) -> SimulatedWorkcell:
            if isinstance(source, str | Path):
                workcell = SimulatedWorkcell.from_file(source)
            else:
                workcell = SimulatedWorkcell.from_drafts(source)
            opened.append(await workcell.__aenter__())
            return workcell

        yield make
        for workcell in reversed(opened):
            await workcell.__aexit__(None, None, None)


__all__ = ["SimulatedWorkcell", "TestRun", "bind", "layout_from_drafts"]
