"""Params of the `features` stage: what is extracted, how train views are augmented, how stores are laid out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pipeline_lib.engine.configbase import Section


class AugmentConfig(Section):
    """Offline augmentation of few-shot train images (SeMoBridge spec 1.3), applied before the eval transform.

    Defaults suit the 32 px shapes world: colour is a class attribute there, so colour jitter is off, and crops keep
    most of the object (a small scale would cut shapes in half and change their class).
    """

    rrc_scale: tuple[float, float] | None = (0.7, 1.0)  # RandomResizedCrop area range, ratio (1, 1); None = no crop
    random_flip: bool = True  # horizontal flip with p = 0.5 (shapes are mirror-symmetric up to rotation)
    horizontal_flip: bool = False  # deterministic mirror (the spec's E = 1 "hflip" recipe)
    color_jitter: bool = False  # off by default: jittering hue would move images across colour classes
    brightness: float = Field(0.4, ge=0.0)  # ColorJitter strengths as in the spec (used only if color_jitter)
    contrast: float = Field(0.4, ge=0.0)
    saturation: float = Field(0.4, ge=0.0)
    hue: float = Field(0.1, ge=0.0, le=0.5)

    @field_validator("rrc_scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not (0.0 < v[0] <= v[1] <= 1.0):
            raise ValueError(f"features.augment.rrc_scale={v!r}: expected 0 < low <= high <= 1")
        return v


class NamedPaths(Section):
    """A section whose text fields name files or folders: a name YAML read as a number is still a name.

    (EuroSAT's CoOp layout keeps its images in `2750/`; `-S features.fewshot.image_dir=2750` must mean that folder.)
    """

    @field_validator("*", mode="before")
    @classmethod
    def _names_are_text(cls, v: object, info: ValidationInfo) -> object:
        text_field = cls.model_fields[info.field_name or ""].annotation in (str, str | None)
        return str(v) if text_field and isinstance(v, int | float) and not isinstance(v, bool) else v


class FewshotSource(NamedPaths):
    """A CoOp-format classification dataset: root/image_dir/<relpath> images and root/split_file."""

    # None = the shapes world published by the data stage (artifacts/data/fewshot/shapes); relative paths are taken
    # from the project root, so a user can point at e.g. /data/oxford_pets without touching code.
    root: str | None = None
    split_file: str = "split_zhou_Shapes.json"  # CoOp split json: {"train"|"val"|"test": [[relpath, label, name]]}
    image_dir: str = "images"  # folder under root that relpaths are relative to
    dataset_name: str = "Shapes"  # picks the CoOp prompt template(s) in pipeline_lib.features.prompts


class CzslSource(NamedPaths):
    """A CZSL dataset in the standard layout (compositional-split-natural + metadata .t7 + images/)."""

    root: str | None = None  # None = artifacts/data/czsl/shapes from the data stage
    enabled: bool = True  # skip the CZSL store when the user has no CZSL data


class RetrievalTextSource(NamedPaths):
    """A text-retrieval parquet with columns text, group, split ("query"|"gallery")."""

    path: str | None = None  # None = artifacts/data/retrieval/texts.parquet from the data stage
    enabled: bool = True


class FeaturesConfig(Section):
    """Everything the features stage reads; all of it (and nothing from runtime) enters its fingerprint."""

    batch_size: int = Field(128, ge=1)  # spec 1.1 uses 128; bigger only helps on a GPU
    views: int = Field(4, ge=1)  # V views per train image, view 0 un-augmented (spec's K' = K * (E + 1), E = V - 1)
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0  # augmentation seed; view j of image i depends only on (seed, i, j), so reruns are identical
    patch_tokens: bool = True  # CZSL tokens (N, 1 + L, D) for sparse alignment / OVI; off saves most of the store
    dtype: Literal["float32", "float16"] = "float32"  # stored dtype; the spec runs everything in fp32
    amp: bool = True  # bf16 autocast on CUDA (faster, slightly different numbers); CPU always runs fp32
    rows_per_chunk: int = Field(256, ge=1)  # read unit along samples (~128 kB at D = 128)
    rows_per_shard: int = Field(2048, ge=1)  # write unit = resumable block; keeps a store to tens of files
    templates: list[str] | None = None  # None = clip_ensemble set of fewshot.dataset_name (prompts.py)
    cupl_file: str | None = None  # optional CuPL json {classname: [sentence, ...]}, appended to the templates
    fewshot: FewshotSource = FewshotSource()
    czsl: CzslSource = CzslSource()
    retrieval_text: RetrievalTextSource = RetrievalTextSource()

    @model_validator(mode="after")
    def _shard_multiple_of_chunk(self) -> FeaturesConfig:
        if self.rows_per_shard % self.rows_per_chunk:
            raise ValueError(
                f"features.rows_per_shard={self.rows_per_shard} must be a multiple of "
                f"features.rows_per_chunk={self.rows_per_chunk} (a shard packs whole chunks)"
            )
        return self

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("features.templates=[]: expected at least one template, or null for the default")
            bad = [t for t in v if t.count("{}") != 1]
            if bad:
                raise ValueError(f"features.templates {bad!r}: each template needs exactly one '{{}}' class slot")
        return v
