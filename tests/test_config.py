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
