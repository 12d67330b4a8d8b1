"""docs/configuration.md is the settings classes' reference: generated from them, never edited by
hand, so a new or changed field shows in the docs or fails here."""

from __future__ import annotations

import dataclasses

from daug_core.diffusion.config import TranslationConfig
from daug_core.diffusion.heatmap_settings import HeatmapSettings
from flows.cli import app
from flows.cli.reference import DOC, configuration_markdown


def test_docs_configuration_is_generated_from_the_settings_classes():
    assert DOC.read_text() == configuration_markdown(), (
        "docs/configuration.md is stale: run `python -m flows.cli.reference`"
    )


def test_every_generated_option_is_documented():
    text = configuration_markdown()
    spellings = [
        spelled
        for info in app.registered_commands
        for _, options in getattr(info.callback, "__settings_options__", {}).values()
        for option in options
        for spelled in option.spellings
    ]
    assert len(spellings) > 50
    assert [s for s in spellings if f"`{s}`" not in text] == []


def test_each_heatmap_field_has_a_row_with_its_help():
    text = configuration_markdown()
    rows = [("preset", HeatmapSettings), ("targets", HeatmapSettings)] + [
        (f"translation.{f.name}", TranslationConfig) for f in dataclasses.fields(TranslationConfig)
    ]
    for path, owner in rows:
        field = {f.name: f for f in dataclasses.fields(owner)}[path.split(".")[-1]]
        assert f"| `{path}` |" in text, path
        first_words = " ".join(str(field.metadata["help"]).split()[:4]).replace("|", "\\|")
        assert first_words in text, path
    assert "| `translation.scale` | float | the preset's |" in text
