"""Which failed task runs Prefect tries again: every task declared with ``retries`` names
:func:`worth_retrying` as its ``retry_condition_fn``, so the policy lives here, once."""

from __future__ import annotations

import logging
from typing import Any

from storage.store.location import location_error

log = logging.getLogger(__name__)


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """False when the failure is one another try cannot fix: a place that cannot be used
    (:func:`~storage.store.location.location_error`: an unknown protocol, no such bucket, an
    endpoint that did not answer through the client's own bounded retries, a full disk). A
    full disk retried filled 46 s with retries before the run failed anyway."""
    try:
        state.result()
    except Exception as exc:
        error = location_error(exc)
        if error is not None:
            log.debug("%s: not retried: %s", task_run.name, error)
            return False
    return True
