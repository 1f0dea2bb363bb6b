"""Error kinds, as exception types, mapped once to exit codes and to Airflow's retry behaviour.

A stage raises one of these; ``python -m tasks`` turns it into the kind's exit code; the Airflow side (the
local stage operator and the pod operator alike) reads the exit code back with :func:`kind_of_exit` and fails
the task without retries when the kind is deterministic. Only infrastructure errors, and crashes we cannot
classify (a killed process, an unexpected exception), are worth a retry.

No Airflow import here: the stages use this module in the task image, the plugins on the Airflow side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    name: str
    exit_code: int
    retry: bool  # would running the same command again plausibly succeed?
    meaning: str


DATA_REJECTED = ErrorKind("data_rejected", 3, False, "the landed data was rejected (quarantine, bad-share limit)")
SPEC_INVALID = ErrorKind("spec_invalid", 4, False, "the pipeline spec or a stage argument is invalid")
GATE_FAILED = ErrorKind("gate_failed", 5, False, "a candidate failed its gates; nothing was promoted")
INFRASTRUCTURE = ErrorKind("infrastructure", 75, True, "storage, network or the cluster failed (EX_TEMPFAIL)")
# Not raised, only read back from an exit code: a crash we cannot classify, and a process the kernel killed.
UNEXPECTED = ErrorKind("unexpected", 1, True, "an unexpected exception (a traceback is in the log)")
KILLED = ErrorKind("killed", 137, True, "the process was killed (OOM killer, eviction, SIGKILL)")

KINDS = (DATA_REJECTED, SPEC_INVALID, GATE_FAILED, INFRASTRUCTURE, UNEXPECTED, KILLED)
_BY_CODE = {kind.exit_code: kind for kind in KINDS}


class PipelineError(Exception):
    """Base of the error kinds; ``kind`` decides the exit code and whether Airflow retries."""

    kind: ErrorKind = UNEXPECTED


class DataRejected(PipelineError):
    kind = DATA_REJECTED


class SpecInvalid(PipelineError, ValueError):
    kind = SPEC_INVALID


class GateFailed(PipelineError):
    kind = GATE_FAILED


class InfrastructureError(PipelineError):
    kind = INFRASTRUCTURE


def kind_of_exception(exc: BaseException) -> ErrorKind:
    if isinstance(exc, PipelineError):
        return exc.kind
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return INFRASTRUCTURE
    return UNEXPECTED


def kind_of_exit(code: int | None) -> ErrorKind:
    """The kind behind a stage's exit code; negative codes (killed by signal N) and 128+N count as killed."""
    if code is None:
        return UNEXPECTED
    if code in _BY_CODE:
        return _BY_CODE[code]
    if code < 0 or code > 128:
        return KILLED
    return UNEXPECTED


def is_retryable(code: int | None) -> bool:
    return kind_of_exit(code).retry
