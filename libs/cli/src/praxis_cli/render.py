"""What the CLI shows people, built from the contract models: tables, the call tree, the deck.

Pure: each function takes replies and returns a rich renderable (or plain values); nothing here
talks to the API or prints.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from praxis_contracts.assets import Asset, Lease, Workcell, WorkcellLayout
from praxis_contracts.audit import AuditEvent
from praxis_contracts.common import RunStatus
from praxis_contracts.deadletters import DeadLetterInfo
from praxis_contracts.protocols import ProtocolSource
from praxis_contracts.runs import EdgeView, FunctionCall, LogLine, RunSummary, RunView
from praxis_contracts.state import SnapshotInfo
from praxis_contracts.tokens import TokenInfo

STATUS_STYLE = {
    RunStatus.COMPLETED: "green",
    RunStatus.FAILED: "red",
    RunStatus.CANCELLED: "yellow",
    RunStatus.REQUIRES_INTERVENTION: "bold red",
    RunStatus.RUNNING: "cyan",
    RunStatus.PAUSED: "magenta",
}
CALL_STYLE = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow"}


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """A time as people read it in a table: ``12:03:04`` today, else the date too."""
    if moment is None:
        return ""
    local = moment.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def ago(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago: ``45s``, ``12m``, ``3h``, ``2d``."""
    if moment is None:
        return ""
    seconds = max(((now or datetime.now(UTC)) - moment).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def status_text(status: RunStatus | str) -> Text:
    return Text(str(status), style=STATUS_STYLE.get(RunStatus(status), ""))


def runs_table(runs: Sequence[RunSummary], total: int | None = None) -> Table:
    title = None if total is None else f"{len(runs)} of {total} runs"
    table = Table("id", "protocol", "status", "workcell", "created", "updated", title=title)
    for run in runs:
        table.add_row(
            str(run.accession_id),
            f"{run.protocol_name} {run.protocol_version}",
            status_text(run.status),
            run.workcell_name or "",
            when(run.created_at),
            when(run.updated_at),
        )
    return table


def queue_table(runs: Sequence[RunSummary], now: datetime | None = None) -> Table:
    """Queued runs in the order they are placed (priority, then submission): why each waits
    and for how long."""
    table = Table("#", "id", "protocol", "priority", "workcell", "waiting for", "queued for")
    for place, run in enumerate(queue_order(runs), 1):
        table.add_row(
            str(place),
            str(run.accession_id),
            run.protocol_name,
            str(run.priority),
            run.workcell_name or "any",
            run.waiting_for or "its turn",
            ago(run.created_at, now),
        )
    return table


def queue_order(runs: Iterable[RunSummary]) -> list[RunSummary]:
    """The order the asset-manager places queued runs: higher priority first, then older."""
    return sorted(runs, key=lambda r: (-r.priority, r.created_at))


def run_panel(run: RunView) -> Table:
    """One run as key/value rows."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("id", run.accession_id),
        ("protocol", f"{run.protocol_name} {run.protocol_version} @ {run.source_commit[:12]}"),
        ("status", status_text(run.status)),
        ("workcell", run.workcell_name or run.workcell or ""),
        ("priority", run.priority),
        ("parameters", short(run.parameters)),
        ("assets", ", ".join(f"{b.requirement}={b.asset_name}" for b in run.bindings)),
        ("waiting for", run.waiting_for),
        ("edge", run.edge_instance),
        ("created", when(run.created_at)),
        ("started", when(run.started_at)),
        ("finished", when(run.finished_at)),
        ("result", short(run.result) if run.result is not None else None),
        ("error", f"{run.error.type}: {run.error.message}" if run.error else None),
        ("retry of", run.retry_of),
        ("retried by", run.retried_by),
    ]
    for key, value in rows:
        if value not in (None, ""):
            table.add_row(key, value if isinstance(value, Text) else str(value))
    return table


def short(value: Any, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


@dataclass
class CallTree:
    """A run's protocol-function calls as they are recorded (start, then end), nested."""

    calls: dict[UUID, FunctionCall] = field(default_factory=dict)

    def record(self, call: FunctionCall) -> None:
        known = self.calls.get(call.call_id)
        if known is None or known.status == "running":  # an end is never undone by a start
            self.calls[call.call_id] = call

    def render(self, title: str) -> Tree:
        tree = Tree(title)
        nodes: dict[UUID | None, Tree] = {None: tree}
        for call in sorted(self.calls.values(), key=lambda c: c.sequence):
            parent = nodes.get(call.parent_call_id, tree)
            label = Text(f"{call.function} ")
            label.append(call.status, style=CALL_STYLE.get(call.status, ""))
            if call.finished_at is not None:
                took = (call.finished_at - call.started_at).total_seconds()
                label.append(f" {took:.2f}s", style="dim")
            if call.error:
                label.append(f"  {call.error}", style="red")
            nodes[call.call_id] = parent.add(label)
        return tree


def event_line(ident: int | None, kind: str, data: Mapping[str, Any]) -> Text:
    """One event as a line: its id, type, the run or workcell it is about and what it says."""
    about = data.get("run_id") or data.get("workcell") or data.get("asset_id") or ""
    said = data.get("status") or data.get("outcome") or data.get("reason") or ""
    if "function" in data:
        said = f"{data['function']} {data.get('status', '')}"
    line = Text(f"{ident or '':>8} ", style="dim")
    line.append(f"{kind:<36}", style="bold")
    line.append(f" {str(about)[:36]:<36} ")
    line.append(short(said, 120))
    return line


def logs_table(lines: Sequence[LogLine]) -> Table:
    table = Table("seq", "time", "source", "level", "message")
    for line in lines:
        table.add_row(str(line.seq), when(line.at), line.source, line.level, Text(line.message))
    return table


def leases_table(leases: Sequence[Lease]) -> Table:
    table = Table("asset", "asset id", "run", "token", "acquired", "expires")
    for lease in leases:
        expires = when(lease.expires_at) if lease.expires_at else "held (intervention)"
        table.add_row(
            lease.asset_name,
            str(lease.asset_id),
            str(lease.run_id),
            str(lease.token),
            when(lease.acquired_at),
            expires,
        )
    return table


def edges_table(edges: Sequence[EdgeView], now: datetime | None = None) -> Table:
    table = Table("workcell", "instance", "version", "state", "last beat", "runs", "up")
    for edge in edges:
        state = (
            Text("live", style="green")
            if edge.live and edge.accepting
            else Text("stopping", style="yellow")
            if edge.live
            else Text("gone", style="red")
        )
        runs = ", ".join(f"{str(r.run_id)[:8]} {r.phase}" for r in edge.runs)
        table.add_row(
            edge.workcell,
            edge.instance,
            edge.version,
            state,
            f"{ago(edge.last_beat_at, now)} ago",
            runs,
            ago(edge.started_at, now),
        )
    return table


def dead_letters_table(letters: Sequence[DeadLetterInfo], total: int) -> Table:
    table = Table("seq", "type", "published on", "reason", "when", "bytes")
    table.title = f"{len(letters)} of {total} dead letters"
    for letter in letters:
        table.add_row(
            str(letter.seq),
            letter.message_type or "",
            letter.original_subject,
            Text(short(letter.reason, 160)),
            when(letter.stored_at),
            str(letter.size_bytes),
        )
    return table


def audit_table(events: Sequence[AuditEvent], next_before: int | None) -> Table:
    table = Table("id", "when", "type", "actor", "run", "workcell", "publisher", "body")
    more = f"; older: --before {next_before}" if next_before is not None else ""
    table.title = f"{len(events)} events, newest first{more}"
    for event in events:
        table.add_row(
            str(event.id),
            when(event.occurred_at),
            event.type,
            event.actor or "",
            str(event.run_id)[:8] if event.run_id else "",
            event.workcell or "",
            event.publisher or "",
            Text(short(event.payload, 80)),
        )
    return table


def workcells_table(workcells: Sequence[Workcell]) -> Table:
    table = Table("name", "id", "state", "description")
    for cell in workcells:
        state = (
            Text(f"drained: {cell.drain_reason or ''}", style="yellow") if cell.drained else "open"
        )
        table.add_row(cell.name, str(cell.accession_id), state, cell.description)
    return table


_WELL = re.compile(r"_well_([A-Z]+)(\d+)$")
_TIP = re.compile(r"_tipspot_([A-Z]+)(\d+)$")


def contents(asset: Asset) -> str:
    """What the recorded state says a piece of labware holds: liquid in its wells, tips in its
    rack; empty for anything else."""
    state = asset.state or {}
    volumes = [
        float(part.get("volume") or 0)
        for name, part in state.items()
        if _WELL.search(name) and isinstance(part, dict)
    ]
    spots = [part for name, part in state.items() if _TIP.search(name) and isinstance(part, dict)]
    if volumes:
        filled = [v for v in volumes if v > 0]
        text = f"{len(filled)}/{len(volumes)} wells filled, {sum(volumes):g} uL"
        if filled:
            text += f" ({min(filled):g}-{max(filled):g} uL)"
        return text
    if spots:
        return f"{sum(1 for s in spots if s.get('tip'))}/{len(spots)} tips"
    return ""


def deck(layout: WorkcellLayout) -> Tree:
    """The workcell as it physically is, by recorded state: machines, decks and what sits where
    (slot), each labware with its contents."""
    cell = layout.workcell
    title = Text(cell.name, style="bold")
    if cell.drained:
        title.append(f"  drained: {cell.drain_reason or ''}", style="yellow")
    tree = Tree(title)
    children: dict[UUID | None, list[Asset]] = {}
    for asset in layout.assets:
        children.setdefault(asset.parent_id, []).append(asset)

    def add(node: Tree, parent: UUID | None) -> None:
        for asset in sorted(children.get(parent, []), key=lambda a: (a.slot or "", a.name)):
            label = Text(asset.name, style="bold" if asset.kind != "resource" else "")
            label.append(f"  {asset.fqn.rsplit('.', 1)[-1]}", style="dim")
            if asset.slot:
                label.append(f"  @{asset.slot}", style="dim")
            if asset.status != "available":
                label.append(f"  [{asset.status}]", style="yellow")
            held = contents(asset)
            if held:
                label.append(f"  {held}", style="cyan")
            add(node.add(label), asset.accession_id)

    add(tree, None)
    return tree


def well_grid(asset: Asset) -> Table:
    """A plate's wells as a grid of volumes (uL), rows A.. by columns 1.."""
    volumes: dict[tuple[str, int], float] = {}
    for name, part in (asset.state or {}).items():
        found = _WELL.search(name)
        if found and isinstance(part, dict):
            volumes[(found[1], int(found[2]))] = float(part.get("volume") or 0)
    rows = sorted({r for r, _ in volumes}, key=lambda r: (len(r), r))
    columns = sorted({c for _, c in volumes})
    table = Table("", *(str(c) for c in columns), title=f"{asset.name} (uL)")
    for row in rows:
        cells = [f"{volumes[(row, c)]:g}" if (row, c) in volumes else "" for c in columns]
        table.add_row(row, *cells)
    return table


def snapshots_table(snapshots: Sequence[SnapshotInfo]) -> Table:
    table = Table("id", "kind", "run", "assets", "taken")
    for snap in snapshots:
        table.add_row(
            str(snap.snapshot_id),
            snap.kind,
            str(snap.run_id or ""),
            ", ".join(snap.asset_names),
            when(snap.taken_at),
        )
    return table


def sources_table(sources: Sequence[ProtocolSource]) -> Table:
    table = Table("id", "name", "status", "url", "ref", "commit")
    for source in sources:
        table.add_row(
            str(source.accession_id),
            source.name,
            source.status,
            source.url,
            source.ref,
            (source.commit or "")[:12],
        )
    return table


def tokens_table(tokens: Sequence[TokenInfo]) -> Table:
    table = Table("id", "name", "scopes", "created by", "expires", "revoked", "last used")
    for token in tokens:
        table.add_row(
            str(token.id),
            token.name,
            ",".join(token.scopes),
            token.created_by,
            when(token.expires_at),
            when(token.revoked_at),
            when(token.last_used_at),
        )
    return table


def kv_table(rows: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, Text) else str(value))
    return table
