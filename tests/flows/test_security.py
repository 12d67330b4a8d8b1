"""Security properties: fake PHI from DICOM headers reaches no store file, artifact or log;
weights never load through pickle; release paths cannot escape the release root (that last one
is tested in tests/storage/release/test_reader.py: `path_escapes_root`, symlink escape)."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import pydicom
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from daug_core.contrastive.config import ClipModelConfig
from daug_core.contrastive.model import ModelLoadError, build_clip_model
from daug_core.contrastive.presets import contrastive_preset
from flows.ingest import ingest_flow
from storage.release.ingest_config import IngestConfig, ReaderConfig

ROOT = Path(__file__).resolve().parents[2]


def _phi(release: Path) -> set[str]:
    """Patient names (as written and as "Given Family"), MRNs and birth dates of the headers."""
    values: set[str] = set()
    for path in release.glob("files/**/*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = str(ds.PatientName)
        family, _, given = name.partition("^")
        values |= {name, f"{given} {family}", str(ds.PatientID), str(ds.PatientBirthDate)}
    return {v for v in values if len(v) >= 6}


def test_fake_phi_reaches_no_store_file_artifact_or_log(
    synthetic_pair, prefect_server, tmp_path, caplog
):
    release = synthetic_pair[0]
    phi = _phi(release)
    assert len(phi) > 20  # names, ids and birth dates of every synthetic patient
    store = tmp_path / "store"
    with caplog.at_level(logging.DEBUG):
        state = ingest_flow(
            release=str(release),
            store=str(store),
            ingest=IngestConfig(size=64, reader=ReaderConfig(views=())),
            return_state=True,
        )
    assert state.is_completed()
    texts = {str(p): p.read_text() for p in store.rglob("*") if p.suffix in {".csv", ".json"}}
    assert any(name.endswith("items.csv") for name in texts)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    assert artifacts
    texts |= {f"artifact {a.key}": f"{a.data} {a.description}" for a in artifacts}
    texts["logs"] = caplog.text
    pattern = re.compile("|".join(re.escape(v) for v in sorted(phi)))
    header = next(release.glob("files/**/*.dcm")).read_bytes().decode("latin-1")
    assert pattern.search(header)  # positive control: the search finds PHI where it is
    leaks = {where: pattern.findall(text)[:3] for where, text in texts.items()}
    assert not {k: v for k, v in leaks.items() if v}


class _Payload:
    """Unpickling this runs code: exactly what weights_only loading must refuse."""

    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))

    target = ""


def test_a_pickled_checkpoint_is_refused_without_running_its_code(tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Payload()}))
    preset = contrastive_preset("tiny")
    config = ClipModelConfig(**{**preset.model.__dict__, "pretrained": str(evil)})
    with pytest.raises(ModelLoadError, match=r"evil\.pt"):
        build_clip_model(config, ("+No Finding",), generator=__import__("torch").Generator())
    assert not (tmp_path / "pwned").exists()


def test_package_code_never_unpickles():
    """Weights load from safetensors, or torch.load with weights_only=True."""
    offenders = []
    for path in sorted((ROOT).glob("[dsf]*/**/*.py")):
        if path.parts[len(ROOT.parts)] not in {"daug_core", "storage", "flows"}:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if "pickle.load" in code or ("torch.load(" in code and "weights_only=True" not in code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders
