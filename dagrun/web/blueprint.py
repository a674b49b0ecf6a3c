"""The Flask blueprint: the seed's HTTP API, live events, and the pages.

Everything goes through :mod:`dagrun.api`: a run is compiled, checked and
claimed before the 202 goes out (so a bad template is a 422 listing every
problem and an active run of the workspace a 409), then runs in the
background of this process. Reads come from the store, so runs started by
another process show too. The host application decides who may do what
through ``authorize(action, **resource)``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

from flask import Blueprint, Response, abort, jsonify, render_template, request, stream_with_context
from werkzeug.exceptions import HTTPException

from .. import api, render
from ..errors import DagrunError, InputError, RunConflictError, SecretsNeeded, StoreError, TemplateError
from .security import Guard

Authorize = Callable[..., bool]
log = logging.getLogger("dagrun.web")
_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\Z")
KEEPALIVE_SECONDS = 15.0
# A request body: a template document is at most 1 MB, with its variables and workspace well under this.
MAX_BODY_BYTES = 4 * 1024 * 1024
STREAM_SECONDS = 900.0


class Service:
    """What the blueprint was configured with."""

    def __init__(self, *, database_url: str | None, actions: Iterable[Any] | None,
                 trusted_actions: Iterable[Any] | None, authorize: Authorize | None, allow_network: Iterable[str],
                 home_roots: Iterable[str], sandbox: bool, max_workers: int | None,
                 adopt_users: Iterable[str] = (), allow_inline_templates: bool = False, max_streams: int = 32) -> None:
        self.database_url = database_url or api.default_database_url()
        self.actions = list(actions or [])
        self.trusted_actions = list(trusted_actions or [])
        self.authorize = authorize
        self.allow_network = tuple(allow_network)
        self.home_roots = tuple(home_roots)
        self.sandbox = sandbox
        self.max_workers = max_workers
        self.adopt_users = tuple(adopt_users)
        self.allow_inline_templates = allow_inline_templates
        self.streams = threading.BoundedSemaphore(max_streams)  # each live stream holds a server thread

    def run_options(self) -> dict[str, Any]:
        return dict(database_url=self.database_url, actions=self.actions or None,
                    trusted_actions=self.trusted_actions or None, allow_network=self.allow_network,
                    home_roots=self.home_roots, sandbox=self.sandbox, max_workers=self.max_workers,
                    adopt_users=self.adopt_users)


def create_blueprint(*, database_url: str | None = None, actions: Iterable[Any] | None = None,
                     trusted_actions: Iterable[Any] | None = None, authorize: Authorize | None = None,
                     token: str | None = None, allow_network: Iterable[str] = (), home_roots: Iterable[str] = (),
                     sandbox: bool = True, max_workers: int | None = None, adopt_users: Iterable[str] = (),
                     allowed_hosts: Iterable[str] | None = None, allow_inline_templates: bool = False,
                     max_streams: int = 32, name: str = "dagrun") -> Blueprint:
    """The API (``/api/...``) and the pages, to mount in a Flask app.

    ``authorize(action, **resource)`` (optional) is called in the request
    context for every request (``action``: read, run, cancel, resume, edit;
    ``resource``: workspace_id, run_id, template as they apply) and returns
    whether it is allowed (403 otherwise). ``token``: API calls and pages
    need it (``Authorization: Bearer TOKEN``, or the cookie ``/login`` sets).
    ``allowed_hosts``: the host names the service answers to (None: the host
    application checks Host). ``allow_inline_templates``: may a run request
    carry its own template document? A template is code that runs as root
    for ``run_as: root`` steps, so by default a request names a stored or
    shipped template. ``max_streams``: live event streams at once (429 beyond).
    """
    service = Service(database_url=database_url, actions=actions, trusted_actions=trusted_actions,
                      authorize=authorize, allow_network=allow_network, home_roots=home_roots, sandbox=sandbox,
                      max_workers=max_workers, adopt_users=adopt_users,
                      allow_inline_templates=allow_inline_templates, max_streams=max_streams)
    if token is not None and len(token) < 16:  # (as dagrun serve: a few characters can be guessed)
        raise InputError(f"the token must be at least 16 characters (this one has {len(token)})")
    guard = Guard(token, allowed_hosts)
    bp = Blueprint(name, __name__, template_folder="templates", static_folder="static",
                   static_url_path="/static/dagrun")
    bp.before_request(_bounded_body)
    bp.before_request(_plain_arguments)
    bp.before_request(guard.check)
    bp.after_request(guard.headers)

    def allowed(action: str, **resource: Any) -> None:
        if service.authorize is not None and not service.authorize(action, **resource):
            abort(403, description=f"not allowed to {action}")

    def readable_templates() -> list[dict[str, Any]]:
        return [t for t in api.list_templates(service.database_url) if _may_read(service, t["name"])]

    # -- errors as JSON (for the API) ----------------------------------------------------

    @bp.errorhandler(TemplateError)
    def template_error(exc: TemplateError):  # noqa: ANN202
        return jsonify(error=str(exc).splitlines()[0] if len(exc.problems) > 1 else str(exc),
                       problems=[{"text": str(p), "source": p.source, "step": p.step, "field": p.field,
                                  "message": p.message} for p in exc.problems]), 422

    @bp.errorhandler(SecretsNeeded)
    def secrets_needed(exc: SecretsNeeded):  # noqa: ANN202
        # said as this API takes them (the page asks for each)
        return jsonify(error=f"run {exc.run_id} was started with secrets that are not stored: "
                             f"{', '.join(exc.names)}; give them again: {{\"secrets\": {{\"NAME\": ...}}}} in the "
                             "request body", needs=exc.names), 422

    @bp.errorhandler(RunConflictError)
    def conflict(exc: RunConflictError):  # noqa: ANN202
        return jsonify(error=str(exc), run_id=exc.run_id), 409

    @bp.errorhandler(StoreError)
    def store_error(exc: StoreError):  # noqa: ANN202
        # Said to the operator (the log), not to whoever asked: it names the database's host and user.
        log.error("%s", exc)
        return jsonify(error="the run store cannot be reached or refused the request (the service's log says "
                             "why)"), 503

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # noqa: ANN202
        if _is_api_request(bp.name):
            return jsonify(error=exc.description), exc.code
        return render_template("dagrun/error.html", code=exc.code, message=exc.description), exc.code

    @bp.errorhandler(DagrunError)
    def input_error(exc: DagrunError):  # noqa: ANN202
        status = 404 if str(exc).startswith("no run ") or " not found" in str(exc) else 422
        return jsonify(error=str(exc)), status

    # -- health, templates, actions -----------------------------------------------------

    @bp.get("/api/health")
    def health():  # noqa: ANN202
        # answered without a token (a load balancer asks): nothing about the database but its kind
        return jsonify(status="ok", version=_version(), database=service.database_url.split(":", 1)[0])

    @bp.get("/api/templates")
    def templates():  # noqa: ANN202
        allowed("read")
        return jsonify(templates=readable_templates())

    @bp.get("/api/templates/<name>")
    def template(name: str):  # noqa: ANN202
        allowed("read", template=name)
        document, explained = _shown_template(service, name)
        return jsonify(name=name, document=document, explained=explained)

    @bp.get("/api/templates/<name>/actions")
    def template_actions(name: str):  # noqa: ANN202
        allowed("read", template=name)
        document = _template_document(service, name)
        plan = api.plan(document, actions=service.actions or None, trusted_actions=service.trusted_actions or None,
                        templates=_visible(service), estimates=False)
        library = api.list_actions(service.actions or None, service.trusted_actions or None)
        ids = {n: i for i, n in enumerate(sorted(library), 1)}
        return jsonify(template_id=document.get("template_id") or name, name=plan.name, version=plan.version,
                       total_actions=len(plan.order), actions=[{
                           "sequence_order": step.sequence_order, "step_id": sid, "phase": step.phase.name,
                           "requires": list(plan.predecessors[sid]),
                           "action": {"id": ids.get(step.action.name), "name": step.action.name,
                                      "display_name": step.action.display_name, "category": step.action.category},
                           "config": _masked_config(step)} for sid, step in plan.steps.items()])

    @bp.put("/api/templates/<name>")
    def save_template(name: str):  # noqa: ANN202
        allowed("edit", template=name)
        if not _NAME.match(name):  # (it could never be read or run again)
            raise InputError(f"{name!r} is not a template name (letters, digits, . _ -; at most 100)")
        document = _json_body()
        if document.get("name", name) != name:
            raise InputError(f"the document is named {document.get('name')!r}, not {name!r}")
        if _shipped(name):
            abort(409, description=f"{name} is a template shipped with dagrun: save yours under another name "
                                   f"(it may say extends: {name})")
        document = _unmasked_document(service, name, document)
        version = api.save_template({**document, "name": name}, database_url=service.database_url,
                                    bases=_visible(service),
                                    actions=service.actions or None, trusted_actions=service.trusted_actions or None)
        return jsonify(name=name, version=version), 200

    @bp.get("/api/actions")
    def actions():  # noqa: ANN202
        allowed("read")
        library = api.list_actions(service.actions or None, service.trusted_actions or None)
        return jsonify(actions=[{
            "name": a.name, "display_name": a.display_name, "category": a.category, "description": a.description,
            "action_type": a.action_type, "config_schema": _masked_schema(a.config_schema),
            "default_config": _masked_defaults(a), "requires_sudo": a.requires_sudo,
            "requires_network": a.requires_network, "max_retries": a.max_retries,
            "timeout_seconds": a.timeout_seconds, "estimated_duration_seconds": a.estimated_duration_seconds,
            "library": a.library} for a in sorted(library.values(), key=lambda a: (a.category, a.name))])

    # -- runs ---------------------------------------------------------------------------

    @bp.post("/api/workspaces/<ws_id>/runs")
    def start(ws_id: str):  # noqa: ANN202
        body = _json_body()
        template = body.get("template")
        allowed("run", workspace_id=ws_id, template=template if isinstance(template, str) else "<inline>")
        workspace = body.get("workspace") or {}
        if not isinstance(workspace, Mapping):
            raise InputError("workspace must be an object")
        if not isinstance(body.get("variables") or {}, Mapping):
            raise InputError("variables must be an object")
        if not ws_id.isprintable():
            raise InputError("the workspace id in the URL holds a control character")
        if "id" in workspace and str(workspace["id"]) != ws_id:
            raise InputError(f"the workspace's id {workspace['id']!r} is not {ws_id!r} (the one in the URL)")
        document = _template_for_run(service, template)
        handle = api.start_run(document, {**workspace, "id": ws_id}, stored_template=isinstance(template, str),
                               templates=_visible(service), database_templates=False,
                               variables=body.get("variables") or None, **service.run_options())
        return jsonify(run_id=handle.run_id), 202

    @bp.get("/api/workspaces/<ws_id>/action-executions")
    def executions(ws_id: str):  # noqa: ANN202
        allowed("read", workspace_id=ws_id)
        run_id = request.args.get("run_id") or _latest_run(service, ws_id)
        run = _run(service, run_id)
        if run["workspace_id"] != ws_id:
            abort(404, description=f"run {run_id} is not a run of workspace {ws_id}")
        steps = run["steps"]
        count = lambda *s: sum(1 for step in steps if step["status"] in s)  # noqa: E731
        return jsonify(workspace_id=ws_id, run_id=run["run_id"], status=run["status"], total_actions=len(steps),
                       completed=count("completed"), failed=count("failed"),
                       pending=count("pending", "running", "waiting_retry", "not_started"),
                       skipped=count("skipped"), executions=[{
                           "step_id": s["step_id"], "action_name": s["action_name"],
                           "display_name": s["display_name"], "status": s["status"], "attempts": s["attempts"],
                           "duration_seconds": s["duration_seconds"], "error": s["error"]} for s in steps])

    @bp.post("/api/workspaces/<ws_id>/actions/resume")
    def resume_workspace(ws_id: str):  # noqa: ANN202
        allowed("resume", workspace_id=ws_id)
        body = _json_body(optional=True)
        run = _run(service, body.get("run_id") or _latest_run(service, ws_id), steps=False)
        if run["workspace_id"] != ws_id:  # said as of a run that does not exist: whether another's does is not told
            abort(404, description=f"no run {run['run_id']!r} in the store")
        return _resume(service, run["run_id"], body)

    @bp.post("/api/runs/<run_id>/resume")
    def resume_run(run_id: str):  # noqa: ANN202
        run = _run(service, run_id, steps=False)
        allowed("resume", workspace_id=run["workspace_id"], run_id=run["run_id"])
        return _resume(service, run["run_id"], _json_body(optional=True))

    @bp.get("/api/runs")
    def runs():  # noqa: ANN202
        allowed("read", workspace_id=request.args.get("workspace"))
        limit = _limit()
        found = api.list_runs(database_url=service.database_url, workspace=request.args.get("workspace"),
                              status=request.args.get("status"), limit=_before_filtering(service, limit))
        return jsonify(runs=_readable(service, found)[:limit])

    @bp.get("/api/runs/<run_id>")
    def run(run_id: str):  # noqa: ANN202
        found = _run(service, run_id, output=request.args.get("output") == "1")
        allowed("read", workspace_id=found["workspace_id"], run_id=found["run_id"])
        return jsonify(found)

    @bp.post("/api/runs/<run_id>/cancel")
    def cancel(run_id: str):  # noqa: ANN202
        found = _run(service, run_id, steps=False)
        allowed("cancel", workspace_id=found["workspace_id"], run_id=found["run_id"])
        api.cancel_run(found["run_id"], database_url=service.database_url, reason="cancelled from the web")
        if api.closed_as_interrupted(found["run_id"], database_url=service.database_url):
            return jsonify(run_id=found["run_id"], status="failed", closed="interrupted")  # (resumable)
        return jsonify(run_id=found["run_id"], status="cancelling"), 202

    @bp.get("/api/runs/<run_id>/events")
    def events(run_id: str):  # noqa: ANN202
        found = _run(service, run_id, steps=False)
        allowed("read", workspace_id=found["workspace_id"], run_id=found["run_id"])
        if not service.streams.acquire(blocking=False):
            abort(429, description="too many live event streams: poll GET /api/runs/<id> instead")
        response = Response(stream_with_context(_event_stream(service.database_url, found["run_id"])),
                            mimetype="text/event-stream", headers={"Cache-Control": "no-cache",
                                                                   "X-Accel-Buffering": "no"})
        response.call_on_close(service.streams.release)  # the server closes every response it started
        return response

    @bp.get("/api/runs/<run_id>/graph.svg")
    def graph(run_id: str):  # noqa: ANN202
        found = _run(service, run_id)
        allowed("read", workspace_id=found["workspace_id"], run_id=found["run_id"])
        plan = _run_plan(service, found["run_id"])
        statuses = {s["step_id"]: s["status"] for s in found["steps"]}
        if request.args.get("format") == "mermaid":
            return Response(render.to_mermaid(plan, statuses), mimetype="text/plain")
        return Response(render.to_svg(plan, statuses), mimetype="image/svg+xml")

    # -- pages ------------------------------------------------------------------------------

    @bp.get("/")
    def index_page():  # noqa: ANN202
        allowed("read")
        runs = _readable(service, api.list_runs(database_url=service.database_url,
                                                limit=_before_filtering(service, 100)))[:100]
        return render_template("dagrun/runs.html", runs=runs, templates=readable_templates())

    @bp.get("/runs/<run_id>")
    def run_page(run_id: str):  # noqa: ANN202
        found = _run(service, run_id)
        allowed("read", workspace_id=found["workspace_id"], run_id=found["run_id"])
        statuses = {s["step_id"]: s["status"] for s in found["steps"]}
        svg = render.to_svg(_run_plan(service, found["run_id"]), statuses) if found["steps"] else ""
        return render_template("dagrun/run.html", run=found, svg=svg)

    @bp.get("/templates/<name>")
    def template_page(name: str):  # noqa: ANN202
        allowed("read", template=name)
        document, explained = _shown_template(service, name)
        library = api.list_actions(service.actions or None, service.trusted_actions or None)
        return render_template("dagrun/template.html", name=name, document=document, explained=explained,
                               actions=sorted(library), schemas={n: _masked_schema(a.config_schema)
                                                                 for n, a in library.items()})

    @bp.get("/actions")
    def actions_page():  # noqa: ANN202
        allowed("read")
        library = api.list_actions(service.actions or None, service.trusted_actions or None)
        return render_template("dagrun/actions.html",
                               actions=sorted(library.values(), key=lambda a: (a.category, a.name)),
                               schema_json=lambda a: json.dumps(_masked_schema(a.config_schema), indent=2))

    bp.add_url_rule("/login", "login", guard.login, methods=["GET"])

    @bp.app_template_filter("dagrun_json")
    def dagrun_json(value: Any) -> str:
        return json.dumps(value, indent=2, default=str)

    @bp.context_processor
    def globals_for_pages() -> dict[str, Any]:
        from flask import url_for
        return {"dagrun_version": _version(), "csrf_header": guard.CSRF_HEADER,
                "api_root": url_for(f"{bp.name}.health")[:-len("/api/health")]}

    bp.dagrun_service = service  # type: ignore[attr-defined]
    return bp


# -- helpers ----------------------------------------------------------------------------

def _bounded_body() -> None:
    """Every body is read up to MAX_BODY_BYTES (413 beyond, with or without
    a Content-Length), unless the host application set a lower limit."""
    limit = request.max_content_length
    if limit is None or limit > MAX_BODY_BYTES:
        request.max_content_length = MAX_BODY_BYTES


MAX_ARGUMENT_CHARS = 100  # an id, a name, a filter: as long as the store's columns


def _plain_arguments() -> None:
    """Every id, name and filter in the URL is printable text of at most
    MAX_ARGUMENT_CHARS: one clear 422, never a NUL that PostgreSQL refuses
    (a 500) nor a value too long for a column (an error naming the store)."""
    for where, values in (("path", (request.view_args or {}).items()), ("query", request.args.items(multi=True))):
        for name, value in values:
            if isinstance(value, str) and (not value.isprintable() or len(value) > MAX_ARGUMENT_CHARS):
                abort(422, description=f"{name} (in the {where}) must be printable text of at most "
                                       f"{MAX_ARGUMENT_CHARS} characters")


def _json_body(optional: bool = False) -> dict[str, Any]:
    if not request.data and optional:
        return {}
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # the json module parses nesting by recursion
        raise InputError("the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InputError("the request body must be a JSON object")
    if _holds_nul(body):  # PostgreSQL takes no NUL in text: a 500 (or a 503) deep in the store otherwise
        raise InputError("the request body holds a NUL character (\\u0000): no text dagrun keeps may")
    return body


def _holds_nul(value: Any) -> bool:
    todo = [value]
    while todo:  # (no recursion: the body may nest as deep as the JSON parser allowed)
        item = todo.pop()
        if isinstance(item, str):
            if "\0" in item:
                return True
        elif isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            todo += item
    return False


def _template_document(service: Service, name: str) -> dict[str, Any]:
    """A seed or stored template by name, as a document (never a file of the
    server: a name from a URL or a body is not a path)."""
    if not _NAME.match(name):
        raise InputError(f"{name!r} is not a template name")
    from ..compile.loader import package_dir, read_document
    for doc in _stored(service):
        if doc.get("name") == name:
            return doc
    for suffix in (".yaml", ".yml", ".json"):
        path = package_dir("seeds") / "templates" / f"{name}{suffix}"
        if path.is_file():
            return read_document(path)
    raise InputError(f"template {name!r} not found (GET /api/templates lists them)")


def _stored(service: Service) -> list[dict[str, Any]]:
    if not api._has_store(service.database_url):  # noqa: SLF001 - the store read, without creating it
        return []
    from ..store.seeding import stored_templates
    return stored_templates(service.database_url)


def _visible(service: Service) -> list[dict[str, Any]]:
    """The stored templates this caller may read: the only ones its
    templates may extend (by name, ``{name, version}`` or
    ``base_template_id``), and the only names a "did you mean" suggests.
    A template shows and runs its bases' steps and defaults."""
    return [d for d in _stored(service) if _may_read(service, str(d.get("name")))]


def _may_read(service: Service, template: str) -> bool:
    return service.authorize is None or bool(service.authorize("read", template=template))


def _template_for_run(service: Service, template: Any) -> Any:
    if isinstance(template, str):
        return _template_document(service, template)
    if isinstance(template, Mapping):
        if not service.allow_inline_templates:
            abort(403, description="this service runs stored templates only: send the template's name "
                                   "(PUT /api/templates/<name> stores one; allow_inline_templates=True allows documents)")
        return dict(template)  # the caller's own document: its author is the caller
    raise InputError("template must be a template name or a template document (an object)")


def _latest_run(service: Service, ws_id: str) -> str:
    runs = api.list_runs(database_url=service.database_url, workspace=ws_id, limit=1)
    if not runs:
        abort(404, description=f"workspace {ws_id} has no runs")
    return runs[0]["run_id"]


def _run(service: Service, run_id: Any, *, steps: bool = True, output: bool = False) -> dict[str, Any]:
    if not isinstance(run_id, str) or not run_id.isprintable():
        raise InputError("run_id must be a run's id (text)")
    from ..store.history import run_exists
    if not api._has_store(service.database_url) or not run_exists(service.database_url, run_id):  # noqa: SLF001
        abort(404, description=f"no run {run_id!r} in the store")  # whole ids only: no prefix search here
    if steps:
        return api.get_run(run_id, database_url=service.database_url, output=output,
                           actions=service.actions or None, trusted_actions=service.trusted_actions or None)
    from ..store.history import show_run
    return show_run(service.database_url, run_id)


def _run_plan(service: Service, run_id: str) -> Any:
    from ..store.history import run_snapshot
    return api.plan(run_snapshot(service.database_url, run_id), actions=service.actions or None,
                    trusted_actions=service.trusted_actions or None)


def _resume(service: Service, run_id: str, body: Mapping[str, Any]) -> Any:
    start_from = body.get("resume_from_action_id")
    if body.get("retry_failed_action") is False and start_from is None:
        raise InputError("a resume runs the failed steps again: retry_failed_action false needs "
                         "resume_from_action_id (the step to start from)")
    from_step = None
    if start_from is not None:
        steps = api.get_run(run_id, database_url=service.database_url, actions=service.actions or None,
                            trusted_actions=service.trusted_actions or None)["steps"]
        match = [s["step_id"] for s in steps if s["step_id"] == str(start_from)
                 or str(s["sequence_order"]) == str(start_from)]
        if not match:
            raise InputError(f"the run has no step {start_from!r} (steps: {', '.join(s['step_id'] for s in steps)})")
        from_step = match[0]
    # What was not stored with the run (the variables that filled secret fields, a secret written in
    # the template as step.field) is given again, as the answer to a first resume names it.
    given: dict[str, Any] = {}
    for key in ("variables", "secrets"):
        if not isinstance(body.get(key) or {}, Mapping):
            raise InputError(f"{key} must be an object")
        given.update(body.get(key) or {})
    written = sorted(str(n) for n in given if "." in str(n) and not str(n).startswith("workspace."))
    if written and not service.allow_inline_templates:
        # The template's author's secret: whoever sends requests did not write it, and a value taken
        # from them would be checked against it (an oracle for guesses). It comes from the stored template.
        raise InputError(f"{', '.join(written)}: written in the template, so not given by a request: this "
                         "service takes it from the template stored under the run's name (if that no longer "
                         "holds the value the run started with, run the template again)")
    options = service.run_options()
    options.pop("home_roots")
    handle = api.start_resume(run_id, from_step=from_step, home_roots=service.home_roots, secrets=given or None,
                              **options)
    return jsonify(run_id=handle.run_id), 202


def _event_stream(url: str, run_id: str) -> Iterator[str]:
    """Server-Sent Events: one ``attempt`` event per attempt change, a
    ``run`` event when the run ends; comments keep the connection open. A
    stream ends after STREAM_SECONDS (the browser reconnects by itself), so
    idle clients cannot keep server threads forever."""
    from ..store.history import watch
    deadline = time.monotonic() + STREAM_SECONDS
    yield "retry: 2000\n\n"
    for event in watch(url, run_id, poll_seconds=0.5, heartbeat=KEEPALIVE_SECONDS):
        if event["event"] == "heartbeat":
            if time.monotonic() > deadline:
                return
            yield ": keep-alive\n\n"
            continue
        yield f"event: {event['event']}\ndata: {json.dumps(event, default=str)}\n\n"


def _is_api_request(blueprint: str) -> bool:
    from flask import url_for
    try:
        api_root = url_for(f"{blueprint}.health")[:-len("health")]
    except Exception:  # noqa: BLE001 - outside a request of this app
        return False
    return request.path.startswith(api_root[len(request.script_root):])


def _limit() -> int:
    raw = request.args.get("limit", "50")
    if not (raw.isascii() and raw.isdigit()):
        raise InputError(f"limit must be a whole number from 1 to 500, not {raw!r}")
    return max(1, min(int(raw), 500))


def _before_filtering(service: Service, limit: int) -> int:
    """How many runs to read so that ``limit`` of them are likely the
    caller's after :func:`_readable` (other tenants' newer runs would
    otherwise hide its own)."""
    return limit if service.authorize is None else max(limit, 5000)


def _readable(service: Service, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs this caller may read (``authorize`` decides per workspace)."""
    if service.authorize is None:
        return runs
    return [r for r in runs if service.authorize("read", workspace_id=r["workspace_id"], run_id=r["run_id"])]


def _shipped(name: str) -> bool:
    from ..compile.loader import package_dir
    return any((package_dir("seeds") / "templates" / f"{name}{suffix}").is_file()
               for suffix in (".yaml", ".yml", ".json"))


def _step_secrets(library: Mapping[str, Any], entry: Any) -> frozenset[str] | None:
    """The secret config fields of a template entry's action (None: its
    action is not in the library, so every value is treated as secret)."""
    from ..compile.configs import secret_fields
    action = library.get(entry.get("action_name")) if isinstance(entry, Mapping) else None
    return secret_fields(action.config_schema) if action is not None else None


def _masked_schema(schema: Any) -> Any:
    """An action's config schema as shown: the example values of an
    x-secret property (its default, const, enum, examples) masked: an
    operator's action may carry a token as its default."""
    from ..spec import MASK
    schema = _plain(schema)

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        shown = {k: walk(v) for k, v in node.items()}
        if node.get("x-secret") is True or node.get("writeOnly") is True:  # (as configs.secret_fields reads them)
            for key in ("default", "const"):
                if shown.get(key) not in (None, ""):
                    shown[key] = MASK
            for key in ("enum", "examples"):
                if isinstance(shown.get(key), list):
                    shown[key] = [MASK if v not in (None, "") else v for v in shown[key]]
        return shown
    return walk(schema)


def _masked_defaults(action: Any) -> dict[str, Any]:
    """An action's default config, its x-secret values masked (an operator's
    action may carry a token as its default)."""
    from ..compile.configs import secret_fields
    from ..spec import MASK
    secret = secret_fields(action.config_schema)
    return {k: MASK if k in secret and v not in (None, "") else v for k, v in _plain(action.default_config).items()}


def _identity(entry: Mapping[str, Any]) -> Any:
    key = ("id", entry["id"]) if entry.get("id") is not None else ("order", entry.get("sequence_order"))
    return key if isinstance(key[1], (str, int, float, type(None))) else ("odd", repr(key[1]))  # (hashable)


def _masked_document(service: Service, document: Mapping[str, Any]) -> tuple[dict[str, Any], set[str], Any]:
    """The document with its steps' secret config values masked, decided by
    each step's action alone (a template that does not compile is masked
    too; a step whose action is unknown has every value masked), and its
    variable defaults as :func:`_masked_vars` shows them; the secret values
    found; and the merged defaults (a base's too) as shown."""
    from ..spec import MASK
    library = api.list_actions(service.actions or None, service.trusted_actions or None)
    secrets: set[str] = set()
    actions = []
    for entry in document.get("actions") or []:
        config = entry.get("action_config") if isinstance(entry, Mapping) else None
        if not isinstance(config, Mapping):
            actions.append(entry)
            continue
        fields = _step_secrets(library, entry)
        shown = {}
        for key, value in config.items():
            if value not in (None, "") and (fields is None or key in fields):
                if isinstance(value, str):
                    secrets.add(value)
                shown[key] = MASK
            else:
                shown[key] = value
        actions.append({**entry, "action_config": shown})
    masked = {**document, "actions": actions}
    shown_vars, hidden, merged = _masked_vars(service, document)
    if "vars" in document:
        masked["vars"] = shown_vars
    return masked, secrets | hidden, merged


def _masked_vars(service: Service, document: Mapping[str, Any]) -> tuple[Any, set[str], dict[str, Any]]:
    """The document's variable defaults as shown: what its secret fields
    read of them masked by the rule a run's stored template follows (a key
    of a mapping, a list read by index or a computed key: all of it), every
    default when the template does not compile (what its secret fields read
    cannot be told); the values hidden, a base template's included; and the
    merged defaults as shown (what the explanation shows)."""
    from ..spec import MASK
    defaults = document.get("vars")
    try:
        plan = api.compile_template(document, actions=service.actions or None,
                                    trusted_actions=service.trusted_actions or None, templates=_visible(service))
    except DagrunError:
        plan = None
    hidden: set[str] = set()
    merged_shown: dict[str, Any] = {}
    if plan is not None:
        merged = _plain(plan.snapshot.get("vars") or {})
        merged_shown = api.masked_defaults(plan, dict(merged))
        hidden |= _hidden_values(merged, merged_shown)
    if not isinstance(defaults, Mapping):
        return defaults, hidden, merged_shown
    shown = api.masked_defaults(plan, dict(defaults)) if plan is not None else \
        {k: MASK if v not in (None, "") else v for k, v in defaults.items()}
    return shown, hidden | _hidden_values(defaults, shown), merged_shown or shown


def _hidden_values(original: Any, shown: Any) -> set[str]:
    """The values of ``original`` that ``shown`` masks (every leaf of what
    it masks whole), as text for the redactor."""
    from ..spec import MASK
    if shown == MASK and original != MASK:
        if isinstance(original, Mapping):
            return {t for v in original.values() for t in _hidden_values(v, MASK)}
        if isinstance(original, (list, tuple)):
            return {t for v in original for t in _hidden_values(v, MASK)}
        text = "" if original is None or isinstance(original, bool) else str(original)
        return {text} if text else set()
    if isinstance(original, Mapping) and isinstance(shown, Mapping):
        return {t for k, v in original.items() for t in _hidden_values(v, shown.get(k))}
    return set()


def _shown_template(service: Service, name: str) -> tuple[dict[str, Any], Any]:
    """A stored template as the editor and the API show it: the document
    with secrets masked, and its explanation (of the real document) with
    every secret value masked wherever it shows."""
    from ..run.redact import Redactor
    document = _template_document(service, name)
    masked, secrets, merged = _masked_document(service, document)
    redactor = Redactor(secrets)
    try:
        explained = api.explain(document, actions=service.actions or None, templates=_visible(service),
                                trusted_actions=service.trusted_actions or None)
    except TemplateError as exc:  # its problems may quote a value
        from ..errors import Problem
        raise TemplateError([Problem(p.source, redactor.text(p.message) or "", p.step, p.field)
                             for p in exc.problems]) from None
    explained = redactor.value(explained)
    # By place, not only by text: the redactor leaves values too short to mask on their own (Zq ~ x!).
    for key, entry in (explained.get("vars") or {}).items():
        if isinstance(entry, dict) and _mask_paths(merged.get(key)):
            entry["value"] = merged[key]
    return masked, explained


def _unmasked_document(service: Service, name: str, document: dict[str, Any]) -> dict[str, Any]:
    """A saved edit keeps a stored secret the editor only saw masked, in the
    same step (same id or order, same action) and the same secret field;
    the mask anywhere else is refused (it would move a secret where it
    shows)."""
    from ..spec import MASK
    if not isinstance(document.get("actions") or [], list):
        return document  # no steps to give masks back to: the compiler says what is wrong with it
    try:
        previous = _template_document(service, name)
    except DagrunError:
        previous = {}
    before = {_identity(a): a for a in previous.get("actions") or [] if isinstance(a, Mapping)}
    library = api.list_actions(service.actions or None, service.trusted_actions or None)
    actions = []
    for entry in document.get("actions") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("action_config"), Mapping):
            old = before.get(_identity(entry))
            same = old is not None and old.get("action_name") == entry.get("action_name")
            fields = _step_secrets(library, entry) if same else frozenset()
            config = {}
            for key, value in entry["action_config"].items():
                if value == MASK:
                    stored = (old.get("action_config") or {}) if same else {}
                    if fields is not None and key not in fields or key not in stored:
                        raise InputError(f"step {entry.get('id') or entry.get('sequence_order')}: "
                                         f"{key} holds the mask {MASK}: a masked secret stays only in the step "
                                         "and field it came from (type the value to change it)")
                    value = stored[key]
                config[key] = value
            entry = {**entry, "action_config": config}
        actions.append(entry)
    restored = {**document, "actions": actions}
    defaults = document.get("vars")
    if isinstance(defaults, Mapping) and _mask_paths(defaults):  # a secret default shown masked
        stored = previous.get("vars") if isinstance(previous.get("vars"), Mapping) else {}
        restored["vars"] = _restored(defaults, stored, "vars")
        # The mask stays only while a secret field of the new document reads what it hides.
        shown, _, _ = _masked_vars(service, restored)
        for path in _mask_paths(defaults):
            if _at(shown, path) != MASK:
                raise InputError(f"vars.{'.'.join(map(str, path))} holds the mask {MASK}: a masked default stays "
                                 "only while a secret field reads it (type the value)")
    return restored


def _mask_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    from ..spec import MASK
    if value == MASK:
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _mask_paths(v, (*path, k))]
    return []


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _restored(value: Any, stored: Any, where: str) -> Any:
    """``value`` with each mask it holds given back the stored value at the
    same place (refused where nothing is stored there)."""
    from ..spec import MASK
    if value == MASK:
        if stored is None or stored == MASK:
            raise InputError(f"{where} holds the mask {MASK}: a masked default stays only where it was stored "
                             "(type the value)")
        return stored
    if isinstance(value, Mapping):
        return {k: _restored(v, stored.get(k) if isinstance(stored, Mapping) else None, f"{where}.{k}")
                for k, v in value.items()}
    return value


def _masked_config(step: Any) -> dict[str, Any]:
    from ..store.estimates import masked_config
    return _plain(masked_config(step))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _version() -> str:
    from ..util import package_version
    return package_version()
