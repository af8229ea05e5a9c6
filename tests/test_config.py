"""params.yaml validation: unknown keys and bad values are rejected with the key, the value and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline_lib.engine.config import Config, effective_params, load_config
from pipeline_lib.engine.params import ParamsError, load_params


def test_shipped_params_and_profiles_validate() -> None:
    assert isinstance(load_config(REPO), Config)
    smoke = load_config(REPO, "smoke")
    assert smoke != load_config(REPO)


def test_params_yaml_lists_every_knob() -> None:
    """params.yaml is the user's full view: every effective key appears in it."""
    assert load_params(REPO) == effective_params(load_config(REPO))


def test_params_yaml_survives_dvcs_round_trip_byte_for_byte(tmp_path: Path) -> None:
    """`dvc exp run -S` rewrites params.yaml through DVC's YAML dumper: it must not reformat the file."""
    from dvc.utils.serialize import modify_yaml

    copy = tmp_path / "params.yaml"
    copy.write_bytes((REPO / "params.yaml").read_bytes())
    with modify_yaml(copy) as params:  # read and written back unchanged, as `-S` does around its edit
        assert params["fewshot"]["atol"] == 0.3
    assert copy.read_bytes() == (REPO / "params.yaml").read_bytes()


def test_unknown_key_is_named(tmp_path: Path) -> None:
    params = load_params(REPO)
    params["data"]["imagesize"] = 32
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"data\.imagesize: unknown key"):
        load_config(tmp_path)


def test_bad_value_names_key_value_and_rule(tmp_path: Path) -> None:
    params = load_params(REPO)
    params["runtime"]["num_workers"] = -3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError, match=r"runtime\.num_workers = -3: .*greater than or equal to 0"):
        load_config(tmp_path)


def test_overrides_and_their_errors() -> None:
    assert load_config(REPO, overrides=("runtime.num_workers=0",)).runtime.num_workers == 0
    with pytest.raises(ParamsError, match="no such key"):
        load_config(REPO, overrides=("runtime.nope=1",))
    with pytest.raises(ParamsError, match="key=value"):
        load_config(REPO, overrides=("runtime.num_workers",))
    with pytest.raises(ParamsError, match="unknown profile 'huge'"):
        load_config(REPO, "huge")


def test_numeric_folder_names_stay_names() -> None:
    """EuroSAT's CoOp layout keeps its images in `2750/`: YAML reads 2750 as a number, the param means the folder."""
    cfg = load_config(REPO, overrides=("datasets.classification.shapes.image_dir=2750",
                                       "datasets.czsl.shapes.root=1234"))
    assert cfg.datasets.classification["shapes"].image_dir == "2750" and cfg.datasets.czsl["shapes"].root == "1234"
    assert load_config(REPO, overrides=("datasets.text_retrieval.shapes.path=77",)).datasets.text_retrieval[
        "shapes"].path == "77"
    with pytest.raises(ParamsError, match="datasets.czsl.shapes.check_sizes"):  # a flag stays a flag
        load_config(REPO, overrides=("datasets.czsl.shapes.check_sizes=3.5",))
