"""Preflight: every bad-input class is named with its key, value and what is allowed, before anything runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from flows.cli import app
from pipeline_lib.engine.params import ParamsError, load_params
from pipeline_lib.engine.preflight import known_backbones, missing_dvc_params, preflight, unknown_keys


def _project(tmp_path: Path, edit=None) -> Path:
    params = load_params(REPO)
    if edit:
        edit(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "dvc.yaml").write_bytes((REPO / "dvc.yaml").read_bytes())
    return tmp_path


def test_unknown_keys_get_a_did_you_mean() -> None:
    raw = {"fewshot": {"atoll": 0.3, "search": {"n_trial": 5}}, "fewshots": {}}
    found = list(unknown_keys(raw))
    assert "fewshot.atoll: unknown key (did you mean fewshot.atol?)" in found
    assert "fewshot.search.n_trial: unknown key (did you mean fewshot.search.n_trials?)" in found
    assert any(f.startswith("fewshots: unknown key (did you mean fewshot?)") for f in found)


def test_keys_dvc_declares_must_be_in_params_yaml(tmp_path: Path) -> None:
    root = _project(tmp_path, lambda p: p["fewshot"].pop("atol"))
    assert any(m.startswith("fewshot.atol: missing from params.yaml") for m in missing_dvc_params(root,
                                                                                                  load_params(root)))
    preflight(root)  # the params model alone fills the default ...
    with pytest.raises(ParamsError, match="fewshot.atol: missing from params.yaml"):
        preflight(root, require_dvc_keys=True)  # ... but DVC would remove outputs, then stop on the missing key


def test_missing_paths_and_unknown_backbones_are_named(tmp_path: Path) -> None:
    root = _project(tmp_path)
    with pytest.raises(ParamsError, match=r"datasets.czsl.shapes.root = 'nowhere': no such file or folder"):
        preflight(root, overrides=("datasets.czsl.shapes.root=nowhere",))
    assert "ViT-B-16" in known_backbones()
    with pytest.raises(ParamsError, match=r"backbone.model = 'ViT-B-61'.*did you mean ViT-B-16"):
        preflight(root, overrides=("backbone.model=ViT-B-61",))
    assert preflight(root, overrides=("backbone.model=ViT-B-16",)).backbone.model == "ViT-B-16"


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    root = _project(tmp_path, lambda p: p["czsl"].update(epoch=3) or p["inversion"].update(sed=1))
    with pytest.raises(ParamsError) as info:
        preflight(root)
    assert "czsl.epoch: unknown key (did you mean czsl.epochs?)" in str(info.value)
    assert "inversion.sed: unknown key (did you mean inversion.seed?)" in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (("fewshot.atol=abc",), "fewshot.atol = 'abc'"),
        (("fewshot.atoll=0.3",), "no such key (known here: atol,"),
        (("datasets.classification.shapes.root=/no/such/folder",), "no such file or folder"),
        (("backbone.model=NotAModel-B-99",), "not an open_clip model name"),
        # OVI's reference P exists for the reference backbones only
        (("inversion.ovi.num_patches=reference",), "no reference P for backbone bf-tiny-vit-32"),
        # an image-retrieval entry reads its classification entry's store
        (("datasets.classification={}",), "image_retrieval.shapes: no datasets.classification entry 'shapes'"),
        # a suite without classification datasets run in full: the stages pinned to one cannot run
        (("datasets.classification={}", "datasets.image_retrieval={}"),
         "diagnose reads features_fewshot@shapes (backbone.diagnose.dataset = 'shapes'), which "
         "datasets.classification does not list"),
    ],
)
def test_bridgeflow_run_fails_fast_without_starting_prefect(tmp_path: Path, override: tuple[str, ...],
                                                           expected: str) -> None:
    root = _project(tmp_path)
    started = time.perf_counter()
    result = CliRunner().invoke(app, ["run", "--root", str(root), *(a for o in override for a in ("-S", o))])
    seconds = time.perf_counter() - started
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split())
    assert seconds < 2.0 and not (root / ".bridgeflow").exists()  # no Prefect home: the server never started


def test_check_params_writes_a_constant_mark(tmp_path: Path) -> None:
    root = _project(tmp_path)
    mark = root / "artifacts" / "params_check.txt"
    result = CliRunner().invoke(app, ["check-params", "--root", str(root), "--out", str(mark)])
    assert result.exit_code == 0 and mark.read_text() == "ok\n"


def test_czsl_pins_and_per_dataset_overrides_are_checked_before_anything_runs(tmp_path: Path) -> None:
    root = _project(tmp_path)
    with pytest.raises(ParamsError, match=r"czsl.dataset = 'mit_states': not a key of datasets.czsl \(listed: shap"):
        preflight(root, overrides=("czsl.dataset=mit_states",))
    with pytest.raises(ParamsError, match=r"datasets.czsl.shapes.overrides: \['lrate'\] are not czsl keys"):
        preflight(root, overrides=('datasets.czsl.shapes.overrides={"lrate": 0.1}',))
    with pytest.raises(ParamsError, match=r"datasets.czsl.shapes.overrides.mode = 'full': Input should be"):
        preflight(root, overrides=('datasets.czsl.shapes.overrides={"mode": "full"}',))
    # no CZSL dataset listed: no CZSL stage runs, and the claims' pin names nothing
    assert preflight(root, overrides=("datasets.czsl={}", "czsl.dataset=mit_states")).datasets.czsl == {}


def test_only_the_stages_reading_an_unlisted_dataset_are_named() -> None:
    """The SAM-CZSL profile lists no classification dataset: its CZSL stages form a graph, the full run does not;
    the claims read the CZSL results only when a CZSL dataset is listed (the SeMoBridge profile lists none)."""
    from flows.graph import instance_graph
    from pipeline_lib.engine.config import effective_params, load_config

    sam = effective_params(load_config(REPO, "sam_czsl"))
    benchmarks = ("ut_zappos", "mit_states", "cgqa")
    expected = {"data", "backbone", *(f"{s}@{d}" for s in ("features_czsl", "czsl") for d in benchmarks)}
    assert {n.id for n in instance_graph(["czsl"], sam)} == expected
    with pytest.raises(ParamsError, match=r"(?s)diagnose reads.*claims reads fewshot_run@shapes"):
        instance_graph(["report"], sam)
    semobridge = effective_params(load_config(REPO, "semobridge"))
    assert "claims" in {n.id for n in instance_graph(["report"], semobridge)}
