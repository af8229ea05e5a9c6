"""Params of the feature stages: how images and texts are encoded, how train views are augmented, how stores are laid
out."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

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


class FeaturesConfig(Section):
    """How features are extracted (`engine.stages.EXTRACTION`: every feature stage's fingerprint); the datasets they
    are extracted from are in the `datasets` section."""

    batch_size: int = Field(128, ge=1)  # spec 1.1 uses 128; bigger only helps on a GPU
    views: int = Field(4, ge=1)  # V views per train image, view 0 un-augmented (spec's K' = K * (E + 1), E = V - 1)
    augment: AugmentConfig = AugmentConfig()
    seed: int = 0  # augmentation seed; view j of image i depends only on (seed, i, j), so reruns are identical
    patch_tokens: bool = True  # CZSL tokens (N, 1 + L, D) for sparse alignment; off saves most of the store
    dtype: Literal["float32", "float16"] = "float32"  # stored dtype; the spec runs everything in fp32
    amp: bool = True  # bf16 autocast on CUDA (faster, slightly different numbers); CPU always runs fp32
    rows_per_chunk: int = Field(256, ge=1)  # read unit along samples (~128 kB at D = 128)
    rows_per_shard: int = Field(2048, ge=1)  # write unit = resumable block; keeps a store to tens of files

    @model_validator(mode="after")
    def _shard_multiple_of_chunk(self) -> FeaturesConfig:
        if self.rows_per_shard % self.rows_per_chunk:
            raise ValueError(
                f"features.rows_per_shard={self.rows_per_shard} must be a multiple of "
                f"features.rows_per_chunk={self.rows_per_chunk} (a shard packs whole chunks)"
            )
        return self

