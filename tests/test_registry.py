"""One stage graph: dvc.yaml must equal what the registry renders, and every declared key and module must exist."""

from __future__ import annotations

import yaml
from conftest import REPO

from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.dvcfile import render
from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.runner import load_function
from pipeline_lib.engine.stages import (
    CZSL_TRAINING,
    EXTRACTION,
    PARAMS_CHECK,
    STAGES,
    dvc_template,
    get_stage,
    instances,
)


def test_dvc_yaml_matches_registry() -> None:
    assert (REPO / "dvc.yaml").read_text() == render(REPO), "run `bridgeflow dvc-yaml --write`"


def test_dvc_yaml_stages_names_params_deps_outs() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == ["check_params"] + [s.name for s in STAGES]
    check = dvc["check_params"]
    assert "params.yaml" in check["deps"] and check["outs"] == [{PARAMS_CHECK: {"cache": False}}]
    for stage in STAGES:
        if not stage.deps:  # the params check runs before every stage without upstream stages
            assert PARAMS_CHECK in dvc[stage.name]["deps"]
        entry = dvc[stage.name]
        assert entry["params"] == [dvc_template(key) for key in stage.params]
        assert entry["cmd"].startswith(f"bridgeflow stage {stage.name}")
        for dep in stage.deps:
            assert any(d.startswith(out.split("{")[0].rstrip("/").rsplit("/", 1)[0]) for out in get_stage(dep).outs
                       for d in entry["deps"])


def test_declared_params_modules_and_functions_exist() -> None:
    params = effective_params(load_config(REPO))
    for stage in STAGES:
        for inst in instances(stage, params):
            for key in inst.params:
                get_dotted(params, key)
        assert callable(load_function(stage.func))
        for _, key in stage.matrix:
            assert isinstance(get_dotted(params, key), list | dict)
        for _, key in stage.pins:
            get_dotted(params, key)


def test_feature_stages_are_versioned_by_every_extraction_key() -> None:
    """EXTRACTION lists every `features` key except the text source and the CZSL patch-token switch."""
    from pipeline_lib.features.config import FeaturesConfig

    sources = {"retrieval_text", "patch_tokens"}
    assert set(EXTRACTION) == {f"features.{key}" for key in FeaturesConfig.model_fields if key not in sources}
    for name in ("features_fewshot", "support", "features_czsl", "features_text"):
        assert set(EXTRACTION) <= set(get_stage(name).params), name


def test_czsl_instances_are_versioned_by_every_czsl_key_but_the_claims_pin() -> None:
    """A czsl instance reads every `czsl` key except `czsl.dataset` (whose results the claims read): changing that
    pin reruns the claims, never a CZSL training."""
    from pipeline_lib.czsl.config import CzslConfig

    assert set(CZSL_TRAINING) == {f"czsl.{key}" for key in CzslConfig.model_fields if key != "dataset"}
    assert set(CZSL_TRAINING) <= set(get_stage("czsl").params)
