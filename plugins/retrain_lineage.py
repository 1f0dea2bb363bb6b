"""OpenLineage for the pipeline: what each task read and wrote, through the OpenLineage provider
(apache-airflow-providers-openlineage). docs/lineage.md says how to turn it on and what each task reports.

The provider's listener emits a START and a COMPLETE (or FAIL) event for every task; this module fills in their
inputs and outputs, so a lineage backend (Marquez, DataHub, ...) can walk from a landed file to the champion:

- a stage task (``KubernetesStageOperator``, ``LocalStageOperator``: the classes take ``StageLineage`` in) answers
  the provider's ``get_openlineage_facets_on_complete`` from its command line (the URIs it was told to read:
  ``--snapshot``, ``--teacher``, ...) and its typed result (the URIs it says it read and wrote): ``stage_datasets``;
- a light Python task (prepare_run, decide, gate, notify) calls ``report`` with the URIs it read and wrote, which
  gives the running task instance the same provider hook (``@task`` operators have none of their own).

Off and silent when OpenLineage is not configured: the provider then registers no listener, so nothing calls the
stage hooks, and ``report`` returns after one cached check. Nothing here runs at DAG parse time, and nothing is
imported from the provider or from ``tasks`` at module level: the plugin manager may import this module before any
DAG file has run.

Dataset names follow OpenLineage's naming spec (https://openlineage.io/docs/spec/naming), the same names the
Amazon and common-io providers give an Asset with that URI, so our datasets join with Assets and other tools':
``s3://bucket/key`` is namespace ``s3://bucket``, name ``key``; ``file:///abs/path`` (or a bare path) is namespace
``file``, name ``/abs/path``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Stage flags whose value is a URI the stage reads ("none": no champion yet).
INPUT_FLAGS = ("--snapshot", "--teacher", "--student", "--champion", "--golden", "--evaluation")
NONE = "none"


@functools.cache
def enabled() -> bool:
    """True when the OpenLineage provider is installed and configured (a transport, a config file or connection,
    OPENLINEAGE_URL, ...) and not ``[openlineage] disabled``: the provider's own test. Cached per process, like
    the provider's."""
    try:
        from airflow.providers.openlineage import conf
    except ImportError:  # the provider is not installed: lineage is off
        return False
    return not conf.is_disabled()


# ---------------------------------------------------------------- naming


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a storage URI, per OpenLineage's naming spec (s3 and local files; see the module doc).

    Written here rather than through the providers' Asset converters, which need the providers manager loaded
    (seconds); tests/test_lineage.py checks both give the same names."""
    uri = uri.rstrip("/") if uri not in ("/", "file:///") else uri
    if uri.startswith("s3://"):
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return f"s3://{bucket}", key or "/"
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path.startswith("/"):  # file://host/path
            host, _, rest = path.partition("/")
            return f"file://{host}", "/" + rest
        return "file", path
    if "://" in uri:
        scheme, _, rest = uri.partition("://")
        host, _, path = rest.partition("/")
        return f"{scheme}://{host}", path or "/"
    from pathlib import Path

    return "file", str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


# ---------------------------------------------------------------- what a stage read and wrote


def argument(arguments: Sequence[Any], flag: str) -> str | None:
    """The rendered value of ``flag`` in a stage's argv, or None (absent, or the "none" sentinel)."""
    args = [str(a) for a in arguments]
    if flag not in args[:-1]:
        return None
    value = args[args.index(flag) + 1]
    return None if not value or value.lower() in (NONE, "null") else value


def _uris(values: Iterable[Any]) -> list[str]:
    """Non-empty URIs, first occurrence kept, "none" dropped."""
    out: list[str] = []
    for value in values:
        if isinstance(value, str) and value and value.lower() != NONE and value not in out:
            out.append(value)
    return out


def stage_datasets(stage: str, arguments: Sequence[Any], result: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of a stage run, as URIs: from its argv and its typed result (``tasks.contracts``).

    ``result`` is None when the stage failed: then only what it was told to read is reported."""
    r = dict(result or {})
    given = {flag: argument(arguments, flag) for flag in INPUT_FLAGS}
    run = argument(arguments, "--run")
    inputs: list[Any] = []
    outputs: list[Any] = []
    if stage == "ingest":
        landing = r.get("landing_uri")
        inputs += [join(landing, key) for key in r.get("files_ingested") or []] if landing else []
        if r.get("changed"):
            outputs += [r.get("snapshot_uri"), r.get("quarantine_uri")]
        else:  # nothing new: it read the latest snapshot and wrote nothing
            inputs.append(r.get("snapshot_uri"))
    elif stage == "drift":
        inputs += [given["--snapshot"], r.get("reference_snapshot_uri"), given["--champion"]]
        outputs.append(r.get("report_uri"))
    elif stage == "finetune":
        inputs.append(given["--snapshot"])
        if str(r.get("init_from") or "").startswith("champion"):  # warm start from the champion's teacher
            inputs.append(given["--champion"])
        outputs.append(r.get("model_uri"))
    elif stage == "distill":
        inputs += [given["--snapshot"], r.get("teacher_uri") or given["--teacher"]]
        outputs += [r.get("model_uri"), *(r.get("exports") or {}).values()]
    elif stage == "evaluate":
        inputs += [given["--teacher"], given["--student"], given["--champion"], given["--golden"]]
        # result.json is what the gate and publish read (--evaluation); the report is for people.
        outputs += [join(run, "evaluate", "result.json") if run and result else None, r.get("report_uri")]
    elif stage == "publish":
        inputs += [given["--snapshot"], given["--teacher"], given["--student"], given["--evaluation"]]
        outputs.append(r.get("version_uri"))
        if r.get("promoted") and r.get("champion_uri"):
            outputs.append(r["champion_uri"])
    else:  # a stage added later: at least what its command names
        inputs += list(given.values())
    return _uris(inputs), _uris(outputs)


def datasets(uris: Iterable[str]) -> list[Any]:
    from openlineage.client.event_v2 import Dataset

    return [Dataset(namespace=ns, name=name) for ns, name in (dataset_name(u) for u in uris)]


def operator_lineage(stage: str, arguments: Sequence[Any], result: Mapping[str, Any] | None) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs, outputs = stage_datasets(stage, arguments, result)
    return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))


class StageLineage:
    """Mixed into the stage operators: the provider calls these after the task ran (only when OpenLineage is on).

    ``execute`` hands its result to ``keep_result``; the listener runs in the same task process afterwards. The
    result is kept with its run id: under ``dag.test()`` one process runs the DAG again, and a stage skipped in a
    later run must not report the earlier run's datasets."""

    stage: str
    arguments: list[Any]
    _stage_result: tuple[str | None, Mapping[str, Any] | None] = (None, None)

    def keep_result(self, result: Any) -> Any:
        self._stage_result = (_current_run_id(), result if isinstance(result, Mapping) else None)
        return result

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        run_id, result = self._stage_result
        if result is None or (run_id and getattr(task_instance, "run_id", run_id) != run_id):
            from airflow.providers.openlineage.extractors import OperatorLineage

            return OperatorLineage()  # the stage did not run in this task instance (skipped): nothing to report
        return operator_lineage(self.stage, self.arguments, result)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return operator_lineage(self.stage, self.arguments, None)


def _current_run_id() -> str | None:
    try:
        from airflow.sdk import get_current_context

        return get_current_context()["ti"].run_id
    except Exception:  # outside a running task (a test calling execute directly)
        return None


# ---------------------------------------------------------------- the light Python tasks


def report(inputs: Iterable[str | None] = (), outputs: Iterable[str | None] = ()) -> None:
    """What the running Python task read and wrote (call it once, from the task): answers the provider's
    ``get_openlineage_facets_on_complete`` (and ``..._on_failure``) for this task instance, which the provider asks
    for when the task ends, in the same process. A no-op when OpenLineage is off; never fails the task.

    Not through Airflow's hook-lineage collector: it is one per process and never emptied, so under ``dag.test()``
    (``make run``), where every task runs in one process, each task would also report the datasets of the tasks
    before it."""
    if not enabled():
        return
    try:
        from airflow.sdk import get_current_context

        ti = get_current_context()["ti"]
        lineage = (ti.run_id, _uris(inputs), _uris(outputs))

        def facets(task_instance: Any) -> Any:
            from airflow.providers.openlineage.extractors import OperatorLineage

            run_id, ins, outs = lineage
            if getattr(task_instance, "run_id", run_id) != run_id:  # an earlier run's answer, in the same process
                return OperatorLineage()
            return OperatorLineage(inputs=datasets(ins), outputs=datasets(outs))

        ti.task.get_openlineage_facets_on_complete = facets
        ti.task.get_openlineage_facets_on_failure = facets
    except Exception:  # lineage must never fail a run
        log.warning("OpenLineage: could not report a task's datasets", exc_info=True)
