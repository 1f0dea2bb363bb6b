"""The model registry app behind the "Model registry" page (mounted at /retrain-registry by plugins/registry_ui.py).

Pages (HTML) and the same data as JSON::

    GET  /                                   pipelines with their champion (HTML)
    GET  /pipelines/{pipeline}[?version=V]   champion, versions with metrics and 95% CIs, gate results, drift
                                             plots of the version's run, the audit trail, rollback (HTML)
    GET  /api/pipelines                      the index as JSON
    GET  /api/pipelines/{pipeline}           the pipeline page's data as JSON
    GET  /pipelines/{pipeline}/runs/{run_key}/drift/{plot}.png          a drift plot, read from storage
    GET  /pipelines/{pipeline}/versions/{version}/reports/{plot}.png    a confusion matrix, read from storage
    POST /api/pipelines/{pipeline}/rollback  {"to": V|null, "expected_champion": V}   registry.rollback

Auth is Airflow's: ``GetUserDep`` (the UI's ``_token`` cookie or a bearer token) on every route, then the
auth manager decides per pipeline: reading needs GET on the DAG ``retrain_<pipeline>``, rollback needs what
triggering it needs (POST on its DAG runs). An HTML request without a login is redirected to the login page.

Data comes from the registry library (tasks/decide/registry.py: read_champion, list_versions, read_manifest,
read_audit, rollback) and the storage layout (tasks/spec.py ``layout``): versions under models/<pipeline>/,
the runs that produced them (drift report and plots) under runs/<pipeline>/.
"""

# No ``from __future__ import annotations``: the routes are closures in create_app()'s helpers, and FastAPI
# reads their annotations (GetUserDep, ...) as objects. Importing this module stays cheap (the plugins manager
# imports every file under plugins/, in every Airflow component): FastAPI, Jinja and Airflow's API modules are
# imported by create_app(), on the first request, in the api-server only.
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel

from tasks import storage
from tasks.decide import registry
from tasks.spec import PipelineSpec, SpecError, load_folder

log = logging.getLogger("registry_ui")

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = Path(__file__).resolve().parent / "registry_ui_templates"
MAX_VERSIONS = 25   # newest first; each costs a few small reads
MAX_AUDIT = 50
CONFIDENCE = 0.95
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")   # a version id, run key or plot name: one path segment


class UIError(Exception):
    """An answer other than 200: the app turns it into JSON, or an error page for a browser."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail

ICON = ('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="currentColor" '
        'stroke-width="2"><path d="M12 2 3 7l9 5 9-5-9-5z"/><path d="m3 12 9 5 9-5"/><path d="m3 17 9 5 9-5"/></svg>')


# ---------------------------------------------------------------- pipelines and permissions


def pipelines_dir() -> Path:
    """The same folder the DAG file reads: $RETRAIN_PIPELINES_DIR, else include/pipelines."""
    return Path(os.environ.get("RETRAIN_PIPELINES_DIR", ROOT / "include" / "pipelines"))


def load_pipelines() -> tuple[dict[str, PipelineSpec], list[str]]:
    """The valid specs by name, and the file names of the invalid ones (checked alone and together, as the DAG
    files do: one broken file hides only its own pipeline). Read on every request: a spec edited on disk shows
    without restarting the api-server."""
    good, errors = load_folder(pipelines_dir())
    return {spec.name: spec for _path, spec in good}, sorted(path.name for path in errors)


def dag_id(pipeline: str) -> str:
    return f"retrain_{pipeline}"


def may(user: Any, pipeline: str, method: str, entity: Any = None) -> bool:
    """The auth manager's verdict on the pipeline's retrain DAG (GET = read it; POST on RUN = trigger it)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id(pipeline), team_name=DagModel.get_team_name(dag_id(pipeline)))
    return get_auth_manager().is_authorized_dag(method=method, access_entity=entity, details=details, user=user)


def may_rollback(user: Any, pipeline: str) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    return may(user, pipeline, "POST", DagAccessEntity.RUN)


def readable_spec(user: Any, pipeline: str) -> PipelineSpec:
    """The pipeline's spec, or 404 (unknown, or not readable by this user: no difference is shown)."""
    spec = load_pipelines()[0].get(pipeline)
    if spec is None or not may(user, pipeline, "GET"):
        raise UIError(404, f"no pipeline {pipeline!r}")
    with_storage_credentials(spec)
    return spec


def with_storage_credentials(spec: PipelineSpec) -> None:
    """S3 credentials from the spec's Airflow connection, as the DAG's own Airflow-side tasks get them."""
    from stage_factory import apply_storage_env

    apply_storage_env(spec)


def segment(value: str, what: str) -> str:
    if not _SAFE.match(value) or ".." in value:
        raise UIError(400, f"invalid {what} {value!r}")
    return value


# ---------------------------------------------------------------- the data behind the pages


def accuracy_ci(accuracy: float | None, n: int | None) -> list[float] | None:
    """Wilson score interval of an accuracy measured on n examples (scipy's binomial test)."""
    if accuracy is None or not n:
        return None
    from scipy.stats import binomtest

    ci = binomtest(int(round(accuracy * n)), int(n)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def _read_json(uri: str) -> dict[str, Any] | None:
    try:
        return storage.read_json(uri)
    except storage.NotFound:
        return None


def _golden_n(metrics: dict[str, Any] | None, model: str) -> int | None:
    entry = ((metrics or {}).get("models") or {}).get(model) or {}
    return (entry.get("golden") or {}).get("n")


def version_view(spec: PipelineSpec, version: str, champion: str | None) -> dict[str, Any]:
    """One version: its manifest's headline, metrics with CIs, and its gate results (from the gate report)."""
    manifest = registry.read_manifest(spec, version)
    vuri = registry.version_uri(spec, version)
    evaluation = manifest.evaluation
    report = _read_json(storage.join(vuri, "reports", "gate_report.json")) or {}
    full_metrics = _read_json(storage.join(vuri, "reports", "metrics.json"))
    summary = evaluation.get("metrics") or {}
    metrics = {}
    for model in ("teacher", "student"):
        m = summary.get(model) or {}
        acc = m.get("golden_accuracy")
        metrics[model] = {"golden_accuracy": acc, "golden_macro_f1": m.get("golden_macro_f1"),
                          "golden_accuracy_ci": accuracy_ci(acc, _golden_n(full_metrics, model)),
                          "n": _golden_n(full_metrics, model)}
    gates = []
    for g in report.get("gates") or evaluation.get("gates") or []:
        details = g.get("details") or {}
        ci = [details["lower"], details["upper"]] if "lower" in details and "upper" in details else None
        gates.append({"name": g.get("name"), "passed": g.get("passed"), "skipped": g.get("skipped", False),
                      "value": g.get("value"), "threshold": g.get("threshold"), "reason": g.get("reason", ""),
                      "ci": ci})
    run_uri = manifest.run_uri or ""
    run_key = run_uri.rstrip("/").rsplit("/", 1)[-1] if run_uri.startswith(spec.layout.runs.rstrip("/") + "/") else None
    plots = sorted(f"confusion_{key}" for key in report.get("confusion_matrices") or {})
    return {
        "version": version,
        "champion": version == champion,
        "created_at": manifest.created_at,
        "snapshot_id": manifest.snapshot_id,
        "parent_champion": manifest.parent_champion,
        "code_version": manifest.code_version,
        "passed": evaluation.get("passed"),
        "first_run": evaluation.get("first_run"),
        "failed_gates": evaluation.get("failed_gates") or [],
        "approval": _approval(manifest.approval),
        "metrics": metrics,
        "gates": gates,
        "run_key": run_key,
        "training": (manifest.training or {}).get("mode"),  # full or incremental (train.retrain_mode)
        "remedies": manifest.remedies or [],  # what would change the outcome (tasks/decide/remedies.py)
        "samples": night_samples(spec, run_key),
        "confusion_plots": plots,
        "uri": vuri,
    }


def night_samples(spec: PipelineSpec, run_key: str | None) -> dict[str, Any] | None:
    """The samples the version's run processed: {total, stages: {stage: samples}} from its summary (every stage),
    else from its training stages' results; None when neither is there."""
    if not run_key:
        return None
    run = spec.layout.run(run_key)
    summary = _read_json(storage.join(run, "summary.json"))
    if summary is not None:
        stages = {name: c.get("samples_processed") for name, c in ((summary.get("cost") or {}).get("stages")
                                                                    or {}).items() if c.get("samples_processed")}
        if stages:
            return {"total": sum(stages.values()), "stages": stages}
    stages = {}
    for stage in ("finetune", "distill"):
        result = _read_json(storage.join(run, stage, "result.json")) or {}
        if result.get("samples_processed"):
            stages[stage] = result["samples_processed"]
    return {"total": sum(stages.values()), "stages": stages} if stages else None


def _approval(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    """A person's answer on the version (approved, rejected, overridden), with a one-line headline."""
    from tasks.decide import approval

    if not answer or answer.get("decision") == approval.NOT_REQUIRED:
        return None
    return {"decision": answer.get("decision"), "by": approval.responder(answer), "reason": answer.get("reason"),
            "headline": approval.headline(answer)}


def drift_view(spec: PipelineSpec, run_key: str | None) -> dict[str, Any] | None:
    """The drift report of the run that produced a version: summary, drifted checks, plot names."""
    if not run_key:
        return None
    report = _read_json(storage.join(spec.layout.run(run_key), "drift", "report.json"))
    if report is None:
        return None
    checks = [{"name": name, "drifted": bool(c.get("drifted")), "statistic": c.get("statistic"),
               "threshold": c.get("threshold")}
              for name, c in sorted((report.get("checks") or {}).items()) if isinstance(c, dict)]
    return {"run_key": run_key, "drift_detected": bool(report.get("drift_detected")),
            "summary": report.get("summary", ""), "checks": checks, "plots": sorted(report.get("plots") or {}),
            "report_uri": storage.join(spec.layout.run(run_key), "drift", "report.json")}


def pipeline_view(spec: PipelineSpec, selected: str | None = None) -> dict[str, Any]:
    champion = registry.read_champion(spec)
    current = champion["version"] if champion else None
    versions = sorted(registry.list_versions(spec), reverse=True)
    shown = [version_view(spec, v, current) for v in versions[:MAX_VERSIONS]]
    selected = selected or current or (versions[0] if versions else None)
    if selected and selected not in versions:
        raise UIError(404, f"no version {selected!r} in {spec.name}")
    chosen = next((v for v in shown if v["version"] == selected), None)
    if selected and chosen is None:  # older than the table shows
        chosen = version_view(spec, selected, current)
    audit = sorted(registry.read_audit(spec), key=lambda a: str(a.get("at", "")), reverse=True)[:MAX_AUDIT]
    return {
        "pipeline": spec.name,
        "description": spec.description,
        "dag_id": dag_id(spec.name),
        "storage": spec.layout.models,
        "champion": champion,
        "versions": shown,
        "version_count": len(versions),
        "selected": chosen,
        "drift": drift_view(spec, chosen["run_key"]) if chosen else None,
        "audit": [{k: a.get(k) for k in ("at", "event", "version", "previous", "rolled_back_from", "actor",
                                         "run_uri")} for a in audit],
    }


def index_view(user: Any) -> dict[str, Any]:
    specs, invalid = load_pipelines()
    rows = []
    for name, spec in sorted(specs.items()):
        if not may(user, name, "GET"):
            continue
        with_storage_credentials(spec)
        try:
            champion = registry.read_champion(spec)
            count, error = len(registry.list_versions(spec)), None
        except Exception as exc:  # one unreachable bucket must not hide the other pipelines; shown on the row
            champion, count, error = None, None, f"{type(exc).__name__}: {exc}"
        rows.append({"pipeline": name, "description": spec.description, "champion": champion, "versions": count,
                     "error": error})
    # Only the file names: the error text can name paths and values of pipelines this user may not read.
    error = (f"{', '.join(invalid)}: invalid, so not listed (`python -m tasks validate-spec` or the DAG list's "
             "import errors say why)") if invalid else None
    return {"pipelines": rows, "error": error}


# ---------------------------------------------------------------- rollback


class RollbackBody(BaseModel):
    to: Optional[str] = None            # None = the champion's previous version
    expected_champion: str              # what the user saw: refused (409) if the champion moved since


def rollback(spec: PipelineSpec, body: RollbackBody, actor: str) -> dict[str, Any]:
    champion = registry.read_champion(spec)
    current = champion["version"] if champion else None
    if current != body.expected_champion:
        raise UIError(409, f"the champion is {current or 'none'} now, not {body.expected_champion}; "
                                 f"reload the page")
    if body.to is not None:
        segment(body.to, "version")
    try:
        return registry.rollback(spec, body.to, actor=actor)
    except registry.RegistryError as exc:
        raise UIError(409, str(exc)) from None


def announce_champion(spec: PipelineSpec, pointer: dict[str, Any], actor: str) -> int | None:
    """The champion Asset event of a rollback made here (deploy DAGs schedule on it): Airflow's own asset manager,
    in the api-server's process and database session, as ``POST /api/v2/assets/events`` does it (no token, no
    HTTP round trip). The rollback is done and audited before; a failure here is logged, never undoes it."""
    from sqlalchemy import select

    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from tasks.decide import champion_events

    name = champion_events.asset_name(spec.name)
    try:
        with create_session() as session:
            model = session.scalar(select(AssetModel).where(AssetModel.name == name).order_by(AssetModel.id.desc())
                                   .limit(1))
            if model is None:
                log.warning("registry ui: no Asset %s in Airflow (retrain DAG not parsed?); no event sent", name)
                return None
            event = asset_manager.register_asset_change(
                asset=model, extra=champion_events.extra_for(spec, pointer, "rollback", actor), source_is_api=True,
                session=session)
            return event.id if event is not None else None
    except Exception:  # the pointer moved and is audited; the event is best effort, and said so in the log
        log.exception("registry ui: the champion Asset event of %s's rollback was not sent", spec.name)
        return None


# ---------------------------------------------------------------- the app


def _templates():
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]))
    env.filters["num"] = lambda x, nd=4: "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))
    env.filters["when"] = lambda x: "" if not x else str(x).replace("T", " ")[:19]
    return env


def create_app():
    """The FastAPI app; its imports are here so that importing this module costs nothing (see the top)."""
    from fastapi import FastAPI

    app = FastAPI(title="Model registry", docs_url=None, redoc_url=None, openapi_url=None)
    page = _page_renderer(_templates())
    _add_error_handlers(app, page)
    _add_pages(app, page)
    _add_api(app)
    _add_plots(app)
    return app


def _page_renderer(templates):
    """``page(request, template, **context)``: a template rendered as an HTML answer, links under the mount."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse

    def page(request: Request, name: str, **context: Any) -> HTMLResponse:
        prefix = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(templates.get_template(name).render(prefix=prefix, **context))

    return page


def _add_error_handlers(app, page) -> None:
    """Errors as JSON for the API, as an error page for a browser, and to the login page without a login."""
    from fastapi import HTTPException, Request
    from fastapi.responses import JSONResponse, RedirectResponse, Response

    from airflow.api_fastapi.app import get_auth_manager

    def error(request: Request, status: int, detail: Any) -> Response:
        wants_html = "text/html" in request.headers.get("accept", "") and "/api/" not in request.url.path
        if status == 401 and wants_html:  # not logged in: to Airflow's login page, and back
            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=303)
        if wants_html:
            return page(request, "error.html", status=status, detail=detail, user="")
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        return error(request, exc.status_code, exc.detail)

    @app.exception_handler(UIError)
    async def _ui_error(request: Request, exc: UIError) -> Response:
        return error(request, exc.status, exc.detail)

    @app.exception_handler(storage.StorageError)
    async def _storage_error(request: Request, exc: storage.StorageError) -> Response:
        log.exception("registry ui: storage error on %s", request.url.path)
        return error(request, 502, f"the registry's storage did not answer: {type(exc).__name__}: {exc}")

    @app.exception_handler(SpecError)
    async def _spec_error(request: Request, exc: SpecError) -> Response:
        return error(request, 500, str(exc))


def _add_pages(app, page) -> None:
    """The HTML pages: the index and a pipeline's page, and the icon the Airflow menu shows."""
    from fastapi import Request
    from fastapi.responses import HTMLResponse, Response

    from airflow.api_fastapi.core_api.security import GetUserDep

    @app.get("/static/icon.svg", include_in_schema=False)
    def icon() -> Response:
        return Response(ICON, media_type="image/svg+xml")

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, user: GetUserDep) -> HTMLResponse:
        return page(request, "index.html", user=user.get_name(), **index_view(user))

    @app.get("/pipelines/{pipeline}", response_class=HTMLResponse)
    def pipeline_page(request: Request, pipeline: str, user: GetUserDep, version: Optional[str] = None) -> HTMLResponse:
        spec = readable_spec(user, pipeline)
        view = pipeline_view(spec, segment(version, "version") if version else None)
        return page(request, "pipeline.html", user=user.get_name(), may_rollback=may_rollback(user, pipeline),
                    **view)


def _add_api(app) -> None:
    """The same data as JSON, and the rollback."""
    from fastapi import Request

    from airflow.api_fastapi.core_api.security import GetUserDep

    @app.get("/api/pipelines")
    def api_index(user: GetUserDep) -> dict[str, Any]:
        return index_view(user)

    @app.get("/api/pipelines/{pipeline}")
    def api_pipeline(pipeline: str, user: GetUserDep, version: Optional[str] = None) -> dict[str, Any]:
        spec = readable_spec(user, pipeline)
        view = pipeline_view(spec, segment(version, "version") if version else None)
        return {**view, "may_rollback": may_rollback(user, pipeline)}

    @app.post("/api/pipelines/{pipeline}/rollback")
    def api_rollback(pipeline: str, body: RollbackBody, request: Request, user: GetUserDep) -> dict[str, Any]:
        # JSON only: a cross-site form post cannot send application/json without a CORS preflight.
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise UIError(415, "send the rollback as application/json")
        spec = readable_spec(user, pipeline)
        if not may_rollback(user, pipeline):
            raise UIError(403, f"rolling back {pipeline} needs the permission to trigger {dag_id(pipeline)}")
        pointer = rollback(spec, body, actor=f"{user.get_name()} (Airflow UI)")
        log.warning("registry ui: %s rolled %s back to %s", user.get_name(), pipeline, pointer["version"])
        event_id = announce_champion(spec, pointer, actor=f"{user.get_name()} (Airflow UI)")
        return {"champion": pointer, "asset_event_id": event_id}


def _add_plots(app) -> None:
    """The plots the pipeline page shows, read from storage: a run's drift plots, a version's reports."""
    from fastapi.responses import Response

    from airflow.api_fastapi.core_api.security import GetUserDep

    def png(uri: str) -> Response:
        try:
            data = storage.read_bytes(uri)
        except storage.NotFound:
            raise UIError(404, "no such plot") from None
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/pipelines/{pipeline}/runs/{run_key}/drift/{plot}.png")
    def drift_plot(pipeline: str, run_key: str, plot: str, user: GetUserDep) -> Response:
        spec = readable_spec(user, pipeline)
        uri = storage.join(spec.layout.run(segment(run_key, "run")), "drift", f"{segment(plot, 'plot')}.png")
        return png(uri)

    @app.get("/pipelines/{pipeline}/versions/{version}/reports/{plot}.png")
    def report_plot(pipeline: str, version: str, plot: str, user: GetUserDep) -> Response:
        spec = readable_spec(user, pipeline)
        uri = storage.join(registry.version_uri(spec, segment(version, "version")), "reports",
                           f"{segment(plot, 'plot')}.png")
        return png(uri)
