"""params.yaml `backbone` section: which open_clip model to use and how the tiny one is pretrained."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline_lib.engine.configbase import Section

#: The default backbone: the tiny ViT registered by pipeline_lib.backbone.tiny (kept here as a plain string so the
#: config module does not import torch or open_clip).
DEFAULT_TINY_MODEL = "bf-tiny-vit-32"


class PretrainConfig(Section):
    """Contrastive pretraining of a tiny CLIP on the shapes corpus (ignored for real backbones with weights)."""

    # 1600 steps at batch 128 is where zero-shot shape passes 0.6 in the measured recipe (DESIGN.md section 2).
    steps: int = Field(1600, ge=1)
    # Batch 128: InfoNCE needs enough negatives per step; 128 fits 2 CPU cores at ~0.35 s/step.
    batch_size: int = Field(128, ge=2)
    # AdamW peak learning rate of the measured recipe.
    lr: float = Field(1e-3, gt=0.0)
    # Decoupled weight decay on matrices only (not norms, biases, embeddings, logit scale).
    weight_decay: float = Field(0.05, ge=0.0)
    # Linear warm-up before the cosine decay keeps the first steps of a randomly initialised transformer stable.
    warmup_steps: int = Field(100, ge=0)
    # The cosine decays to this fraction of the peak learning rate. A floor of 0.1 keeps the last few hundred steps
    # learning: held-out shape accuracy 0.559 -> 0.613 (seed 0) at 1600 steps, same step count and cost.
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    # Seeds the initialisation, batch order and caption sampling (everything random in pretraining).
    seed: int = 0
    # Share of each batch made of whole shape-contrast groups (corpus `group` column: images identical but for shape);
    # the prototype ViT that learned shape batched half of each batch this way.
    group_fraction: float = Field(0.5, ge=0.0, le=1.0)
    # Share of captions that name the shape with at most one other factor: keeps the few-shot class prompts
    # ("a photo of a star.") in the text distribution the model is trained on.
    partial_caption_prob: float = Field(0.2, ge=0.0, le=1.0)
    # Fraction of the corpus held out (by group when the corpus has groups) for zero-shot evaluation.
    holdout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # Cap on held-out images scored at each evaluation (keeps periodic evals cheap).
    eval_images: int = Field(2000, ge=1)
    # A loss-curve row every this many steps.
    log_every: int = Field(20, ge=1)
    # Zero-shot accuracies on held-out images every this many steps (0 = only at the end).
    eval_every: int = Field(400, ge=0)
    # A resumable checkpoint every this many steps (0 = never; a killed run then restarts from scratch).
    checkpoint_every: int = Field(200, ge=0)
    # Gradient-norm clip (0 = off); guards the early steps when the logit scale moves fast.
    grad_clip: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _warmup_within_steps(self) -> PretrainConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(
                f"backbone.train.warmup_steps={self.warmup_steps} must be smaller than backbone.train.steps="
                f"{self.steps}"
            )
        return self


class DiagnoseConfig(Section):
    """Modality-gap diagnostics on the few-shot feature store (the `diagnose` stage)."""

    # The classification dataset (a key of `datasets.classification`) whose features are measured; the claims
    # stage judges the few-shot claims on the same dataset, so the gap diagnostics explain them.
    dataset: str = "shapes"

    # Feature-store split whose images are measured (test: the largest, never used for fitting).
    split: Literal["train", "val", "test"] = "test"
    # Singular values (and image-feature directions) of the text projection below this count as weak.
    weak_atol: float = Field(0.3, gt=0.0)
    # Shot counts for the class-mean prototype baseline (prototypes from the train split).
    shots: list[int] = Field(default_factory=lambda: [1, 4, 16])
    # Draws of the shots per count; the mean and std over draws are reported.
    seeds: int = Field(5, ge=1)
    # Bins of the cosine histograms in plots/gap_similarity.csv.
    bins: int = Field(40, ge=2)
    # Images in the image-image histogram (pairs grow quadratically).
    histogram_images: int = Field(1000, ge=2)

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, value: list[int]) -> list[int]:
        if not value or any(k < 1 for k in value):
            raise ValueError(f"backbone.diagnose.shots={value!r}: expected a non-empty list of positive shot counts")
        return sorted(set(value))


class BackboneConfig(Section):
    """Which open_clip model the pipeline adapts."""

    # An open_clip architecture name (open_clip.list_models()) or one of the tiny models from backbone.tiny.
    model: str = DEFAULT_TINY_MODEL
    # None: pretrain the tiny model from scratch on the shapes corpus; an open_clip tag ("openai", "laion2b_s34b_b88k")
    # downloads those weights; a path to a local .pt/.bin/.safetensors file loads it (nothing is downloaded).
    pretrained: str | None = None
    # "auto": QuickGELU exactly when the weights were trained with it (OpenAI tags; open_clip itself only warns);
    # true/false force it, e.g. for a local copy of OpenAI weights.
    force_quick_gelu: Literal["auto"] | bool = "auto"
    # Pretraining recipe for tiny models.
    train: PretrainConfig = PretrainConfig()
    # Modality-gap diagnostics (a separate stage: changing them never retrains the backbone).
    diagnose: DiagnoseConfig = DiagnoseConfig()

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("backbone.model is empty; expected an open_clip model name such as 'ViT-B-16'")
        return value

    @field_validator("pretrained")
    @classmethod
    def _pretrained_not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(
                "backbone.pretrained is an empty string; use null (train the tiny model), an open_clip tag, or a path"
            )
        return value

    @property
    def is_tiny(self) -> bool:
        """True when the model is one of the tiny shapes-world models (trained here unless weights are given)."""
        return self.model.startswith("bf-tiny-")

    @property
    def trains_here(self) -> bool:
        """True when the backbone stage pretrains the model itself (a tiny model with no weights given)."""
        return self.is_tiny and self.pretrained is None

    def local_weights(self) -> Path | None:
        """The local weights file named by `pretrained`, or None when it is a tag or unset."""
        if self.pretrained is None:
            return None
        looks_like_path = any(sep in self.pretrained for sep in ("/", "\\")) or self.pretrained.endswith(
            (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        )
        return Path(self.pretrained).expanduser() if looks_like_path else None
