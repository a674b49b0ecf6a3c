// dagrun's pages: plain JavaScript, no build step, nothing loaded from elsewhere.
"use strict";

const body = document.body;
const API = body.dataset.api || "";
const CSRF = body.dataset.csrfHeader || "X-Dagrun-Request";

async function call(method, path, payload) {
  const headers = {"Accept": "application/json"};
  headers[CSRF] = "1";  // proves the request comes from this page, not from another site
  const init = {method, headers, credentials: "same-origin"};
  if (payload !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(payload);
  }
  const response = await fetch(API + path, init);
  let data = {};
  try { data = await response.json(); } catch (e) { data = {error: response.statusText}; }
  return {ok: response.ok, status: response.status, data};
}

function text(el, value) { if (el) el.textContent = value == null ? "" : String(value); }

// -- a run's page: live over Server-Sent Events ----------------------------------------

function runPage() {
  const root = document.getElementById("run");
  const runId = root.dataset.runId;
  const cancel = document.getElementById("cancel");
  const resume = document.getElementById("resume");
  const message = document.getElementById("action-message");
  const log = document.getElementById("log");
  let selected = null;
  let latest = null;
  let pending = null;
  let source = null;

  function render(run) {
    latest = run;
    root.dataset.status = run.status;
    text(document.getElementById("run-status"), run.status);
    const error = document.getElementById("run-error");
    text(error, run.error);
    error.hidden = !run.error;
    // (an interrupted run's process is gone: Cancel closes it, as its message says)
    cancel.disabled = run.status !== "running" && run.status !== "interrupted";
    if (run.status !== "running" && message.textContent === "cancelling…") text(message, "");
    resume.disabled = run.status === "running" || run.status === "succeeded" || run.mode === "check";
    for (const step of run.steps) {
      for (const el of document.querySelectorAll(`[data-step-id="${CSS.escape(step.step_id)}"]`)) {
        el.dataset.status = step.status;
        if (el.tagName === "TR") {
          text(el.querySelector(".status"), step.status.replace("_", " "));
          text(el.querySelector(".attempts"), step.attempts);
          text(el.querySelector(".duration"), step.duration_seconds == null ? "" : step.duration_seconds.toFixed(2) + "s");
          text(el.querySelector(".changed"), step.status === "completed" ? (step.changed === false ? "no" : "yes") : "");
          const waits = (step.waiting_for || []).map(w => w.text).join("; ");
          // a step waiting to retry: when it retries first, then what failed
          const why = step.status === "waiting_retry" && waits ? `${waits}; last attempt: ${step.error || "failed"}`
            : step.error || waits;
          text(el.querySelector(".why"), why);
        }
      }
    }
    if (selected) showLog(selected);
  }

  async function refresh() {
    pending = null;
    const answer = await call("GET", `/api/runs/${encodeURIComponent(runId)}?output=1`);
    if (answer.ok) render(answer.data);
  }

  function soon() {  // many events in a burst: one refresh
    if (!pending) pending = setTimeout(refresh, 250);
  }

  function listen() {
    if (source) source.close();
    source = new EventSource(`${API}/api/runs/${encodeURIComponent(runId)}/events`);
    source.addEventListener("attempt", soon);
    source.addEventListener("run", () => { soon(); source.close(); source = null; });
    source.onerror = () => { if (latest && latest.status !== "running") { source.close(); source = null; } };
  }

  function showLog(stepId) {
    selected = stepId;
    text(document.getElementById("log-step"), stepId);
    const attempts = (latest ? latest.attempts : []).filter(a => a.step_id === stepId);
    const last = attempts[attempts.length - 1];
    text(log, last ? (last.output || "(no output)") : "(not started)");
  }

  for (const row of document.querySelectorAll("tr[data-step-id]")) {
    row.addEventListener("click", () => showLog(row.dataset.stepId));
  }
  for (const node of document.querySelectorAll("g.step")) {
    node.addEventListener("click", () => showLog(node.dataset.stepId));
  }
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    const answer = await call("POST", `/api/runs/${encodeURIComponent(runId)}/cancel`);
    if (answer.ok && answer.data.closed) {  // its process had stopped: the cancel closed the run
      text(message, "its process had stopped: closed; resume goes on from where it stopped");
      refresh();
      return;
    }
    text(message, answer.ok ? "cancelling…" : answer.data.error);
  });
  const secretsForm = document.getElementById("resume-secrets");

  async function resumeWith(secrets) {
    resume.disabled = true;
    const answer = await call("POST", `/api/runs/${encodeURIComponent(runId)}/resume`, secrets ? {secrets} : {});
    if (answer.ok) {
      text(message, "resumed");
      secretsForm.hidden = true;
      secretsForm.querySelector(".fields").replaceChildren();  // no secret stays in the page
      await refresh();
      listen();
      return;
    }
    resume.disabled = false;
    if (answer.data.needs) {  // what was not stored: asked for, one field each
      text(message, secrets ? answer.data.error : "");
      askFor(answer.data.needs);
    } else {
      text(message, answer.data.error);
    }
  }

  function askFor(names) {
    const fields = secretsForm.querySelector(".fields");
    if (fields.dataset.names === names.join("\n")) { secretsForm.hidden = false; return; }
    fields.dataset.names = names.join("\n");
    fields.replaceChildren(...names.map(name => {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "password";
      input.name = name;
      input.autocomplete = "off";
      label.append(name + " ", input);
      return label;
    }));
    secretsForm.hidden = false;
    fields.querySelector("input").focus();
  }

  secretsForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const secrets = {};
    for (const input of secretsForm.querySelectorAll("input")) secrets[input.name] = input.value;
    resumeWith(secrets);
  });
  resume.addEventListener("click", () => resumeWith(null));
  refresh();
  if (root.dataset.status === "running") listen();
}

// -- the runs page: live by polling --------------------------------------------------------

function runsPage() {
  const table = document.querySelector("#runs tbody");
  async function refresh() {
    const answer = await call("GET", "/api/runs?limit=100");
    if (!answer.ok) return;
    table.replaceChildren(...answer.data.runs.map(r => {
      const row = document.createElement("tr");
      row.dataset.runId = r.run_id;
      row.dataset.status = r.status;
      const cells = [null, (r.started_at || "").slice(0, 19).replace("T", " "), null, r.workspace_id,
                     `${r.template} ${r.version}`, `${r.completed}/${r.total}` + (r.failed ? `, ${r.failed} failed` : "")];
      cells.forEach((value, i) => {
        const cell = document.createElement("td");
        if (i === 0) {
          const link = document.createElement("a");
          link.href = `${API}/runs/${encodeURIComponent(r.run_id)}`;
          text(link, r.run_id.slice(0, 8));
          cell.append(link);
        } else if (i === 2) {
          const status = document.createElement("span");
          status.className = "status";
          text(status, r.status);
          cell.append(status);
        } else {
          text(cell, value);
        }
        row.append(cell);
      });
      return row;
    }));
  }
  setInterval(refresh, 2000);
  const form = document.getElementById("start-run");
  const problems = document.getElementById("start-problems");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let workspace, variables;
    try {
      workspace = JSON.parse(form.workspace.value || "{}");
      variables = JSON.parse(form.variables.value || "{}");
    } catch (e) {
      problems.hidden = false;
      text(problems, "not valid JSON: " + e.message);
      return;
    }
    const answer = await call("POST", `/api/workspaces/${encodeURIComponent(form.workspace_id.value)}/runs`,
                              {template: form.template.value, workspace, variables});
    if (answer.ok) { window.location = `${API}/runs/${encodeURIComponent(answer.data.run_id)}`; return; }
    problems.hidden = false;
    text(problems, (answer.data.problems || []).map(p => p.text).join("\n") || answer.data.error);
  });
}

// -- the template editor ----------------------------------------------------------------------

function templatePage() {
  const editor = document.getElementById("editor");
  const documentData = JSON.parse(document.getElementById("document").textContent);
  const schemas = JSON.parse(document.getElementById("schemas").textContent);
  const names = JSON.parse(document.getElementById("action-names").textContent);
  const list = document.getElementById("editor-steps");
  const problems = document.getElementById("problems");
  const message = document.getElementById("save-message");
  let steps = (documentData.actions || []).map(s => ({...s}));

  function field(label, input) {
    const wrap = document.createElement("label");
    wrap.append(label, input);
    return wrap;
  }

  function draw() {
    list.replaceChildren(...steps.map((step, index) => {
      const item = document.createElement("li");
      item.className = "card";
      item.dataset.stepId = step.id || "";
      const id = Object.assign(document.createElement("input"), {name: "id", value: step.id || ""});
      id.addEventListener("input", () => { step.id = id.value || undefined; });
      const order = Object.assign(document.createElement("input"), {name: "sequence_order", type: "number",
                                                                    value: step.sequence_order ?? ""});
      order.addEventListener("input", () => { step.sequence_order = order.value === "" ? undefined : Number(order.value); });
      const action = document.createElement("select");
      action.name = "action_name";
      for (const name of names) {
        const option = Object.assign(document.createElement("option"), {value: name, textContent: name});
        if (name === step.action_name) option.selected = true;
        action.append(option);
      }
      if (step.action_name && !names.includes(step.action_name)) {
        action.append(Object.assign(document.createElement("option"), {value: step.action_name,
                                                                      textContent: step.action_name, selected: true}));
      }
      action.addEventListener("change", () => { step.action_name = action.value; drawSchema(); });
      const requires = Object.assign(document.createElement("input"), {name: "requires",
                                                                       value: (step.requires || []).join(", ")});
      requires.addEventListener("input", () => {
        const items = requires.value.split(",").map(s => s.trim()).filter(Boolean);
        step.requires = items.length ? items : undefined;
      });
      const config = document.createElement("textarea");
      config.name = "action_config";
      config.rows = 4;
      config.value = JSON.stringify(step.action_config || {}, null, 2);
      const note = document.createElement("small");
      note.className = "schema-note";
      function drawSchema() {
        const props = Object.keys((schemas[step.action_name] || {}).properties || {});
        text(note, props.length ? "fields: " + props.join(", ") : "");
      }
      config.addEventListener("input", () => {
        try { step.action_config = JSON.parse(config.value || "{}"); config.classList.remove("invalid"); }
        catch (e) { config.classList.add("invalid"); step.__invalid = e.message; return; }
        delete step.__invalid;
      });
      drawSchema();
      const buttons = document.createElement("div");
      buttons.className = "buttons";
      for (const [label, act] of [["Up", () => move(index, -1)], ["Down", () => move(index, 1)],
                                  ["Remove", () => { steps.splice(index, 1); draw(); }]]) {
        const button = Object.assign(document.createElement("button"), {type: "button", textContent: label});
        button.addEventListener("click", act);
        buttons.append(button);
      }
      item.append(field("id ", id), field("order ", order), field("action ", action),
                  field("requires ", requires), field("config (JSON) ", config), note, buttons);
      return item;
    }));
  }

  function move(index, by) {
    const other = index + by;
    if (other < 0 || other >= steps.length) return;
    [steps[index], steps[other]] = [steps[other], steps[index]];
    const orders = steps.map(s => s.sequence_order).filter(o => typeof o === "number").sort((a, b) => a - b);
    if (orders.length === steps.length) steps.forEach((s, i) => { s.sequence_order = orders[i]; });
    draw();
  }

  document.getElementById("add-step").addEventListener("click", () => {
    const top = Math.max(0, ...steps.map(s => s.sequence_order || 0));
    steps.push({sequence_order: top + 10, action_name: names.includes("execute_custom_script")
                ? "execute_custom_script" : names[0], action_config: {}});
    draw();
  });

  document.getElementById("save").addEventListener("click", async () => {
    const broken = steps.filter(s => s.__invalid);
    problems.replaceChildren();
    if (broken.length) {
      problems.hidden = false;
      for (const s of broken) problems.append(Object.assign(document.createElement("li"),
        {textContent: `step ${s.id || s.sequence_order}: config is not valid JSON: ${s.__invalid}`}));
      return;
    }
    const payload = {...documentData, actions: steps};
    const answer = await call("PUT", `/api/templates/${encodeURIComponent(editor.dataset.name)}`, payload);
    if (answer.ok) {
      problems.hidden = true;
      text(message, `saved as version ${answer.data.version}`);
      return;
    }
    text(message, "not saved");
    problems.hidden = false;
    const found = answer.data.problems || [{text: answer.data.error}];
    for (const p of found) problems.append(Object.assign(document.createElement("li"), {textContent: p.text}));
  });
  draw();
}

const pages = {run: runPage, runs: runsPage, template: templatePage};
if (pages[body.dataset.page]) pages[body.dataset.page]();
