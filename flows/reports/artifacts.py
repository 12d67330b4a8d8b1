"""What a data engineer sees of a running flow: Prefect artifacts, mirrored to the CLI.

Progress goes to a Prefect progress artifact (the UI's live view) and, as a log record on
the ``daug.progress`` logger, to whoever listens: the CLI draws a progress bar from it.

Images in markdown artifacts are embedded as downscaled JPEG data URIs: the Prefect UI does not
load ``file://`` links (checked in headless Chromium against Prefect 3.8: naturalWidth 0, "Not
allowed to load local resource"), while a data URI renders in both UIs. The full-resolution
file is named below each image: its path, or for run outputs on object storage a presigned
HTTPS link (``flows.reports.files.file_link``). An artifact stays far below the 1.5 MB above
which the server stores it but refuses to publish its events.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pandas as pd
from PIL import Image
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run

from flows.reports.files import file_link
from storage.store.location import Location

progress_log = logging.getLogger("daug.progress")
# A thumbnail's longest side and the budget of one embedded image (base64 text).
THUMBNAIL_SIDE = 720
IMAGE_BUDGET_BYTES = 160_000


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def run_namer(
    kind: str,
    location: str,
    *,
    parent: bool = False,
    detail: Callable[[Mapping[str, Any]], str] | None = None,
) -> Callable[[], str]:
    """A flow's ``flow_run_name``: ``<kind>-<where>[-<detail>]-<UTC start time>``, where is the
    name of the run's ``location`` parameter (its parent folder's with ``parent``: a checkpoint's
    run) and ``detail`` picks a further part from the run's parameters."""

    def name() -> str:
        params = flow_run.parameters
        where = Location.of(str(params.get(location, location)))
        parts = [kind, (where.parent if parent else where).name]
        if detail is not None:
            parts.append(detail(params))
        return "-".join([*parts, f"{datetime.now(UTC):%Y%m%d-%H%M%S}"])

    return name


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


def markdown_artifact(key: str, markdown: str, description: str) -> None:
    """A markdown artifact; ``description`` says what it shows (the run's Artifacts tab lists
    only cards with their descriptions)."""
    create_markdown_artifact(key=key, markdown=markdown, description=description)


def image_markdown(path: Path, alt: str) -> str:
    """Markdown showing the PNG at ``path`` in the Prefect UI: a JPEG thumbnail as a data URI
    (longest side at most :data:`THUMBNAIL_SIDE`, smaller until it fits
    :data:`IMAGE_BUDGET_BYTES`), then where the full-resolution file is: its path, or a link
    (presigned HTTPS) when the run's outputs go to object storage."""
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    side, quality = THUMBNAIL_SIDE, 85
    while True:
        thumb = image.copy()
        thumb.thumbnail((side, side))
        buffer = io.BytesIO()
        thumb.save(buffer, format="JPEG", quality=quality, optimize=True)
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(encoded) <= IMAGE_BUDGET_BYTES or side <= 120:
            break
        side, quality = int(side * 0.75), max(60, quality - 10)
    link = file_link(path)
    where = f"[full resolution]({link})" if "://" in link else f"full resolution in `{link}`"
    return f"![{alt}](data:image/jpeg;base64,{encoded})\n\n*{alt}: {where}*"
