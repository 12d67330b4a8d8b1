"""The `daug` command line: real subprocesses, exit codes and messages."""

import dataclasses
import inspect
import json
import os
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import pytest

from tests.factories import run_daug as daug


def test_synth_writes_a_release_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "synth"
    first = daug("synth", str(out), "--studies", "3", "--size", "48", "--format", "jpg")
    assert first.returncode == 0, first.stderr[-2000:]
    metadata = pd.read_csv(out / "release" / "mimic-cxr-2.0.0-metadata.csv")
    assert len(metadata) >= 3 and (out / "ground_truth" / "labels.csv").is_file()

    again = daug("synth", str(out), "--studies", "3", "--size", "48")
    assert again.returncode == 2
    assert "error:" in again.stderr and "exists; --overwrite" in again.stderr
    assert "Traceback" not in again.stderr

    replaced = daug("synth", str(out), "--studies", "2", "--size", "48", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]


def test_a_result_is_strict_json_on_stdout_and_the_log_on_stderr(tmp_path, prefect_server):
    """``daug ingest ... > summary.json`` holds the summary, parseable by any JSON reader."""
    assert daug("synth", str(tmp_path / "synth"), "--studies", "3", "--size", "48").returncode == 0
    run = daug("ingest", str(tmp_path / "synth" / "release"), "--store", str(tmp_path / "store"))
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout, parse_constant=lambda word: pytest.fail(f"{word} in JSON"))
    assert summary["ingested"] > 0 and summary["quarantined"] == 0
    assert "ingest finished" in run.stderr and "ingest finished" not in run.stdout


def test_help_folds_long_option_names_instead_of_cutting_them():
    helped = subprocess.run(
        [sys.executable, "-m", "flows.cli", "precompute", "--help"],
        capture_output=True,
        text=True,
        env=os.environ | {"COLUMNS": "80", "TERMINAL_WIDTH": ""},
        timeout=120,
    )
    assert helped.returncode == 0 and "--inversion-refin" in helped.stdout
    assert "…" not in helped.stdout


def test_ingest_of_a_missing_release_is_one_clear_error(tmp_path):
    result = daug("ingest", str(tmp_path / "nowhere"), "--store", str(tmp_path / "store"))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr


def test_a_release_table_with_a_bad_cell_is_one_error_naming_file_line_and_column(tmp_path):
    from tests.factories import MiniItem, dicom_bytes, dicom_id, gradient, write_mini_release

    release = write_mini_release(
        tmp_path / "release", [MiniItem(dicom_id(1), content=dicom_bytes(gradient()))]
    )
    labels = release / "mimic-cxr-2.0.0-chexpert.csv"
    table = pd.read_csv(labels, dtype=str)
    table.loc[0, "Edema"] = "abc"
    table.to_csv(labels, index=False)
    result = daug("ingest", str(release), "--store", str(tmp_path / "store"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "chexpert.csv: line 2, column Edema: 'abc' is not a label" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "store").exists()


def test_a_heatmap_version_that_is_no_folder_name_is_refused_before_anything_is_made(tmp_path):
    from storage.store.image import ImageStore

    ImageStore.create(tmp_path / "store", 16, shard_items=4)
    result = daug(
        "precompute", "--store", str(tmp_path / "store"), "--checkpoints", str(tmp_path),
        "--heatmap-version", "..",
    )  # fmt: skip
    assert result.returncode == 2 and "heatmap version '..'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "heatmaps").exists()


def test_training_without_usable_data_is_one_error_before_the_output_exists(tmp_path):
    from storage.store.image import ImageStore

    small = str(tmp_path / "small")
    ImageStore.create(small, 16, shard_items=4)
    empty = str(tmp_path / "empty")
    ImageStore.create(empty, 64, shard_items=4)
    out = tmp_path / "out"
    cases = [
        (("train-generator", "--store", small), "holds 16 px images; the tiny preset needs"),
        (("train-generator", "--store", empty), "no ingested items in splits ['train']"),
        (("train", "--store", empty), "no heatmap version 'v1' (it has: none)"),
        (("train", "--store", empty, "--heatmap-mode", "none"), "no usable items in ['train']"),
    ]
    for args, message in cases:
        result = daug(*args, "--out", str(out))
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert message in " ".join(result.stderr.split()), (args, result.stderr)
        assert "Traceback" not in result.stderr and not out.exists()


def test_bad_format_option(tmp_path):
    result = daug("synth", str(tmp_path / "x"), "--format", "png")
    assert result.returncode == 2 and "--format" in result.stderr
    assert "'dicom'" in result.stderr and "'jpg'" in result.stderr


def test_delete_heatmaps_asks_then_deletes_only_that_version(tmp_path):
    from storage.store.heatmaps import HeatmapStore
    from storage.store.image import ImageStore
    from tests.factories import PROVENANCE, with_translation

    images = ImageStore.create(tmp_path / "store", 16, shard_items=4)
    images.register(pd.DataFrame({"dicom_id": ["a", "b"], "split": ["train", "test"]}))
    HeatmapStore.create(images, PROVENANCE).mark_done([1])
    HeatmapStore.create(images, with_translation(PROVENANCE, scale=10.0), version="v2")
    store = str(tmp_path / "store")

    unknown = daug("delete-heatmaps", store, "v9", "--yes")
    assert unknown.returncode == 2 and "no heatmap version 'v9'" in unknown.stderr
    assert "v1, v2" in unknown.stderr

    declined = daug("delete-heatmaps", store, "v1", stdin="n\n")
    assert declined.returncode == 1 and "1 items done" in declined.stdout
    assert HeatmapStore.versions(ImageStore.open(store)) == ["v1", "v2"]

    deleted = daug("delete-heatmaps", store, "v1", "--yes")
    assert deleted.returncode == 0, deleted.stderr[-2000:]
    assert HeatmapStore.versions(ImageStore.open(store)) == ["v2"]


def test_train_and_evaluate_refuse_bad_options_before_starting_prefect(tmp_path):
    bad_mode = daug(
        "train", "--store", str(tmp_path), "--out", str(tmp_path / "o"), "--heatmap-mode", "x"
    )
    assert bad_mode.returncode == 2 and "--heatmap-mode" in bad_mode.stderr
    assert "'channel'" in bad_mode.stderr
    no_store = daug("train", "--store", str(tmp_path / "none"), "--out", str(tmp_path / "o"))
    assert no_store.returncode == 2 and "error:" in no_store.stderr
    assert "Traceback" not in no_store.stderr
    no_ckpt = daug("evaluate", "--checkpoint", str(tmp_path), "--store", str(tmp_path))
    assert no_ckpt.returncode == 2 and "holds no contrastive checkpoint" in no_ckpt.stderr


def test_a_device_this_machine_lacks_is_one_error_before_any_work(tmp_path):
    import torch

    from storage.store.image import ImageStore

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    ImageStore.create(tmp_path / "store", 16, shard_items=4)
    cuda = daug(
        "train-generator", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "o"),
        "--device", "cuda",
    )  # fmt: skip
    assert cuda.returncode == 2 and "no CUDA device" in cuda.stderr, cuda.stderr[-2000:]
    assert "Traceback" not in cuda.stderr and not (tmp_path / "o").exists()
    uneven = daug(
        "train", "--store", str(tmp_path / "store"), "--out", str(tmp_path / "o"),
        "--workers", "3", "--batch-size", "8",
    )  # fmt: skip
    assert uneven.returncode == 2, uneven.stderr[-2000:]
    assert "does not split over 3 workers" in uneven.stderr
    assert "Traceback" not in uneven.stderr and not (tmp_path / "o").exists()


def test_demo_prints_the_heatmap_quality_headline_in_terminal_columns():
    from flows.reports.demo import modes_table as _modes_table
    from flows.reports.demo import quality_headline as _quality_headline

    def row(pg, auroc, off=0.0):
        return {
            "n_lesion": 29,
            "n_healthy": 13,
            "pointing_game": pg,
            "pixel_auroc": auroc,
            "mass_inside": 0.18,
            "off_target_share": off,
            "healthy_energy": 0.015,
        }

    quality = {
        "scored": {"version": "v1", "targets": {"+No Finding": row(0.966, 0.953)}},
        "modes": {
            "softmax": {"targets": {"+No Finding": row(0.966, 0.953), "-Pleural": row(0.6, None)}},
            "sigmoid": {"targets": {"+No Finding": row(1.0, 0.949), "-Pleural": row(0.8, 0.94)}},
        },
    }
    headline = _quality_headline(quality).splitlines()
    assert headline[0].endswith("(29 with lesions, 13 healthy):")
    assert headline[2].split() == ["v1", "0.966", "0.953", "0.180", "0.015"]
    assert headline[4].split() == ["sigmoid", "1.000", "0.949", "0.180", "0.015"]
    modes = _modes_table(quality).splitlines()
    assert modes[3].split() == ["-Pleural", "29", "0.600/0.800", "n/a/0.940", "0.000/0.000"]
    assert max(len(line) for line in headline + modes) <= 80
    assert _modes_table({"modes": None}) == ""


# ---- the CLI is generated from, and held to, the flows and their settings -------------------
def _plain(hint: Any) -> Any:
    """A parameter type as the flow sees it: Annotated stripped, a CLI Path is a str."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    if hint is Path:
        return str
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.Union[tuple(_plain(a) for a in typing.get_args(hint))]  # noqa: UP007
    return hint


def _commands() -> dict[str, Any]:
    from flows.cli import app

    return {c.name or c.callback.__name__: c.callback for c in app.registered_commands}


def test_every_flow_parameter_is_reachable_from_its_command_with_the_same_name_and_type():
    from flows.cli.app import load_flow

    flows = {name: cb for name, cb in _commands().items() if getattr(cb, "__flow__", None)}
    assert set(flows) == {
        "ingest",
        "train-generator",
        "precompute",
        "train-student",
        "distill",
        "heatmap-quality",
        "train",
        "evaluate",
        "index",
        "ablate",
        "reprocess",
        "demo",
        "study",
        "explain",
    }
    for name, command in flows.items():
        flow = load_flow(command.__flow__)
        flow_hints = typing.get_type_hints(flow.fn)
        cli_hints = typing.get_type_hints(command.__wrapped__, include_extras=True)
        for parameter in inspect.signature(flow.fn).parameters:
            assert parameter in cli_hints, f"daug {name} lacks the flow's {parameter}"
            assert _plain(cli_hints[parameter]) == _plain(flow_hints[parameter]), (
                f"daug {name}: {parameter} is {cli_hints[parameter]} on the command line, "
                f"{flow_hints[parameter]} in the flow"
            )


def test_settings_options_come_from_the_fields_with_their_help_and_choices():
    from daug_core.diffusion.heatmap_settings import HeatmapSettings
    from flows.cli.options import settings_command
    from flows.runtime.pool import PoolSettings

    precompute = _commands()["precompute"]
    assert precompute.__settings__ == {"heatmaps": HeatmapSettings, "pool": PoolSettings}
    generated = set(inspect.signature(precompute).parameters)

    def leaves(cls: type, prefix: str = "") -> set[str]:
        found: set[str] = set()
        for f in dataclasses.fields(cls):
            nested = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(nested):
                found |= leaves(nested, f"{prefix}{f.name}_")  # nested configs, flattened
            else:
                found.add(prefix + f.name)
        return found

    fields = leaves(HeatmapSettings) | leaves(PoolSettings)
    assert "translation_scale" in fields and "inference_max_batch" in fields
    assert fields <= generated and "heatmaps" not in generated

    def clash(heatmaps: HeatmapSettings, again: HeatmapSettings) -> None: ...

    with pytest.raises(TypeError, match="--preset of again is also heatmaps's"):
        settings_command(clash)

    result = daug("precompute", "--help")
    assert result.returncode == 0
    help_text = result.stdout
    for option in ("--scale", "--target", "--mode", "--batch-size", "--heatmap-version"):
        assert option in help_text
    assert "reconstruction error only" in help_text  # the scale field's own help
    assert "softmax|sigmoid" in help_text and "HeatmapSettings settings" in help_text


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--scale", "nan"], "scale must be a finite number"),
        (["--scale", "-5"], "scale must be a finite number"),
        (["--steps", "400"], "steps <= level"),
        (["--target", "+Fracture"], "unknown class 'Fracture'"),
        (["--mode", "tanh"], "'softmax'"),
        (["--cpus-per-actor", "0"], "cpus_per_actor"),
    ],
)
def test_bad_settings_are_one_line_before_anything_starts(tmp_path, options, expected):
    store = tmp_path / "missing-store"  # never opened: the settings are checked first
    result = daug("precompute", "--store", str(store), "--checkpoints", str(tmp_path), *options)
    assert result.returncode == 2, result.stderr[-2000:]
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert not store.exists()


def test_a_study_in_a_precision_this_machine_lacks_fails_before_anything_is_written(tmp_path):
    out = tmp_path / "study"
    result = daug("study", str(out), "--precision", "fp16", "--device", "cpu")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "fp16 needs a CUDA device" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_options_are_spelled_one_way_across_commands():
    """A concept has one spelling: --heatmap-version everywhere, and --mode is the guidance mode
    only (the contrastive model's is --heatmap-mode)."""
    from flows.cli.options import option_spellings

    spelled: dict[str, set[str]] = {}
    used_by: dict[str, set[str]] = {}
    for name, command in _commands().items():
        for parameter in inspect.signature(command).parameters.values():
            for option in option_spellings(parameter.name, parameter.annotation)[:1]:
                spelled.setdefault(parameter.name, set()).add(option)
                used_by.setdefault(option, set()).add(name)
    assert spelled["heatmap_version"] == {"--heatmap-version"}
    assert "--version" not in used_by
    assert used_by["--mode"] == {"precompute", "heatmap-quality", "reprocess", "distill"}
    assert "train" in used_by["--heatmap-mode"]
    assert spelled["splits"] == {"--split"} and spelled["targets"] == {"--target"}
