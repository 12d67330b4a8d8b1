"""What the reprocess flow shows: the release-change report (markdown) and its artifacts."""

from __future__ import annotations

from typing import Any

import pandas as pd

from flows.reports.artifacts import markdown_artifact, table_artifact
from storage.release.diff import ChangeKind, ReleaseDiff
from storage.release.update import AppliedChanges

EXAMPLES_PER_KIND = 5
WHAT_IS_DONE: dict[str, str] = {
    ChangeKind.NEW.value: "registered and ingested (heatmaps: below)",
    ChangeKind.PIXELS_CHANGED.value: "re-ingested under its index, labels updated; heatmaps redone",
    ChangeKind.LABELS_CHANGED.value: "labels updated in place",
    ChangeKind.REPORT_CHANGED.value: "report updated in place",
    ChangeKind.REMOVED.value: "retired (kept, no longer used)",
    ChangeKind.UNCHANGED.value: "nothing",
}


def report_markdown(
    diff: ReleaseDiff,
    store: str,
    applied: AppliedChanges,
    seconds: dict[str, float],
    ingest: dict[str, Any] | None,
    heatmaps: dict[str, Any] | None,
    deltas: pd.DataFrame | None,
    run_dir: str,
) -> str:
    """The release-change report (markdown)."""
    counts = diff.counts()
    lines = [
        f"## reprocess: {diff.release_path} → {store}",
        "",
        f"Release `{diff.release_id}`: {diff.files_hashed} image files hashed "
        f"({diff.bytes_hashed / 1e6:.1f} MB) and compared with the store in "
        f"{seconds.get('diff', 0.0):.2f} s.",
        "",
        "| change | items | what was done |",
        "|---|---:|---|",
        *[f"| {kind} | {n} | {WHAT_IS_DONE[kind]} |" for kind, n in counts.items()],
        "",
        "### Examples",
        "",
    ]
    for kind in ChangeKind:
        if kind is ChangeKind.UNCHANGED:
            continue
        rows = diff.of_kind(kind).head(EXAMPLES_PER_KIND)
        if rows.empty:
            continue
        lines.append(f"**{kind.value}**")
        lines.append("")
        lines += [
            f"- `{r.dicom_id}` (index {r.index}){': ' + str(r.detail) if r.detail else ''}"
            for r in rows.itertuples(index=False)
        ]
        lines.append("")
    lines += ["### Work done", ""]
    lines.append(
        f"- store updated in place: {applied.labels_updated} label rows, "
        f"{applied.reports_updated} reports, {applied.retired} retired, "
        f"{applied.pixels_invalidated} pixel-changed items queued for re-ingest"
        + (f", {applied.restored} retired items back" if applied.restored else "")
        + (
            f"; heatmaps invalidated {applied.heatmaps_invalidated}"
            if any(applied.heatmaps_invalidated.values())
            else ""
        )
    )
    if ingest is None:
        lines.append("- ingest: nothing to ingest (skipped)")
    else:
        lines.append(
            f"- ingest: {ingest['ingested']} items ingested, {ingest['quarantined']} "
            f"quarantined, {ingest['plan']['already_finished']} already finished"
        )
    if heatmaps is None:
        lines.append("- heatmaps: no checkpoints given (skipped)")
    else:
        version = heatmaps["version"]
        if heatmaps["new_version"]:
            lines.append(f"- heatmaps: **new version {version}** ({heatmaps['reason']})")
        else:
            lines.append(f"- heatmaps: version {version} (same checkpoints and settings)")
        if heatmaps.get("result") is None:
            lines.append("  - nothing to compute (skipped)")
        else:
            result = heatmaps["result"]
            lines.append(
                f"  - {result['done']} items computed, {result['already_done']} already done, "
                f"{result['failed']} failed"
            )
    lines += [
        "",
        "### Time per phase",
        "",
        "| phase | seconds |",
        "|---|---:|",
        *[f"| {phase} | {s:.2f} |" for phase, s in seconds.items()],
        "",
    ]
    if deltas is not None:
        lines += [
            "### Metrics against the previous evaluation",
            "",
            "| metric | before | after | delta |",
            "|---|---:|---:|---:|",
            *[
                f"| {r.metric} | {r.before:.4f} | {r.after:.4f} | {r.delta:+.4f} |"
                for r in deltas.itertuples(index=False)
            ],
            "",
        ]
    lines.append(f"Run folder: `{run_dir}` (report.md, changes.csv, summary.json)")
    return "\n".join(lines)


def publish(key: str, markdown: str, changed: pd.DataFrame, release_id: str) -> None:
    markdown_artifact(
        f"{key}-report",
        markdown,
        "Release-change report: changes by kind, examples, work done, time per phase, deltas.",
    )
    table_artifact(
        f"{key}-changes",
        changed[["index", "dicom_id", "kind", "detail"]].head(500),
        f"Changed items of release {release_id} (first 500; all in changes.csv).",
    )
