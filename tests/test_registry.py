"""One stage graph: dvc.yaml must equal what the registry renders, and every declared key and module must exist."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.dvcfile import render
from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.runner import load_function
from pipeline_lib.engine.stage_keys import CZSL_TRAINING, EXTRACTION, OTI_KEYS, OVI_KEYS
from pipeline_lib.engine.stages import (
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
    """EXTRACTION lists every `features` key except the CZSL patch-token switch."""
    from pipeline_lib.features.config import FeaturesConfig

    assert set(EXTRACTION) == {f"features.{key}" for key in FeaturesConfig.model_fields if key != "patch_tokens"}
    for name in ("features_fewshot", "support", "features_czsl", "features_text"):
        assert set(EXTRACTION) <= set(get_stage(name).params), name


def test_czsl_instances_are_versioned_by_every_czsl_key_but_the_claims_pin() -> None:
    """A czsl instance reads every `czsl` key except `czsl.dataset` (whose results the claims read): changing that
    pin reruns the claims, never a CZSL training."""
    from pipeline_lib.czsl.config import CzslConfig

    assert set(CZSL_TRAINING) == {f"czsl.{key}" for key in CzslConfig.model_fields if key != "dataset"}
    assert set(CZSL_TRAINING) <= set(get_stage("czsl").params)


def test_inversion_instances_are_versioned_by_every_inversion_key_but_the_claims_pins() -> None:
    """oti and ovi read every `inversion` key of their direction, never the claims' pins (`inversion.dataset`,
    `inversion.text_dataset`): moving a pin reruns the claims, never an inversion."""
    from pipeline_lib.inversion.config import InversionConfig

    every = {f"inversion.{key}" for key in InversionConfig.model_fields if key not in ("dataset", "text_dataset")}
    assert set(OTI_KEYS) | set(OVI_KEYS) == every
    assert "inversion.ovi" not in OTI_KEYS and "inversion.oti" not in OVI_KEYS
    assert set(OTI_KEYS) <= set(get_stage("oti").params) and set(OVI_KEYS) <= set(get_stage("ovi").params)


@pytest.mark.parametrize(
    ("overrides", "added"),
    [
        (("datasets.text_retrieval={shapes: {}, coco: {path: coco.json, format: karpathy}}",),
         {"features_text@coco", "ovi@coco"}),
        (("datasets.classification={shapes: {}, pets: {root: pets}}",
          "datasets.image_retrieval={shapes: {}, pets: {}}"),
         {"features_fewshot@pets", "fewshot_bridge@pets", "oti@pets"}),
        (("datasets.czsl={shapes: {}, mit: {root: mit}}",), {"features_czsl@mit", "czsl@mit"}),
    ],
)
def test_adding_a_dataset_leaves_every_other_instance_as_it_was(overrides: tuple[str, ...], added: set[str]) -> None:
    """A new entry of any dataset list adds its own instances and changes the versioning params of no other instance
    but the aggregations that list every dataset (few-shot report)."""
    from pipeline_lib.engine.artifacts import params_subset

    before, after = (effective_params(load_config(REPO, overrides=o)) for o in ((), overrides))
    old = {i.id: params_subset(before, i.params) for s in STAGES for i in instances(s, before)}
    new = {i.id: params_subset(after, i.params) for s in STAGES for i in instances(s, after)}
    assert added <= set(new) - set(old)
    assert all(i.startswith(("support@pets", "fewshot_run@pets")) for i in set(new) - set(old) - added)
    assert {i for i in old if new[i] != old[i]} <= {"fewshot_report"}
