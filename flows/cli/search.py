"""Similar past studies: ``daug index`` (a model's embeddings of a store) and ``daug search``
(free text → the nearest images)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from daug_core.checkpoints.names import CLIP_HEADERS
from daug_core.compute import ComputeSettings
from flows.cli.app import command, print_json
from flows.cli.checks import require_store
from flows.cli.console import console
from flows.cli.options import StoreOption
from storage.store.checkpoint_cache import clip_header

PANEL = "New studies"
REPORT_CHARS = 160  # of each hit's report in the console table (the JSON has it whole)

SearchModelOption = Annotated[
    str, typer.Option("--model", help="a trained contrastive checkpoint (daug train's OUT/best)")
]


def _require_model(model: str) -> None:
    if clip_header(model) is None:
        raise typer.BadParameter(
            f"{model} holds no contrastive checkpoint (no {' or '.join(CLIP_HEADERS)})",
            param_hint="--model",
        )


@command(PANEL, flow="flows.index:index_flow")
def index(
    model: SearchModelOption,
    store: StoreOption,
    compute: ComputeSettings,
    batch_size: Annotated[int, typer.Option(min=1, help="images per forward pass")] = 64,
) -> None:
    """Embed every usable item of STORE (image with its heatmap channels, and report) with a
    trained model into STORE/index/<model sha256[:16]>/, for daug search and daug explain
    (resumable: a rerun embeds only what is not done)."""
    _require_model(model)
    require_store(store)
    compute.resolve()  # "cuda" without CUDA fails here, before Prefect starts


def show_hits(result: dict[str, Any]) -> None:
    """The hits as a table on the console (stderr)."""
    from rich.table import Table

    table = Table(title=f"{result['query']!r}: {len(result['hits'])} nearest images")
    for column in ("#", "similarity", "dicom_id", "study", "split", "labels", "report"):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(result["hits"], start=1):
        report = hit["report"]
        short = report if len(report) <= REPORT_CHARS else report[: REPORT_CHARS - 1] + "…"
        table.add_row(
            str(rank),
            f"{hit['similarity']:.3f}",
            hit["dicom_id"],
            hit["study_id"],
            hit["split"],
            ", ".join(hit["labels"]) or "—",
            short,
        )
    console.print(table)
    if not result["index_complete"]:
        console.print("[yellow]the index is incomplete: run daug index again[/yellow]")


@command(PANEL)
def search(
    query: Annotated[str, typer.Argument(help="free text, e.g. 'pleural effusion'")],
    model: SearchModelOption,
    index: Annotated[
        str,
        typer.Option("--index", help="the store the model was trained on, indexed for it"),
    ],
    compute: ComputeSettings,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="how many images")] = 10,
    out: Annotated[
        str | None, typer.Option(help="also write OUT/search.json (a folder or URL)")
    ] = None,
) -> None:
    """Report→image retrieval with free text: the k images of the index whose embeddings are
    nearest to the text's (exact cosine), with ids, similarity, labels and report text; JSON
    on stdout, a table on the console."""
    from flows.index import search as search_index

    _require_model(model)
    require_store(index)
    if not query.strip():
        raise typer.BadParameter("the search text is empty", param_hint="QUERY")
    result = search_index(query, model, index, k, out, compute.resolve())
    show_hits(result)
    print_json(result)
