// The Praxis dashboard: one module, no build step, no dependency. Everything it shows comes from
// the HTTP API (/api/v1) with the bearer token the operator signs in with (kept for this tab
// only, in sessionStorage). Live views follow server-sent events, read with fetch so that the
// token goes in the Authorization header; a broken stream is opened again after its last event
// (Last-Event-ID). Text from the API is only ever set as text, never parsed as HTML.

const TOKEN_KEY = "praxis.token";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const ACTIONS = {
  pause: ["running", "resuming"],
  resume: ["paused"],
  cancel: ["queued", "pending", "preparing", "running", "pausing", "paused", "resuming"],
  retry: ["completed", "failed", "cancelled"],
};

let view = null; // the AbortController of what is on screen

// -- small helpers -------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "testid") el.dataset.testid = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function statusBadge(status, testid) {
  return h("span", { class: `status status-${status}`, testid }, status);
}

function when(text) {
  return text ? new Date(text).toLocaleString() : "";
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, body) {
    super(`${body.code || status}: ${body.message || "request failed"}`);
    this.status = status;
    this.code = body.code;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, { method = "GET", body, signal, signingIn = false } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers,
    signal,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    if (response.status === 401 && !signingIn) signOut(); // revoked or expired meanwhile
    throw new ApiError(response.status, data);
  }
  return data;
}

// Server-sent events over fetch: onEvent({id, type, data}) for each; returns after the event
// `last(event)` says is the last (a run's terminal status), or when `signal` aborts. A broken or
// closed connection (a gateway restarting) is opened again after the last event seen, with a
// growing pause (0.2 s up to 5 s).
async function follow(path, onEvent, signal, last = () => false) {
  let lastId = null;
  let failures = 0;
  while (!signal.aborted) {
    try {
      const headers = { Authorization: `Bearer ${token()}`, Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = String(lastId);
      const response = await fetch(`/api/v1${path}`, { headers, signal });
      if (!response.ok) {
        throw new ApiError(response.status, await response.json().catch(() => ({})));
      }
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let event = { id: null, type: "message", data: [] };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) throw new Error("the stream closed"); // not after its last event: again
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, end).replace(/\r$/, "");
          buffer = buffer.slice(end + 1);
          if (line === "") {
            if (event.data.length) {
              failures = 0;
              if (event.id !== null) lastId = event.id;
              const parsed = { id: event.id, type: event.type, data: JSON.parse(event.data.join("\n")) };
              await onEvent(parsed);
              if (last(parsed)) return;
            }
            event = { id: null, type: "message", data: [] };
          } else if (!line.startsWith(":")) {
            const at = line.indexOf(":");
            const field = at < 0 ? line : line.slice(0, at);
            const text = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
            if (field === "id") event.id = Number(text);
            else if (field === "event") event.type = text;
            else if (field === "data") event.data.push(text);
          }
        }
      }
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error;
      failures += 1;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 200 * 2 ** failures)));
    }
  }
}

// Calls `load` now and again after each batch of events of `types` (at most every 250 ms).
function liveReload(types, load, signal) {
  let pending = null;
  const query = types.map((t) => `type=${encodeURIComponent(t)}`).join("&");
  follow(`/events/live?${query}`, () => {
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      if (!signal.aborted) load().catch((e) => showError(e.message));
    }, 250);
  }, signal).catch((e) => showError(e.message));
  return load();
}

// -- sign-in -------------------------------------------------------------------------------------
function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/signin";
}

function signIn(main) {
  const input = h("input", { type: "password", placeholder: "API token", testid: "token", autocomplete: "off" });
  const form = h("form", { class: "signin", testid: "signin" }, input, h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api("/protocols/runs?limit=1", { signingIn: true });
      if (location.hash === "#/runs") route();
      else location.hash = "#/runs";
    } catch (error) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError(`sign-in refused: ${error.message}`);
    }
  });
  main.append(h("h2", {}, "Sign in"), form);
}

// -- runs ------------------------------------------------------------------------------------------
async function runs(main, signal) {
  const body = h("tbody");
  const table = h("table", { testid: "runs" },
    h("thead", {}, h("tr", {}, ["run", "protocol", "status", "workcell", "created"].map((c) => h("th", {}, c)))),
    body);
  main.append(h("h2", {}, "Runs"), submitForm(), table);
  const load = async () => {
    const page = await api("/protocols/runs?limit=100", { signal });
    body.replaceChildren(...page.items.map((run) => h("tr", { testid: `run-row-${run.accession_id}` },
      h("td", {}, h("a", { href: `#/runs/${run.accession_id}` }, run.accession_id.slice(0, 8))),
      h("td", {}, `${run.protocol_name} ${run.protocol_version}`),
      h("td", {}, statusBadge(run.status, `run-status-${run.accession_id}`)),
      h("td", {}, run.workcell_name || run.workcell || ""),
      h("td", {}, when(run.created_at)))));
  };
  await liveReload(["scheduler.run.status_changed"], load, signal);
}

// Submit a run: protocol, workcell, parameters and asset pins as JSON objects.
function submitForm() {
  const protocol = h("input", { placeholder: "protocol", testid: "submit-protocol", required: true });
  const workcell = h("input", { placeholder: "workcell (any)", testid: "submit-workcell" });
  const parameters = h("input", { placeholder: '{"volume": 25}', testid: "submit-parameters" });
  const assets = h("input", { placeholder: '{"source_plate": "plate_1"}', testid: "submit-assets" });
  const form = h("form", { class: "actions", testid: "submit" }, protocol, workcell, parameters, assets,
    h("button", { type: "submit" }, "Submit"));
  const object = (input, what) => {
    if (!input.value.trim()) return {};
    const value = JSON.parse(input.value);
    if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error(`${what} must be a JSON object`);
    return value;
  };
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const run = await api("/protocols/runs", {
        method: "POST",
        body: {
          protocol_name: protocol.value.trim(),
          workcell: workcell.value.trim() || null,
          parameters: object(parameters, "parameters"),
          assets: object(assets, "assets"),
        },
      });
      location.hash = `#/runs/${run.accession_id}`;
    } catch (error) {
      showError(error.message);
    }
  });
  return form;
}

function callTree(calls) {
  const children = new Map();
  for (const call of calls.values()) {
    const parent = call.parent_call_id || "";
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(call);
  }
  const branch = (parent) => h("ul", { class: "tree" }, (children.get(parent) || [])
    .sort((a, b) => a.sequence - b.sequence)
    .map((call) => h("li", { testid: `call-${call.sequence}` },
      `${call.function} `, statusBadge(call.status),
      call.error ? h("span", { class: "muted" }, ` ${call.error}`) : null,
      branch(call.call_id))));
  return branch("");
}

async function runPage(main, signal, runId) {
  let run = await api(`/protocols/runs/${runId}`, { signal });
  const panel = h("dl", { class: "panel", testid: "run-panel" });
  const status = h("span", { testid: "run-status" });
  const reason = h("input", { placeholder: "reason (kept in the audit trail)", testid: "reason" });
  const buttons = h("div", { class: "actions" });
  const tree = h("div", { testid: "call-tree" });
  const timeline = h("ol", { testid: "timeline" });
  const calls = new Map();

  const act = async (action, outcome) => {
    try {
      const reply = await api(`/protocols/runs/${runId}/actions`, {
        method: "POST",
        body: { action, reason: reason.value, ...(outcome ? { outcome } : {}) },
      });
      showError("");
      if (action === "retry") location.hash = `#/runs/${reply.accession_id}`;
      else { run = reply; draw(); }
    } catch (error) {
      showError(error.message);
    }
  };
  const draw = () => {
    status.replaceChildren(statusBadge(run.status));
    const rows = [
      ["run", run.accession_id], ["status", status],
      ["protocol", `${run.protocol_name} ${run.protocol_version} @ ${run.source_commit.slice(0, 12)}`],
      ["workcell", run.workcell_name || run.workcell || ""],
      ["parameters", JSON.stringify(run.parameters)],
      ["assets", run.bindings.map((b) => `${b.requirement}=${b.asset_name}`).join(", ")],
      ["waiting for", run.waiting_for], ["edge", run.edge_instance],
      ["started", when(run.started_at)], ["finished", when(run.finished_at)],
      ["result", run.result === null || run.result === undefined ? null : JSON.stringify(run.result)],
      ["error", run.error ? `${run.error.type}: ${run.error.message}` : null],
    ];
    panel.replaceChildren(...rows.filter(([, v]) => v !== null && v !== undefined && v !== "")
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", { testid: `field-${k.replace(" ", "-")}` }, v)]));
    const buttonsFor = Object.entries(ACTIONS)
      .filter(([, allowed]) => allowed.includes(run.status))
      .map(([action]) => h("button", { testid: `action-${action}`, onclick: () => act(action) }, action));
    if (run.status === "requires_intervention") {
      buttonsFor.push(h("button", { testid: "action-resolve-failed", onclick: () => act("resolve", "failed") }, "resolve as failed"));
      buttonsFor.push(h("button", { testid: "action-resolve-cancelled", onclick: () => act("resolve", "cancelled") }, "resolve as cancelled"));
    }
    buttons.replaceChildren(reason, ...buttonsFor);
    tree.replaceChildren(callTree(calls));
  };
  main.append(h("h2", {}, `Run ${runId.slice(0, 8)}`), panel, buttons,
    h("div", { class: "columns" },
      h("section", {}, h("h3", {}, "Calls"), tree),
      h("section", {}, h("h3", {}, "Timeline"), timeline)));
  draw();
  await follow(`/protocols/runs/${runId}/events`, async (event) => {
    const data = event.data;
    const detail = data.function ? `${data.function} ${data.status}` : data.status || data.reason || "";
    timeline.append(h("li", {}, `${when(data.at || data.started_at || data.occurred_at)} ${event.type} ${detail}`));
    if (event.type === "orchestrator.call.recorded") {
      const known = calls.get(data.call_id);
      if (!known || known.status === "running") calls.set(data.call_id, data);
      tree.replaceChildren(callTree(calls));
    } else if (event.type === "scheduler.run.status_changed") {
      run = { ...run, status: data.status };
      if (TERMINAL.has(data.status) || data.status === "requires_intervention") {
        run = await api(`/protocols/runs/${runId}`, { signal });
      }
      draw();
    }
  }, signal, (event) => event.type === "scheduler.run.status_changed" && TERMINAL.has(event.data.status));
}

// -- queue and interventions -------------------------------------------------------------------
async function queue(main, signal) {
  const holder = h("div", { testid: "queue" });
  main.append(h("h2", {}, "Queue"), holder);
  const load = async () => {
    const page = await api("/protocols/runs?status=queued&limit=1000", { signal });
    const groups = new Map();
    const ordered = page.items.sort((a, b) => b.priority - a.priority || a.created_at.localeCompare(b.created_at));
    for (const run of ordered) {
      const name = run.workcell || run.workcell_name || "any workcell";
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push(run);
    }
    holder.replaceChildren(...(groups.size ? [...groups].map(([name, items]) => h("table", { testid: `queue-${name}` },
      h("caption", {}, `${name}: ${items.length} queued`),
      h("thead", {}, h("tr", {}, ["#", "run", "protocol", "priority", "waiting for", "since"].map((c) => h("th", {}, c)))),
      h("tbody", {}, items.map((run, i) => h("tr", { testid: `queued-${run.accession_id}` },
        h("td", {}, i + 1),
        h("td", {}, h("a", { href: `#/runs/${run.accession_id}` }, run.accession_id.slice(0, 8))),
        h("td", {}, run.protocol_name), h("td", {}, run.priority),
        h("td", { testid: `waiting-${run.accession_id}` }, run.waiting_for || "its turn"),
        h("td", {}, when(run.waiting_since || run.created_at))))))) : [h("p", {}, "Nothing queued.")]));
  };
  await liveReload(["scheduler.run.status_changed", "asset.reservation.waiting"], load, signal);
}

async function interventions(main, signal) {
  const holder = h("div", { testid: "interventions" });
  main.append(h("h2", {}, "Interventions"), holder);
  const load = async () => {
    const page = await api("/protocols/runs?status=requires_intervention&limit=1000", { signal });
    holder.replaceChildren(page.items.length ? h("table", {},
      h("thead", {}, h("tr", {}, ["run", "protocol", "workcell", "error", "since", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.items.map((run) => {
        const reason = h("input", { placeholder: "what was found", testid: `reason-${run.accession_id}` });
        const resolve = (outcome) => api(`/protocols/runs/${run.accession_id}/actions`, {
          method: "POST", body: { action: "resolve", outcome, reason: reason.value },
        }).then(load, (e) => showError(e.message));
        return h("tr", { testid: `intervention-${run.accession_id}` },
          h("td", {}, h("a", { href: `#/runs/${run.accession_id}` }, run.accession_id.slice(0, 8))),
          h("td", {}, run.protocol_name), h("td", {}, run.workcell_name || ""),
          h("td", {}, run.error ? `${run.error.type}: ${run.error.message}` : ""),
          h("td", {}, when(run.updated_at)),
          h("td", {}, reason,
            h("button", { testid: `resolve-failed-${run.accession_id}`, onclick: () => resolve("failed") }, "failed"),
            h("button", { testid: `resolve-cancelled-${run.accession_id}`, onclick: () => resolve("cancelled") }, "cancelled")));
      }))) : h("p", {}, "No run needs an operator."));
  };
  await liveReload(["scheduler.run.status_changed"], load, signal);
}

async function inboxCount() {
  const badge = document.getElementById("inbox-count");
  const signal = new AbortController().signal;
  const load = async () => {
    const page = await api("/protocols/runs?status=requires_intervention&limit=1", { signal });
    badge.textContent = page.total ? `(${page.total})` : "";
  };
  await liveReload(["scheduler.run.status_changed"], load, signal);
}

// -- workcells and leases ----------------------------------------------------------------------
function contents(asset) {
  const parts = Object.entries(asset.state || {});
  const wells = parts.filter(([name]) => /_well_[A-Z]+\d+$/.test(name)).map(([, s]) => Number(s.volume || 0));
  const spots = parts.filter(([name]) => /_tipspot_[A-Z]+\d+$/.test(name));
  if (wells.length) {
    const filled = wells.filter((v) => v > 0);
    return `${filled.length}/${wells.length} wells filled, ${wells.reduce((a, b) => a + b, 0)} uL`;
  }
  if (spots.length) return `${spots.filter(([, s]) => s.tip).length}/${spots.length} tips`;
  return "";
}

// A plate's wells as a grid of volumes (uL), rows A.. by columns 1.., folded until opened.
function wellGrid(asset) {
  const volumes = new Map();
  for (const [name, part] of Object.entries(asset.state || {})) {
    const found = name.match(/_well_([A-Z]+)(\d+)$/);
    if (found) volumes.set(`${found[1]}${found[2]}`, Number(part.volume || 0));
  }
  if (!volumes.size) return null;
  const rows = [...new Set([...volumes.keys()].map((k) => k.match(/^[A-Z]+/)[0]))].sort();
  const columns = [...new Set([...volumes.keys()].map((k) => Number(k.match(/\d+$/)[0])))].sort((a, b) => a - b);
  return h("details", { testid: `wells-${asset.name}` }, h("summary", {}, "wells (uL)"),
    h("table", {}, h("thead", {}, h("tr", {}, h("th", {}), columns.map((c) => h("th", {}, c)))),
      h("tbody", {}, rows.map((row) => h("tr", {}, h("th", {}, row),
        columns.map((c) => h("td", { testid: `well-${asset.name}-${row}${c}` }, volumes.get(`${row}${c}`) ?? "")))))));
}

async function workcells(main, signal) {
  const page = await api("/workcells?limit=500", { signal });
  main.append(h("h2", {}, "Workcells"), h("table", { testid: "workcells" },
    h("thead", {}, h("tr", {}, ["name", "state", "description"].map((c) => h("th", {}, c)))),
    h("tbody", {}, page.items.map((cell) => h("tr", {},
      h("td", {}, h("a", { href: `#/workcells/${encodeURIComponent(cell.name)}` }, cell.name)),
      h("td", {}, cell.drained ? `drained: ${cell.drain_reason || ""}` : "open"),
      h("td", {}, cell.description))))));
}

async function workcellPage(main, signal, name) {
  const holder = h("div", { testid: "deck" });
  const state = h("p", { testid: "workcell-state" });
  const reason = h("input", { placeholder: "reason", testid: "drain-reason" });
  const toggle = (drain) => api(`/workcells/${encodeURIComponent(name)}/${drain ? "drain" : "resume"}`, {
    method: "POST", body: { reason: reason.value || null },
  }).then(load, (e) => showError(e.message));
  main.append(h("h2", {}, `Workcell ${name}`), state,
    h("div", { class: "actions" }, reason,
      h("button", { testid: "drain", onclick: () => toggle(true) }, "drain"),
      h("button", { testid: "undrain", onclick: () => toggle(false) }, "resume")),
    holder);
  async function load() {
    const layout = await api(`/workcells/${encodeURIComponent(name)}`, { signal });
    const cell = layout.workcell;
    state.textContent = cell.drained ? `drained: ${cell.drain_reason || ""}` : "open";
    const children = new Map();
    for (const asset of layout.assets) {
      const parent = asset.parent_id || "";
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(asset);
    }
    const branch = (parent) => h("ul", { class: "tree deck" }, (children.get(parent) || [])
      .sort((a, b) => (a.slot || "").localeCompare(b.slot || "") || a.name.localeCompare(b.name))
      .map((asset) => h("li", { testid: `asset-${asset.name}` },
        h("strong", {}, asset.name), " ",
        h("span", { class: "muted" }, `${asset.fqn.split(".").pop()}${asset.slot ? ` @${asset.slot}` : ""}`),
        asset.status !== "available" ? ` [${asset.status}]` : "",
        contents(asset) ? h("span", { testid: `contents-${asset.name}` }, ` ${contents(asset)}`) : null,
        wellGrid(asset),
        branch(asset.accession_id))));
    holder.replaceChildren(branch(""));
  }
  await liveReload(["orchestrator.state.recorded", "asset.state.restored", "asset.workcell.changed"], load, signal);
}

async function leases(main, signal) {
  const body = h("tbody");
  main.append(h("h2", {}, "Leases"), h("table", { testid: "leases" },
    h("thead", {}, h("tr", {}, ["asset", "run", "token", "acquired", "expires"].map((c) => h("th", {}, c)))), body));
  const load = async () => {
    const list = await api("/locks", { signal });
    body.replaceChildren(...list.items.map((lease) => h("tr", { testid: `lease-${lease.asset_name}` },
      h("td", {}, lease.asset_name),
      h("td", {}, h("a", { href: `#/runs/${lease.run_id}` }, lease.run_id.slice(0, 8))),
      h("td", {}, lease.token), h("td", {}, when(lease.acquired_at)),
      h("td", {}, lease.expires_at ? when(lease.expires_at) : "held for an operator"))));
  };
  await liveReload(["asset.reservation.granted", "asset.reservation.released", "asset.lease.expired",
    "asset.lease.force_released", "asset.reservation.held"], load, signal);
}

// Edges: the scheduler's view from their heartbeats (KV, not events): reloaded at each run's
// status change and on demand.
async function edges(main, signal) {
  const body = h("tbody");
  main.append(h("h2", {}, "Edges"),
    h("div", { class: "actions" }, h("button", { testid: "edges-reload", onclick: () => load().catch((e) => showError(e.message)) }, "reload")),
    h("table", { testid: "edges" },
      h("thead", {}, h("tr", {}, ["workcell", "instance", "version", "state", "last beat", "runs"].map((c) => h("th", {}, c)))), body));
  const load = async () => {
    const list = await api("/edges", { signal });
    body.replaceChildren(...list.items.map((edge) => h("tr", { testid: `edge-${edge.workcell}` },
      h("td", {}, edge.workcell), h("td", {}, edge.instance), h("td", {}, edge.version),
      h("td", { testid: `edge-state-${edge.workcell}` }, !edge.live ? "gone" : edge.accepting ? "live" : "stopping"),
      h("td", {}, when(edge.last_beat_at)),
      h("td", {}, edge.runs.map((r) => `${r.run_id.slice(0, 8)} ${r.phase}`).join(", ")))));
  };
  await liveReload(["scheduler.run.status_changed"], load, signal);
}

// Dead letters (admin tokens only): newest first, each opened to its headers and body.
async function deadLetters(main, signal) {
  const page = await api("/dead-letters?limit=100", { signal });
  main.append(h("h2", {}, `Dead letters (${page.total})`), h("table", { testid: "dead-letters" },
    h("thead", {}, h("tr", {}, ["seq", "type", "published on", "reason", "when"].map((c) => h("th", {}, c)))),
    h("tbody", {}, page.items.map((letter) => h("tr", { testid: `dead-letter-${letter.seq}` },
      h("td", {}, h("a", { href: `#/dead-letters/${letter.seq}` }, letter.seq)),
      h("td", {}, letter.message_type || ""), h("td", {}, letter.original_subject),
      h("td", {}, letter.reason), h("td", {}, when(letter.stored_at)))))));
}

async function deadLetter(main, signal, seq) {
  const letter = await api(`/dead-letters/${seq}`, { signal });
  const reason = h("input", { placeholder: "reason (kept in the audit trail)", testid: "replay-reason" });
  const outcome = h("p", { testid: "replay-outcome" });
  const replay = async () => {
    try {
      const done = await api(`/dead-letters/${seq}/replay`, { method: "POST", body: { reason: reason.value } });
      showError("");
      outcome.textContent = `handled again by ${done.identity}/${done.consumer}`;
    } catch (error) {
      outcome.textContent = "";
      showError(error.message);
    }
  };
  main.append(h("h2", {}, `Dead letter ${seq}`),
    h("div", { class: "actions" }, reason, h("button", { testid: "replay", onclick: replay }, "replay")),
    outcome,
    h("dl", { class: "panel", testid: "dead-letter" },
      [["type", letter.message_type], ["published on", letter.original_subject],
        ["reason", letter.reason], ["when", when(letter.stored_at)],
        ["headers", JSON.stringify(letter.headers, null, 1)],
        ["body", JSON.stringify(letter.payload, null, 1)]]
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", { testid: `dead-${k.replace(" ", "-")}` }, v ?? "")])));
}

// The audit trail: every stored event with who set it going, newest first, filtered and paged.
async function audit(main, signal) {
  const fields = ["type", "run_id", "workcell", "actor"];
  const inputs = Object.fromEntries(fields.map((f) => [f, h("input", { placeholder: f.replace("_", " "), testid: `audit-${f}` })]));
  const body = h("tbody");
  const older = h("button", { testid: "audit-older", hidden: true }, "older");
  let before = null;
  const load = async (more) => {
    const query = new URLSearchParams({ limit: "100" });
    for (const f of fields) if (inputs[f].value.trim()) query.set(f, inputs[f].value.trim());
    if (more && before) query.set("before", before);
    const page = await api(`/events?${query}`, { signal });
    const rows = page.items.map((e) => h("tr", { testid: `audit-${e.id}` },
      h("td", {}, when(e.occurred_at)), h("td", {}, e.type), h("td", { testid: `audit-actor-${e.id}` }, e.actor || ""),
      h("td", {}, e.run_id ? h("a", { href: `#/runs/${e.run_id}` }, e.run_id.slice(0, 8)) : ""),
      h("td", {}, e.workcell || ""), h("td", {}, e.publisher || ""),
      h("td", { class: "body" }, JSON.stringify(e.payload).slice(0, 160))));
    if (more) body.append(...rows); else body.replaceChildren(...rows);
    before = page.next_before;
    older.hidden = before === null;
  };
  const run = (more) => load(more).then(() => showError(""), (e) => showError(e.message));
  older.onclick = () => run(true);
  main.append(h("h2", {}, "Audit trail"),
    h("form", { class: "actions", testid: "audit-filters", onsubmit: (e) => { e.preventDefault(); run(false); } },
      ...fields.map((f) => inputs[f]), h("button", { testid: "audit-search", type: "submit" }, "search")),
    h("table", { testid: "audit" },
      h("thead", {}, h("tr", {}, ["when", "type", "actor", "run", "workcell", "publisher", "body"].map((c) => h("th", {}, c)))), body),
    older);
  await load(false);
}

// -- routing -------------------------------------------------------------------------------------
const ROUTES = [
  [/^#\/runs\/([0-9a-f-]{36})$/, runPage],
  [/^#\/runs$/, runs],
  [/^#\/queue$/, queue],
  [/^#\/interventions$/, interventions],
  [/^#\/workcells\/(.+)$/, (main, signal, name) => workcellPage(main, signal, decodeURIComponent(name))],
  [/^#\/workcells$/, workcells],
  [/^#\/leases$/, leases],
  [/^#\/edges$/, edges],
  [/^#\/dead-letters\/(\d+)$/, deadLetter],
  [/^#\/dead-letters$/, deadLetters],
  [/^#\/audit$/, audit],
];

async function route() {
  if (view) view.abort();
  view = new AbortController();
  const main = document.getElementById("main");
  main.replaceChildren();
  showError("");
  const signedIn = Boolean(token());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn || location.hash === "#/signin") {
    signIn(main);
    return;
  }
  const hash = location.hash || "#/runs";
  for (const [pattern, render] of ROUTES) {
    const match = hash.match(pattern);
    if (match) {
      try {
        await render(main, view.signal, ...match.slice(1));
      } catch (error) {
        if (!view.signal.aborted) showError(error.message);
      }
      return;
    }
  }
  location.hash = "#/runs";
}

let inbox = false;
window.addEventListener("hashchange", () => {
  route();
  if (token() && !inbox) { inbox = true; inboxCount().catch(() => { inbox = false; }); }
});
document.getElementById("sign-out").addEventListener("click", signOut);
route();
if (token()) { inbox = true; inboxCount().catch(() => { inbox = false; }); }
