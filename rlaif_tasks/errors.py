"""Error types that say what a retry can do.

`RlaifError` is a problem the user must fix (config, data, environment): retrying cannot help, so
the DAG fails it at once. `TransientError` is one that can pass by itself (a connection refused, a
timeout, HTTP 5xx or 429): retried with back-off, and never read as "this does not exist".
"""

from __future__ import annotations

import re

_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
_ABSENT_MESSAGE = re.compile(r"\bnot found\b|does not exist|no such", re.IGNORECASE)


class RlaifError(Exception):
    """A problem in the user's config, data or environment, with the fix spelled out."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class TransientError(Exception):
    """A failure that can pass by itself; Airflow's retries (and the callers' back-off) apply."""


def mlflow_not_found(exc: BaseException) -> bool:
    """Whether an MlflowException says the thing asked for does not exist (and nothing else).

    A missing alias comes back as INVALID_PARAMETER_VALUE "Registered model alias X not found",
    so that code counts only with its message; a connection error or a 5xx that outlived MLflow's
    own HTTP retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES) is never absence.
    """
    code = getattr(exc, "error_code", "")
    message = str(getattr(exc, "message", exc))
    return code in _NOT_FOUND_CODES or (code == "INVALID_PARAMETER_VALUE" and bool(_ABSENT_MESSAGE.search(message)))
