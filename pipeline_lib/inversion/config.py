"""params.yaml `inversion` section: OTI (image -> text-side feature) and OVI (text -> image-side feature).

Defaults follow the reference implementation of Cross-the-Gap (ICLR 2025): AdamW lr 0.02, wd 0.01, N(0, 0.02) init,
loss mean(1 - cos), batch 64, OTI 150 steps with R = 1 pseudo-token in "a photo of {}", OVI 1000 steps with P = 1
pseudo-patch, fp16 autocast + GradScaler on CUDA, last iterate kept.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from pipeline_lib.engine.configbase import Section


class OptimConfig(Section):
    """What OTI and OVI share: per-sample parameters optimised in batches with AdamW against a frozen encoder."""

    # Fixed step count, no early stopping: the last iterate is kept, as in the reference (retrieval peaks earlier,
    # which the snapshots below measure instead of selecting on).
    steps: int = Field(150, ge=1)
    # Reference optimiser: AdamW with a constant learning rate, no warm-up or schedule.
    lr: float = Field(0.02, gt=0.0)
    # Decoupled weight decay is the only regulariser of the pseudo-tokens (shrinks them by lr*wd per step).
    weight_decay: float = Field(0.01, ge=0.0)
    # N(0, 0.02): the scale of CLIP's own token-embedding initialisation.
    init_std: float = Field(0.02, gt=0.0)
    # Samples optimised together as one batch of independent parameters; also the runner's resumable block size.
    batch_size: int = Field(64, ge=1)
    # Steps after which the features of the current iterate are recorded (0 = the initialisation), so retrieval
    # versus optimisation length is measured from one run. Steps beyond `steps` are skipped; the final step is
    # always recorded.
    snapshot_steps: tuple[int, ...] = (1, 10, 25, 50, 100, 150)

    @field_validator("snapshot_steps")
    @classmethod
    def _sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(s < 0 for s in value) or list(value) != sorted(set(value)):
            raise ValueError(f"snapshot_steps={list(value)} must be non-negative, strictly increasing step numbers")
        return value

    @property
    def recorded_steps(self) -> tuple[int, ...]:
        """Snapshot steps that fall within `steps`, plus the final step (a shorter run keeps the early snapshots)."""
        return tuple(sorted({s for s in self.snapshot_steps if s <= self.steps} | {self.steps}))


class OtiConfig(OptimConfig):
    """Optimization-based Textual Inversion: a pseudo-word whose text feature matches a query image's feature."""

    # R = 1 pseudo-token for every backbone in the reference configs.
    num_tokens: int = Field(1, ge=1)
    # The prompt the pseudo-token(s) are placed in; "{}" receives the placeholders.
    template: str = "a photo of {}"
    # A character that CLIP's BPE turns into one token when surrounded by spaces (" £ " -> id 1950).
    placeholder: str = "£"

    @field_validator("template")
    @classmethod
    def _one_slot(cls, value: str) -> str:
        if value.count("{}") != 1:
            raise ValueError(f"template={value!r} must contain exactly one '{{}}' slot for the pseudo-token(s)")
        return value


#: P of the reference OVI configs per open_clip (model, pretrained tag) (spec 2.1; SLIP is not an open_clip model).
REFERENCE_PATCHES: dict[tuple[str, str], int] = {
    ("ViT-B-32", "openai"): 1,
    ("ViT-L-14", "openai"): 4,
    ("ViT-B-32", "datacomp_xl_s13b_b90k"): 1,
    ("ViT-L-14", "datacomp_xl_s13b_b90k"): 2,
    ("ViT-B-16-SigLIP", "webli"): 4,
}


class OviConfig(OptimConfig):
    """Optimization-based Visual Inversion: pseudo-patches whose image feature matches a query text's feature."""

    # OVI is the expensive direction: 1000 image-encoder forward+backward passes per batch in the reference.
    steps: int = Field(1000, ge=1)
    snapshot_steps: tuple[int, ...] = (1, 10, 50, 100, 250, 500, 1000)
    # P = 1 pseudo-patch (reference ViT-B/32 configs), repeated over the whole patch grid; P > 1 fills contiguous
    # runs of patches (patch i uses pseudo-patch floor(i * P / N)). "reference": the reference config's P of the
    # backbone (REFERENCE_PATCHES), so a suite keeps the paper's P when its backbone changes.
    num_patches: Annotated[int, Field(ge=1)] | Literal["reference"] = 1

    def patches(self, model: str, pretrained: str | None) -> int:
        """P for the backbone `model` / `pretrained` (open_clip names; a -quickgelu suffix is the same model)."""
        if self.num_patches != "reference":
            return self.num_patches
        key = (model.removesuffix("-quickgelu"), str(pretrained))
        if key not in REFERENCE_PATCHES:
            known = ", ".join(f"{m} {t}" for m, t in REFERENCE_PATCHES)
            raise ValueError(f"inversion.ovi.num_patches=reference: no reference P for backbone {model} {pretrained} "
                             f"(known: {known}); give num_patches as a number")
        return REFERENCE_PATCHES[key]


class InversionConfig(Section):
    """OTI / OVI settings and how their retrieval is evaluated."""

    # Whose results the claims compare: the image-retrieval dataset (a key of `datasets.image_retrieval`) of the OTI
    # claim and the text-retrieval dataset (a key of `datasets.text_retrieval`) of the OVI claim. Every listed dataset
    # gets its own `oti@` / `ovi@` instance; these only pin the claims.
    dataset: str = "shapes"
    text_dataset: str = "shapes"

    # Seeds the pseudo-token initialisation; each block derives its own seed from this and its index, so a resumed
    # run reproduces an uninterrupted one.
    seed: int = 42
    # fp16 autocast + GradScaler on CUDA as in the reference; CPU always runs fp32 (autocast would be a no-op).
    amp: bool = True
    oti: OtiConfig = OtiConfig()
    ovi: OviConfig = OviConfig()
    # Invert at most this many queries per direction (None = all); the smoke profile keeps the stage to seconds.
    max_queries: int | None = Field(None, ge=1)
    # Blocks per zarr shard: one block per chunk keeps resumption exact, many per shard keeps the file count low. A
    # shard is also the unit of work of a worker process (runtime.processes) or Dask task, so 1 lets the two heavy
    # OVI blocks of the default run (128 texts, batch 64) go to two workers side by side.
    blocks_per_shard: int = Field(1, ge=1)
    # Share of each direction's inverted queries held out as validation queries (split stratified by label/group,
    # seeded by `seed`). Which optimisation step is "selected" is decided by mAP on these alone, and every reported
    # retrieval number is measured on the remaining test queries, so no number is chosen on the queries it is
    # reported on. All queries are still inverted (each inversion is per query, so the split does not change them).
    val_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    # Queries ranked at once by the retrieval metrics (bounds the (chunk, gallery) similarity matrix in memory).
    query_chunk: int = Field(1024, ge=1)
    # OTI snapshot steps whose similarity distributions are plotted next to image-image and text-image (must be
    # among oti.snapshot_steps; those beyond oti.steps are skipped; the final step is always plotted).
    plot_steps: tuple[int, ...] = (1, 10, 50)
    # Histogram bins of the similarity-distribution plot over [-1, 1].
    histogram_bins: int = Field(50, ge=2)

    @model_validator(mode="after")
    def _plot_steps_are_snapshots(self) -> InversionConfig:
        missing = [s for s in self.plot_steps if s not in self.oti.snapshot_steps]
        if missing:
            raise ValueError(
                f"inversion.plot_steps {missing} are not in inversion.oti.snapshot_steps "
                f"{list(self.oti.snapshot_steps)}; plotted steps must be recorded snapshots"
            )
        return self

