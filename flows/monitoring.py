"""What a data engineer sees of a running flow: Prefect artifacts, mirrored to the CLI.

Progress goes to a Prefect progress artifact (the UI's live view) and, as a log record on
the ``daug.progress`` logger, to whoever listens: the CLI draws a progress bar from it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import cast
from uuid import UUID

import pandas as pd
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

progress_log = logging.getLogger("daug.progress")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


class ProgressReporter:
    """Counts finished units of work into a progress artifact and the progress log."""

    def __init__(self, key: str, total: int, description: str) -> None:
        self.total = max(total, 0)
        self.done = 0
        self._published = 0.0
        self._published_at = time.monotonic()
        self.description = description
        self.artifact_id = cast(
            UUID,
            create_progress_artifact(
                progress=100.0 if self.total == 0 else 0.0, key=key, description=description
            ),
        )
        self._emit()

    def advance(self, units: int) -> None:
        """Count ``units`` more. The artifact (an API call) is updated at most once a second
        and by at least a whole percent, and always when the work is complete."""
        self.done += units
        percent = 100.0 if self.total == 0 else min(100.0, 100.0 * self.done / self.total)
        now = time.monotonic()
        due = percent - self._published >= 1.0 and now - self._published_at >= 1.0
        if due or (percent == 100.0 and self._published < 100.0):
            update_progress_artifact(self.artifact_id, percent)
            self._published, self._published_at = percent, now
        self._emit()

    def _emit(self) -> None:
        progress_log.info(
            "%s: %d/%d",
            self.description,
            self.done,
            self.total,
            extra={"daug_progress": (self.done, self.total, self.description)},
        )


def table_artifact(key: str, table: pd.DataFrame, description: str) -> None:
    """A table artifact from a DataFrame (an empty one gets one explanatory row)."""
    rows = [
        {str(k): (None if pd.isna(v) else v) for k, v in row.items()}
        for row in table.to_dict("records")
    ]
    create_table_artifact(
        table=rows or [{"note": "nothing to report"}], key=key, description=description
    )
