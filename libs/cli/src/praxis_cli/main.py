"""``praxis``: the operator's command line over the HTTP API (``praxis_client``).

Tables for people, ``--json`` for scripts (one JSON document per command on one line;
``watch`` and ``submit --watch`` write one JSON object per event, one per line). Exit codes:

- 0: done (a watched run completed);
- 1: the API refused for another reason;
- 2: bad usage or input (the CLI's own check, or the API's 400/413/422);
- 3: not found (404);
- 4: conflict: the run, lease or workcell is not in a state that allows it (409);
- 5: not signed in, or the token lacks the scope (401/403);
- 6: the API did not answer, or answered unavailable (5xx);
- 7: the watched run ended, but not completed (failed or cancelled).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from uuid import UUID

import typer
from pydantic import BaseModel, TypeAdapter
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from praxis_cli import render
from praxis_cli.config import ConfigError, Profile, config_path, load, remember, resolve
from praxis_client import Client, StreamEvent, calls, correlation_of, status_of
from praxis_contracts.common import RunStatus
from praxis_contracts.errors import PraxisError
from praxis_contracts.runs import FunctionCall, RunView
from praxis_contracts.tokens import Scope

EXIT_OTHER, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 1, 2, 3, 4
EXIT_AUTH, EXIT_UNAVAILABLE, EXIT_RUN_NOT_COMPLETED = 5, 6, 7

app = typer.Typer(
    help="Praxis from the command line: submit and steer runs, see the queue, leases and "
    "workcells, manage sources and tokens.",
    epilog="Exit codes: 0 done; 1 refused; 2 bad usage or input; 3 not found; 4 conflict; "
    "5 not signed in or not allowed; 6 API unavailable; 7 the watched run did not complete.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
runs_app = typer.Typer(help="Runs: list, show, watch, steer.", no_args_is_help=True)
locks_app = typer.Typer(help="Asset leases.", no_args_is_help=True)
workcells_app = typer.Typer(help="Workcells: deck, snapshots, drain.", no_args_is_help=True)
sources_app = typer.Typer(help="Protocol sources (git repositories).", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (admin).", no_args_is_help=True)
dead_app = typer.Typer(help="Dead letters: messages no consumer could process (admin).")
events_app = typer.Typer(
    help="The audit trail (list) and events as they happen (follow).", no_args_is_help=True
)
app.add_typer(runs_app, name="runs")
app.add_typer(locks_app, name="locks")
app.add_typer(workcells_app, name="workcells")
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
app.add_typer(dead_app, name="dead-letters")
app.add_typer(events_app, name="events")


@dataclass
class State:
    chosen: Profile | ConfigError
    as_json: bool
    console: Console
    errors: Console

    @property
    def profile(self) -> Profile:
        """The profile the command talks to; a configuration that cannot say is a usage error
        here, when a command needs the API (``login`` and ``profiles`` do not)."""
        if isinstance(self.chosen, ConfigError):
            self.fail(str(self.chosen), EXIT_USAGE)
        return self.chosen

    def show(self, reply: Any, renderable: Any = None) -> None:
        """``reply`` as JSON (``--json``), else ``renderable`` (or the reply) for people."""
        if self.as_json:
            typer.echo(_json(reply))
        elif renderable is not None:
            self.console.print(renderable)

    def fail(self, message: str, code: int) -> NoReturn:
        self.errors.print(Text(f"error: {message}", style="red"))
        raise typer.Exit(code)


def _json(value: Any) -> str:
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return TypeAdapter(Any).dump_json(value).decode()


def exit_code(error: PraxisError) -> int:
    status = status_of(error)
    if status is None or status >= 500:
        return EXIT_UNAVAILABLE
    return {
        400: EXIT_USAGE,
        413: EXIT_USAGE,
        422: EXIT_USAGE,
        401: EXIT_AUTH,
        403: EXIT_AUTH,
        404: EXIT_NOT_FOUND,
        409: EXIT_CONFLICT,
    }.get(status, EXIT_OTHER)


@app.callback()
def _options(
    ctx: typer.Context,
    profile: Annotated[
        str | None, typer.Option(help="Profile to use (praxis login); $PRAXIS_PROFILE.")
    ] = None,
    url: Annotated[str | None, typer.Option(help="API URL; $PRAXIS_URL.")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token; $PRAXIS_TOKEN.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Output JSON for scripts.")] = False,
) -> None:
    try:
        chosen: Profile | ConfigError = resolve(profile, url, token)
    except ConfigError as exc:
        chosen = exc
    ctx.obj = State(chosen, as_json, Console(), Console(stderr=True))


def state(ctx: typer.Context) -> State:
    return ctx.find_root().obj  # type: ignore[no-any-return]


@contextmanager
def client(ctx: typer.Context, timeout: float = 60.0) -> Iterator[Client]:
    """The API of the chosen profile; an error it answers ends the command with its code."""
    st = state(ctx)
    try:
        with Client(st.profile.url, st.profile.token, timeout=timeout) as praxis:
            yield praxis
    except PraxisError as exc:
        where = f" (correlation id {correlation_of(exc)})" if correlation_of(exc) else ""
        st.fail(f"{exc.code}: {exc.message}{where}", exit_code(exc))


Reason = Annotated[str, typer.Option(help="Why (kept in the audit trail).")]
AsJson = Annotated[bool, typer.Option("--json", help="Output JSON for scripts.")]


# -- profiles and health --------------------------------------------------------------------
@app.command()
def login(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="The API's URL, e.g. http://praxis.lab:8000")],
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Bearer token.")],
    profile: Annotated[str, typer.Option("--name", help="Profile name.")] = "default",
) -> None:
    """Check the token against the API, then store URL and token as a profile (the current)."""
    st = state(ctx)
    with Client(url, token, timeout=15.0) as praxis:
        try:
            praxis.list_runs(limit=1)
        except PraxisError as exc:
            st.fail(f"{url} refused the token: {exc.code}: {exc.message}", exit_code(exc))
    try:
        path = remember(profile, url, token)
    except ConfigError as exc:
        st.fail(str(exc), EXIT_USAGE)
    st.show({"profile": profile, "url": url, "config": str(path)}, f"signed in: {profile} -> {url}")


@app.command()
def profiles(ctx: typer.Context) -> None:
    """The stored profiles (tokens masked) and which is current."""
    st = state(ctx)
    try:
        data = load()
    except ConfigError as exc:
        st.fail(str(exc), EXIT_USAGE)
    rows = [
        {
            "name": name,
            "url": p.get("url"),
            "token": _mask(p.get("token")),
            "current": name == data.get("current"),
        }
        for name, p in sorted(data["profiles"].items())
    ]
    table = Table("", "name", "url", "token", title=str(config_path()))
    for row in rows:
        table.add_row("*" if row["current"] else "", row["name"], row["url"], row["token"])
    st.show(rows, table)


def _mask(token: str | None) -> str:
    return "" if not token else f"{token[:4]}…{token[-2:]}" if len(token) > 8 else "…"


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the API is reachable and ready, its version, the clock skew, and the token."""
    st = state(ctx)
    checks: dict[str, Any] = {"profile": st.profile.name, "url": st.profile.url}
    code = 0
    with Client(st.profile.url, st.profile.token, timeout=15.0) as praxis:
        sent = datetime.now(UTC)
        probe = praxis.probe()
        checks["reachable"] = probe.reachable
        checks["ready"] = probe.ready
        checks["server_version"] = probe.version
        checks["round_trip_ms"] = round(probe.round_trip_ms or 0, 1)
        skew = probe.clock_skew_seconds(sent)
        checks["clock_skew_s"] = None if skew is None else round(skew, 1)
        if not probe.reachable or not probe.ready:
            checks["problem"] = probe.problem
            code = EXIT_UNAVAILABLE
        else:
            try:
                praxis.list_runs(limit=1)
                checks["token"] = "accepted"
            except PraxisError as exc:
                checks["token"] = f"{exc.code}: {exc.message}"
                code = exit_code(exc)
    if skew is not None and abs(skew) > 2:
        checks["clock"] = "skewed: leases and deadlines are judged by the server's clock"
    st.show(checks, render.kv_table(checks))
    raise typer.Exit(code)


# -- runs ---------------------------------------------------------------------------------------
def _value(text: str) -> Any:
    """A parameter's value: JSON if it parses (numbers, lists, true), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(st: State, items: Sequence[str], what: str, parse: bool) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            st.fail(f"{what} {item!r} is not name=value", EXIT_USAGE)
        found[key] = _value(value) if parse else value
    return found


@app.command()
def submit(
    ctx: typer.Context,
    protocol: Annotated[str, typer.Argument(help="Protocol name.")],
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="name=value (value as JSON if it parses)."),
    ] = None,
    asset: Annotated[
        list[str] | None,
        typer.Option("--asset", "-a", help="requirement=asset name: pin an asset."),
    ] = None,
    workcell: Annotated[str | None, typer.Option(help="Workcell name or id.")] = None,
    version: Annotated[str | None, typer.Option(help="Protocol version.")] = None,
    priority: Annotated[int | None, typer.Option(help="-100..100; higher goes first.")] = None,
    immediate: Annotated[
        bool, typer.Option(help="Placed now or refused (exit 4), never queued.")
    ] = False,
    rollback: Annotated[
        bool, typer.Option(help="On failure, roll the assets' state back to the start.")
    ] = False,
    not_before: Annotated[
        datetime | None, typer.Option(help="Start no earlier (ISO, with zone).")
    ] = None,
    deadline: Annotated[datetime | None, typer.Option(help="Fail if not started by.")] = None,
    watch: Annotated[
        bool, typer.Option(help="Follow it live until it ends (exit 7 if not completed).")
    ] = False,
) -> None:
    """Submit a run."""
    st = state(ctx)
    parameters = _pairs(st, param or [], "parameter", parse=True)
    pins = _pairs(st, asset or [], "asset", parse=False)
    with client(ctx) as praxis:
        run = praxis.submit_run(
            protocol,
            version=version,
            parameters=parameters,
            workcell=workcell,
            assets=pins or None,
            priority=priority,
            mode="immediate" if immediate else None,
            on_failure="rollback" if rollback else None,
            not_before=not_before,
            deadline=deadline,
        )
        if not watch:
            st.show(run, f"{run.accession_id} {run.status}")
            return
        if not st.as_json:
            st.console.print(f"submitted {run.accession_id}")
        _watch(st, praxis, run.accession_id)


@runs_app.command("list")
def runs_list(
    ctx: typer.Context,
    status: Annotated[
        list[RunStatus] | None, typer.Option("--status", "-s", help="Only these statuses.")
    ] = None,
    protocol: Annotated[str | None, typer.Option(help="Only this protocol.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many.")] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
    every: Annotated[bool, typer.Option("--all", help="Every run, page after page.")] = False,
) -> None:
    """Runs, newest first."""
    st = state(ctx)
    with client(ctx) as praxis:
        call = calls.list_runs(status=status, protocol_name=protocol, limit=limit, offset=offset)
        if every:
            items = list(praxis.paginate(call))
            st.show(items, render.runs_table(items, len(items)))
        else:
            page = praxis.send(call)
            st.show(page, render.runs_table(page.items, page.total))


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: UUID) -> None:
    """One run: parameters, assets, result, error."""
    st = state(ctx)
    with client(ctx) as praxis:
        run = praxis.get_run(run_id)
    st.show(run, render.run_panel(run))


@runs_app.command("watch")
def runs_watch(ctx: typer.Context, run_id: UUID) -> None:
    """Follow a run live (its call tree) until it ends; exit 7 if it did not complete."""
    st = state(ctx)
    with client(ctx) as praxis:
        _watch(st, praxis, run_id)


def _watch(st: State, praxis: Client, run_id: UUID) -> NoReturn:
    tree = render.CallTree()
    status: RunStatus | None = None

    def view() -> Group:
        line = Text(f"run {run_id}: ")
        line.append_text(render.status_text(status) if status else Text("…"))
        return Group(line, tree.render("calls"))

    def take(event: StreamEvent) -> None:
        nonlocal status
        if event.type == "scheduler.run.status_changed":
            status = RunStatus(event.data["status"])
        elif event.type == "orchestrator.call.recorded":
            tree.record(FunctionCall.model_validate(event.data))

    if st.as_json:
        for event in praxis.events(run_id):
            take(event)
            typer.echo(_json({"id": event.id, "type": event.type, "data": event.data}))
    elif st.console.is_terminal:  # redrawn in place at each event
        with Live(view(), console=st.console, auto_refresh=False) as live:
            for event in praxis.events(run_id):
                take(event)
                live.update(view(), refresh=True)
    else:  # a pipe or a file: the outcome once
        for event in praxis.events(run_id):
            take(event)
        st.console.print(view())
    if not st.as_json:
        run = praxis.get_run(run_id)
        if run.error is not None:
            st.console.print(Text(f"{run.error.type}: {run.error.message}", style="red"))
        elif run.result is not None:
            st.console.print(f"result: {render.short(run.result, 2000)}")
    raise typer.Exit(0 if status == RunStatus.COMPLETED else EXIT_RUN_NOT_COMPLETED)


def _act(ctx: typer.Context, run_id: UUID, action: str, reason: str, **more: Any) -> RunView:
    st = state(ctx)
    with client(ctx) as praxis:
        run = praxis.act_on_run(run_id, action, reason=reason, **more)  # type: ignore[arg-type]
    st.show(run, Text.assemble(f"{run.accession_id} ", render.status_text(run.status)))
    return run


@runs_app.command("pause")
def runs_pause(ctx: typer.Context, run_id: UUID, reason: Reason = "") -> None:
    """Pause at the protocol's next function call."""
    _act(ctx, run_id, "pause", reason)


@runs_app.command("resume")
def runs_resume(ctx: typer.Context, run_id: UUID, reason: Reason = "") -> None:
    """Resume a paused run."""
    _act(ctx, run_id, "resume", reason)


@runs_app.command("cancel")
def runs_cancel(ctx: typer.Context, run_id: UUID, reason: Reason = "") -> None:
    """Cancel at the protocol's next function call (at once if no edge has it)."""
    _act(ctx, run_id, "cancel", reason)


@runs_app.command("retry")
def runs_retry(ctx: typer.Context, run_id: UUID, reason: Reason = "") -> None:
    """A new run of the same definition, commit, parameters and pins; prints the new run."""
    _act(ctx, run_id, "retry", reason)


@runs_app.command("resolve")
def runs_resolve(
    ctx: typer.Context,
    run_id: UUID,
    outcome: Annotated[str, typer.Option(help="failed or cancelled.")],
    reason: Reason = "",
) -> None:
    """End a run that requires intervention, as failed or cancelled; releases its leases."""
    if outcome not in ("failed", "cancelled"):
        state(ctx).fail("--outcome must be failed or cancelled", EXIT_USAGE)
    _act(ctx, run_id, "resolve", reason, outcome=outcome)


@runs_app.command("calls")
def runs_calls(ctx: typer.Context, run_id: UUID) -> None:
    """The run's protocol-function calls as a tree."""
    st = state(ctx)
    tree = render.CallTree()
    with client(ctx) as praxis:
        items = list(praxis.paginate(calls.list_calls(run_id, limit=500)))
    for call in items:
        tree.record(call)
    st.show(items, tree.render(f"run {run_id}"))


@runs_app.command("logs")
def runs_logs(
    ctx: typer.Context,
    run_id: UUID,
    source: Annotated[str | None, typer.Option(help="protocol or instrument.")] = None,
    level: Annotated[str | None, typer.Option(help="This level and above.")] = None,
) -> None:
    """The run's output lines."""
    st = state(ctx)
    with client(ctx) as praxis:
        call = calls.list_logs(run_id, source=source, level=level, limit=1000)  # type: ignore[arg-type]
        items = list(praxis.paginate(call))
    st.show(items, render.logs_table(items))


@app.command()
def queue(
    ctx: typer.Context,
    workcell: Annotated[str | None, typer.Option(help="Only runs for this workcell.")] = None,
) -> None:
    """Queued runs per workcell, in the order they will be placed: why each waits, since when."""
    st = state(ctx)
    with client(ctx) as praxis:
        queued = list(praxis.paginate(calls.list_runs(status=[RunStatus.QUEUED], limit=1000)))
    if workcell is not None:
        queued = [r for r in queued if workcell in (r.workcell, r.workcell_name)]
    groups: dict[str, list[Any]] = {}
    for run in render.queue_order(queued):
        groups.setdefault(run.workcell or run.workcell_name or "any workcell", []).append(run)
    if st.as_json:
        st.show({name: runs for name, runs in groups.items()})
        return
    if not groups:
        st.console.print("nothing queued")
    for name, runs in groups.items():
        table = render.queue_table(runs)
        table.title = f"{name}: {len(runs)} queued"
        st.console.print(table)


# -- leases -------------------------------------------------------------------------------------
@locks_app.command("list")
def locks_list(
    ctx: typer.Context, run: Annotated[UUID | None, typer.Option(help="One run's.")] = None
) -> None:
    """Live leases: asset, holder run, fencing token, expiry."""
    st = state(ctx)
    with client(ctx) as praxis:
        leases = praxis.list_locks(run_id=run)
    st.show(leases, render.leases_table(leases.items))


@locks_app.command("release")
def locks_release(
    ctx: typer.Context,
    asset_id: UUID,
    reason: Annotated[str, typer.Option(help="Why (required; audited).")],
) -> None:
    """Release an asset's lease whoever holds it (the holder is fenced)."""
    st = state(ctx)
    with client(ctx) as praxis:
        lease = praxis.force_release_lock(asset_id, reason=reason)
    st.show(lease, f"released {lease.asset_name} (held by run {lease.run_id})")


# -- edges --------------------------------------------------------------------------------------
@app.command()
def edges(
    ctx: typer.Context,
    workcell: Annotated[str | None, typer.Option(help="One workcell's.")] = None,
) -> None:
    """The orchestrator processes: live or gone, taking runs or stopping, the runs they hold."""
    st = state(ctx)
    with client(ctx) as praxis:
        found = praxis.list_edges(workcell=workcell)
    st.show(found, render.edges_table(found.items))


# -- events ---------------------------------------------------------------------------------------
@events_app.command("follow")
def events_follow(
    ctx: typer.Context,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only this event type (context.aggregate.action)."),
    ] = None,
    after: Annotated[int | None, typer.Option(help="Resume after this event id.")] = None,
    count: Annotated[int | None, typer.Option(min=1, help="Stop after this many.")] = None,
) -> None:
    """Every event (or those of --type) from now on, until Ctrl-C (or --count)."""
    st = state(ctx)
    seen = 0
    with client(ctx) as praxis:
        for event in praxis.live(type_ or (), last_event_id=after):
            if st.as_json:
                typer.echo(_json({"id": event.id, "type": event.type, "data": event.data}))
            else:
                st.console.print(render.event_line(event.id, event.type, event.data))
            seen += 1
            if count is not None and seen >= count:
                return


@events_app.command("list")
def events_list(
    ctx: typer.Context,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", "-t", help="Only this event type (repeatable: any of them)."),
    ] = None,
    run: Annotated[UUID | None, typer.Option(help="One run's.")] = None,
    workcell: Annotated[str | None, typer.Option(help="One workcell's (its name).")] = None,
    asset: Annotated[UUID | None, typer.Option(help="Naming this asset.")] = None,
    actor: Annotated[str | None, typer.Option(help="Set going by this principal.")] = None,
    correlation: Annotated[str | None, typer.Option(help="With this correlation id.")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Stored at or after (UTC if naive).")
    ] = None,
    until: Annotated[datetime | None, typer.Option(help="Stored before (UTC if naive).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    before: Annotated[int | None, typer.Option(min=1, help="Older than this id (paging).")] = None,
) -> None:
    """The audit trail: stored events with who set them going, newest first."""
    st = state(ctx)
    with client(ctx) as praxis:
        page = praxis.list_events(
            types=type_ or (),
            run_id=run,
            workcell=workcell,
            asset_id=asset,
            actor=actor,
            correlation_id=correlation,
            since=_utc(since),
            until=_utc(until),
            limit=limit,
            before=before,
        )
    st.show(page, render.audit_table(page.items, page.next_before))


def _utc(moment: datetime | None) -> datetime | None:
    """A moment typed without a zone is UTC (the trail's times are)."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


# -- dead letters -------------------------------------------------------------------------------
@dead_app.command("list")
def dead_letters_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 50,
    before: Annotated[int | None, typer.Option(min=1, help="Older than this (paging).")] = None,
) -> None:
    """Dead letters, newest first: where each was published and why it was not processed."""
    st = state(ctx)
    with client(ctx) as praxis:
        page = praxis.list_dead_letters(limit=limit, before=before)
    st.show(page, render.dead_letters_table(page.items, page.total))


@dead_app.command("show")
def dead_letters_show(ctx: typer.Context, seq: int) -> None:
    """One dead letter with its headers and body."""
    st = state(ctx)
    with client(ctx) as praxis:
        letter = praxis.get_dead_letter(seq)
    rows = letter.model_dump(exclude={"payload", "headers"}) | {
        "headers": json.dumps(letter.headers, indent=1),
        "payload": json.dumps(letter.payload, indent=1),
    }
    st.show(letter, render.kv_table(rows))


@dead_app.command("replay")
def dead_letters_replay(
    ctx: typer.Context,
    seq: int,
    reason: Annotated[str, typer.Option(help="Why (kept in the audit trail).")] = "",
) -> None:
    """Hand a dead letter to its consumer again, once its cause is fixed (audited)."""
    st = state(ctx)
    with client(ctx) as praxis:
        done = praxis.replay_dead_letter(seq, reason=reason)
    st.show(done, f"dead letter {seq} handled by {done.identity}/{done.consumer}")


# -- workcells ----------------------------------------------------------------------------------
@workcells_app.command("list")
def workcells_list(ctx: typer.Context) -> None:
    """Workcells and whether they are drained."""
    st = state(ctx)
    with client(ctx) as praxis:
        cells = list(praxis.paginate(calls.list_workcells(limit=500)))
    st.show(cells, render.workcells_table(cells))


@workcells_app.command("show")
def workcells_show(
    ctx: typer.Context,
    workcell: str,
    wells: Annotated[
        str | None, typer.Option(help="Also a plate's wells as a grid of volumes.")
    ] = None,
) -> None:
    """The deck as recorded: what sits where, liquid in the wells, tips in the racks."""
    st = state(ctx)
    with client(ctx) as praxis:
        layout = praxis.get_workcell(workcell)
    shown: list[Any] = [render.deck(layout)]
    if wells is not None:
        plate = next((a for a in layout.assets if a.name == wells), None)
        if plate is None:
            st.fail(f"{workcell} has no asset {wells!r}", EXIT_NOT_FOUND)
        shown.append(render.well_grid(plate))
    st.show(layout, Group(*shown))


@workcells_app.command("snapshots")
def workcells_snapshots(
    ctx: typer.Context, workcell: str, limit: Annotated[int, typer.Option(min=1)] = 20
) -> None:
    """State snapshots, newest first."""
    st = state(ctx)
    with client(ctx) as praxis:
        page = praxis.list_snapshots(workcell, limit=limit)
    st.show(page, render.snapshots_table(page.items))


@workcells_app.command("restore")
def workcells_restore(
    ctx: typer.Context,
    workcell: str,
    snapshot_id: UUID,
    reason: Annotated[str, typer.Option(help="Why (required; audited).")],
    asset: Annotated[list[str] | None, typer.Option(help="Only these assets.")] = None,
) -> None:
    """Make a snapshot's states the recorded state of its assets and load them."""
    st = state(ctx)
    with client(ctx) as praxis:
        snap = praxis.restore_snapshot(workcell, snapshot_id, reason=reason, assets=asset)
    st.show(snap, f"restored: snapshot {snap.snapshot_id} ({', '.join(snap.asset_names)})")


@workcells_app.command("drain")
def workcells_drain(ctx: typer.Context, workcell: str, reason: Reason = "") -> None:
    """No new run is placed on the workcell; runs on it go on."""
    st = state(ctx)
    with client(ctx) as praxis:
        cell = praxis.drain_workcell(workcell, reason=reason or None)
    st.show(cell, f"{cell.name} drained")


@workcells_app.command("undrain")
def workcells_undrain(ctx: typer.Context, workcell: str, reason: Reason = "") -> None:
    """A drained workcell takes runs again."""
    st = state(ctx)
    with client(ctx) as praxis:
        cell = praxis.undrain_workcell(workcell, reason=reason or None)
    st.show(cell, f"{cell.name} open")


# -- sources ------------------------------------------------------------------------------------
@sources_app.command("list")
def sources_list(ctx: typer.Context) -> None:
    st = state(ctx)
    with client(ctx) as praxis:
        sources = list(praxis.paginate(calls.list_sources(limit=500)))
    st.show(sources, render.sources_table(sources))


@sources_app.command("add")
def sources_add(
    ctx: typer.Context,
    name: str,
    url: str,
    ref: Annotated[str | None, typer.Option(help="Branch or tag to follow.")] = None,
    commit: Annotated[str | None, typer.Option(help="Pin this commit.")] = None,
    credentials_ref: Annotated[str | None, typer.Option(help="Secret reference.")] = None,
) -> None:
    """Register a git repository and discover its protocols."""
    st = state(ctx)
    with client(ctx, timeout=300.0) as praxis:
        source = praxis.register_source(
            name, url, kind="git", ref=ref, commit=commit, credentials_ref=credentials_ref
        )
    st.show(source, render.sources_table([source]))


@sources_app.command("sync")
def sources_sync(
    ctx: typer.Context,
    source_id: UUID,
    commit: Annotated[str | None, typer.Option(help="Pin this commit.")] = None,
) -> None:
    """Fetch again and rediscover."""
    st = state(ctx)
    with client(ctx, timeout=300.0) as praxis:
        source = praxis.sync_source(source_id, commit=commit)
    st.show(source, render.sources_table([source]))


@sources_app.command("delete")
def sources_delete(ctx: typer.Context, source_id: UUID) -> None:
    """Forget a source and its definitions (past runs keep their records)."""
    st = state(ctx)
    with client(ctx) as praxis:
        praxis.delete_source(source_id)
    st.show({"deleted": str(source_id)}, f"deleted {source_id}")


# -- tokens -------------------------------------------------------------------------------------
@tokens_app.command("list")
def tokens_list(ctx: typer.Context) -> None:
    st = state(ctx)
    with client(ctx) as praxis:
        tokens = praxis.list_tokens()
    st.show(tokens, render.tokens_table(tokens.items))


@tokens_app.command("create")
def tokens_create(
    ctx: typer.Context,
    name: str,
    scope: Annotated[list[Scope], typer.Option(help="read, operate and/or admin.")],
    expires_in: Annotated[int | None, typer.Option(help="Seconds until it expires.")] = None,
) -> None:
    """A new token; its secret is shown this once."""
    st = state(ctx)
    with client(ctx) as praxis:
        created = praxis.create_token(name, scope, expires_in_seconds=expires_in)
    st.show(created, render.kv_table({"id": created.id, "token": created.token}))


@tokens_app.command("revoke")
def tokens_revoke(ctx: typer.Context, token_id: UUID) -> None:
    st = state(ctx)
    with client(ctx) as praxis:
        revoked = praxis.revoke_token(token_id)
    st.show(revoked, f"revoked {revoked.name}")


def main() -> None:
    app(prog_name="praxis")


if __name__ == "__main__":
    main()
