"""The "Model registry" page in the Airflow UI: an Airflow 3 plugin with a FastAPI app and an external view.

* ``fastapi_apps``: the app (plugins/registry_ui_app.py) is mounted by the api-server at ``/retrain-registry``.
  It uses Airflow's own auth: every route needs a logged-in Airflow user (the UI's ``_token`` cookie, or a
  bearer token from ``POST /auth/token``), a pipeline is shown only to users who may read its retrain DAG,
  and rollback only to users who may trigger it.
* ``external_views``: a "Model registry" entry in the UI's navigation; the UI shows the app's page in a frame
  at ``/plugin/model-registry``.

This module is imported by every Airflow component that loads plugins (the dag-processor and scheduler too,
for serialization), so it stays cheap: the app and its imports (FastAPI, Jinja, Airflow's API modules) are
built on the first request to it, in the api-server only; registry_ui_app.py is cheap to import for the same
reason.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/retrain-registry"   # where the api-server mounts the app
UI_ROUTE = "model-registry"        # the page inside the Airflow UI: /plugin/model-registry


def pipeline_url(base_url: str, pipeline: str) -> str:
    """The registry page of one pipeline (alerts link to it)."""
    return f"{base_url.rstrip('/')}{URL_PREFIX}/pipelines/{quote(pipeline, safe='')}"


class LazyApp:
    """An ASGI app that builds the FastAPI app on its first request (keeps this module's import cheap)."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._app is None:
            from registry_ui_app import create_app

            self._app = create_app()
        await self._app(scope, receive, send)


class RetrainRegistryPlugin(AirflowPlugin):
    name = "retrain_registry"
    fastapi_apps = [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "Model registry"}]
    external_views = [{
        "name": "Model registry",
        "href": f"{URL_PREFIX}/",
        "destination": "nav",
        "url_route": UI_ROUTE,
        "icon": f"{URL_PREFIX}/static/icon.svg",
    }]
