"""Prompt sets (SeMoBridge spec 2.1): CoOp templates, clip_ensemble recipes, CuPL JSON lookup."""

import json

import pytest

from pipeline_lib.features.prompts import (
    SELECT_TEMPLATES,
    class_prompts,
    clip_ensemble_templates,
    coop_template,
    load_cupl_sentences,
)


def test_templates_per_dataset():
    assert clip_ensemble_templates("imagenet") == list(SELECT_TEMPLATES)
    assert clip_ensemble_templates("dtd") == ["{} texture."]
    assert clip_ensemble_templates("EuroSAT") == ["a centered satellite photo of {}."]
    pets = clip_ensemble_templates("oxford_pets")
    assert pets[0] == "a photo of a {}, a type of pet." and pets[1:] == list(SELECT_TEMPLATES) and len(pets) == 8
    assert coop_template("ucf101") == "a photo of a person doing {}."
    assert clip_ensemble_templates("shapes") == clip_ensemble_templates("Shapes") == ["a photo of a {}."]
    with pytest.raises(ValueError, match="no prompt recipe"):
        coop_template("mnist")


def test_cupl_lookup_lowercases_and_replaces_underscores(tmp_path):
    path = tmp_path / "cupl_full.json"
    path.write_text(json.dumps({"golden retriever": ["A golden dog.", "Fluffy."], "Sea Lion": ["A sea lion."]}))
    got = load_cupl_sentences(path, ["Golden_Retriever", "sea_lion"])
    assert got == [["A golden dog.", "Fluffy."], ["A sea lion."]]
    with pytest.raises(KeyError, match="'tabby cat'"):
        load_cupl_sentences(path, ["Tabby_Cat"])


def test_class_prompts_concatenates_sets_in_order(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sea lion": ["s1", "s2"]}))
    got = class_prompts("dtd", ["sea_lion"], "clip_ensemble,cupl_full", path)
    assert got == [["sea lion texture.", "s1", "s2"]]
    assert class_prompts("imagenet", ["x"], "aphotoofa,classname") == [["a photo of a x", "x"]]
