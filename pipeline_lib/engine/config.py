"""The validated view of params.yaml: one strict pydantic model per stage group, composed here.

Each area owns its section model (`pipeline_lib/<area>/config.py`); this module joins them, adds the runtime section
(device, workers, progress: never part of a stage's fingerprint) and turns pydantic's errors into messages that name
the key, the value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from pipeline_lib.backbone.config import BackboneConfig
from pipeline_lib.czsl.config import CzslConfig, dataset_config
from pipeline_lib.data.config import DataConfig
from pipeline_lib.datasets.config import DatasetsConfig
from pipeline_lib.engine.configbase import Section
from pipeline_lib.engine.params import ParamsError, get_dotted, load_params
from pipeline_lib.features.config import FeaturesConfig
from pipeline_lib.fewshot.config import FewshotConfig
from pipeline_lib.inversion.config import InversionConfig


class DaskConfig(Section):
    """Where `bridgeflow run` computes the sharded stages (features, inversion): off, a local or an existing cluster.

    Workers read and write the project root at the same path as the flow process (a shared filesystem); see README,
    "Scale-out on a Dask cluster".
    """

    # Scheduler of a running cluster (`dask scheduler`), e.g. "tcp://10.0.0.5:8786"; wins over local_workers.
    address: str | None = None
    # > 0: a temporary LocalCluster with this many workers for each sharded stage; 0 (and no address): no Dask.
    local_workers: int = Field(0, ge=0)
    # Tasks a local worker runs at once; each thread loads its own model copy (one per GPU is the usual choice).
    threads_per_worker: int = Field(1, ge=1)
    # Local workers as separate processes (true, real parallelism) or threads of the flow process (starts at once).
    processes: bool = True
    # Zarr shard files per task (features: blocks of rows_per_shard rows; inversion: runs of blocks_per_shard blocks).
    shards_per_task: int = Field(1, ge=1)

    @field_validator("address")
    @classmethod
    def _has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"address={value!r}: expected a scheduler address like 'tcp://host:8786'")
        return value

    @property
    def enabled(self) -> bool:
        return self.address is not None or self.local_workers > 0


class RuntimeConfig(Section):
    """How to run, not what to compute: changing these never invalidates a finished stage."""

    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto = CUDA when present, else CPU
    num_workers: int = Field(2, ge=0)  # image-decoding worker processes (the machine has 2 cores)
    progress: bool = True  # progress bars (always off when CI=true)
    processes: int = Field(2, ge=1)  # processes a stage may use for independent parts (few-shot searches)
    dask: DaskConfig = DaskConfig()  # scale-out of the sharded stages under `bridgeflow run`


class Config(Section):
    """Every knob of the pipeline, grouped by stage as in params.yaml."""

    data: DataConfig = DataConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    backbone: BackboneConfig = BackboneConfig()
    features: FeaturesConfig = FeaturesConfig()
    fewshot: FewshotConfig = FewshotConfig()
    inversion: InversionConfig = InversionConfig()
    czsl: CzslConfig = CzslConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _czsl_overrides_are_czsl_params(self) -> Config:
        """Each CZSL dataset's `overrides` must make a valid `czsl` section, checked before anything runs."""
        problems = []
        for name, entry in self.datasets.czsl.items():
            try:
                dataset_config(self.czsl, entry.overrides, name)
            except ValidationError as err:
                problems += [f"datasets.czsl.{name}.overrides.{'.'.join(map(str, e['loc']))} = {e['input']!r}: "
                             f"{e['msg']}" for e in err.errors()]
            except ValueError as err:
                problems.append(str(err))
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _describe_error(err: ErrorDetails, raw: dict[str, Any]) -> str:
    if not err["loc"]:  # a check across sections names its keys itself
        return err["msg"].removeprefix("Value error, ")
    key = ".".join(str(part) for part in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (remove it or check its spelling)"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    try:
        value = repr(get_dotted(raw, key))
    except KeyError:
        value = repr(err.get("input"))
    return f"{key} = {value}: {err['msg']}"


def validate_params(raw: dict[str, Any], source: str = "params.yaml") -> Config:
    """Validate a raw params dict, raising ParamsError listing every bad key with its value and the rule."""
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        lines = [_describe_error(e, raw) for e in err.errors()]
        raise ParamsError(f"invalid params in {source}:\n  " + "\n  ".join(lines)) from None


def load_config(root: Path, profile: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """params.yaml + profile + overrides, validated."""
    source = "params.yaml" + (f" + profile {profile}" if profile else "") + (" + overrides" if overrides else "")
    return validate_params(load_params(root, profile, overrides), source)


def effective_params(cfg: Config) -> dict[str, Any]:
    """The validated params with every default filled in, as plain JSON-able data (what fingerprints hash)."""
    return cfg.model_dump(mode="json")
