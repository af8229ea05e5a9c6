"""Params of the few-shot stages (SeMoBridge spec sections 1-5): sampling, bridge, blend search, SeMoBridge-T."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline_lib.engine.configbase import Section

# Logit subsets: which of z1 (zero-shot), z2 (query vs bridged prototypes), z3 (bridged query vs image prototypes)
# enter the blend (spec 4, cfg.LOGITS). Variants are data: one entry per name.
LOGIT_SUBSETS: dict[str, tuple[str, ...]] = {
    "z1": ("z1",),
    "z2": ("z2",),
    "z3": ("z3",),
    "z1+z2": ("z1", "z2"),
    "z1+z3": ("z1", "z3"),
    "z2+z3": ("z2", "z3"),
    "all": ("z1", "z2", "z3"),
}

# Loss-ablation variants of SeMoBridge-T (spec 5.3; the authors' ablation configs). Each names the loss terms that
# stay on; the weights of the terms that stay on are those of TrainingConfig.
LOSS_VARIANTS: dict[str, tuple[str, ...]] = {
    "img": ("img",),
    "img+txt": ("img", "txt"),
    "img+txt+cons": ("img", "txt", "cons"),
    "all": ("img", "txt", "cons", "bias"),
}


def list_logit_subsets() -> list[str]:
    """Names accepted by `fewshot.logits`."""
    return list(LOGIT_SUBSETS)


def list_loss_variants() -> list[str]:
    """Names accepted by `fewshot.training.loss_variant`."""
    return list(LOSS_VARIANTS)


class BlendParams(Section):
    """The 7 blend scalars of spec 4: logit_c = l1 e^{-a(1-s1)} + l2 w_c e^{-b(1-s2)} + l3 w_c e^{-g(1-s3)}."""

    sigma: float = 0.01  # KL weight sharpness, w_c = exp(sigma * KL_c)
    alpha: float = 1.0  # z1 (zero-shot) sharpness
    beta: float = 1.0  # z2 (query vs bridged prototype) sharpness
    gamma: float = 1.0  # z3 (bridged query vs image prototype) sharpness
    lambda1: float = 0.5  # z1 weight (independent, not normalised)
    lambda2: float = 0.5  # z2 weight
    lambda3: float = 0.5  # z3 weight

    def as_tuple(self) -> tuple[float, ...]:
        """(sigma, alpha, beta, gamma, lambda1, lambda2, lambda3): the column order of batched parameter tensors."""
        return (self.sigma, self.alpha, self.beta, self.gamma, self.lambda1, self.lambda2, self.lambda3)


PARAM_NAMES: tuple[str, ...] = ("sigma", "alpha", "beta", "gamma", "lambda1", "lambda2", "lambda3")


class SearchConfig(Section):
    """Optuna TPE search of the blend on the full val split (spec 4)."""

    n_trials: int = Field(1000, ge=1)  # HP_SEARCH.N_TRIALS of the official configs
    # "tpe": fewshot.tpe, optuna 4.4's default TPE (the spec's TPESampler(seed)) reimplemented on numpy arrays: same
    # rules and random stream, ~1/6 of the sampler time. "optuna_tpe": the installed Optuna's TPESampler(seed,
    # multivariate=False, constant_liar=False), i.e. 4.4's flags on Optuna 5's kernels (bandwidths differ slightly).
    sampler: Literal["tpe", "optuna_tpe"] = "tpe"
    sigma_range: tuple[float, float] = (0.0, 1.5)  # uniform, continuous (suggest_float without log)
    alpha_range: tuple[float, float] = (0.0, 10.0)
    beta_range: tuple[float, float] = (0.0, 10.0)
    gamma_range: tuple[float, float] = (0.0, 10.0)
    lambda_range: tuple[float, float] = (0.0, 1.0)  # the same range for lambda1..3
    # Exact pruned evaluation (logits.BlendEvaluator): per query the top-k classes of each map plus the top KL classes;
    # rows the bounds cannot settle go to the next, wider level and finally to all classes, so these only trade speed.
    # Candidate widths of the successive pruning levels: a narrow first level (it sees every query every trial), and
    # enough top-KL classes and a wide last level for the large-sigma blends TPE converges to, where the KL weight
    # dominates. Over 100 parameter sets from a 1000-trial search at 1000 classes x 50k queries: 25-29 ms/trial,
    # vs 46 ms for (2, 8, 64) + 2 KL classes (2.3% of rows rescored over all classes, vs 0.03%).
    prune_topk: tuple[int, ...] = (2, 8, 64, 256)
    prune_kl_topk: int = Field(8, ge=0)  # the classes with the largest KL weight join every candidate set
    chunk_queries: int = Field(8192, ge=1)  # queries per block in full (unpruned) evaluation, bounds memory

    @field_validator("sigma_range", "alpha_range", "beta_range", "gamma_range", "lambda_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not (0.0 <= v[0] <= v[1]):
            raise ValueError(f"search range {v!r}: expected 0 <= low <= high (the blend needs non-negative scalars)")
        return v

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Per-parameter range in PARAM_NAMES order."""
        lam = self.lambda_range
        return {
            "sigma": self.sigma_range,
            "alpha": self.alpha_range,
            "beta": self.beta_range,
            "gamma": self.gamma_range,
            "lambda1": lam,
            "lambda2": lam,
            "lambda3": lam,
        }


class TrainingConfig(Section):
    """SeMoBridge-T optimisation (spec 5): full-batch AdamW on the support views, one step per "epoch"."""

    steps: int = Field(5000, ge=1)  # MAX_EPOCH; each epoch is one full-batch step
    lr: float = Field(1.5e-4, gt=0.0)  # Dassl AdamW base lr
    weight_decay: float = Field(0.01, ge=0.0)  # decoupled; applies to both inv_text and class_bias
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    warmup_steps: int = Field(500, ge=0)  # linear warmup epochs (WARMUP_RECOUNT: step 0 = min lr)
    warmup_min_lr: float = Field(1e-5, ge=0.0)  # lr at step 0 only (Dassl LinearWarmupScheduler quirk)
    lambda_it: float = Field(0.5, ge=0.0, le=1.0)  # image vs text loss balance
    lambda_c: float = Field(0.1, ge=0.0)  # consistency weight (higher values degrade, spec 5.3)
    lambda_b: float = Field(0.1, ge=0.0)  # bias-norm variance weight
    logit_scale: float = Field(100.0, gt=0.0)  # only L_img is scaled (trap 7.5)
    use_class_bias: bool = True  # CSB: per-class bias in EOS space for the support views
    final_model: Literal["best_val", "last_step"] = "best_val"  # ImageNet uses last_step in the official configs
    # Official behaviour (trap 7.12): z2 prototypes come from the last step, query bridging (z3) from the best-val
    # weights. "faithful" reproduces it; "consistent" takes both from the selected weights.
    checkpoint_mixing: Literal["faithful", "consistent"] = "faithful"
    # Val with the INIT blend after every N-th step and after the last (1: every step, the paper's rule; 0: never, for
    # final_model='last_step'). Each val pass ranks every val query: at ImageNet's 50k that dominates a CPU step.
    validate_every: int = Field(1, ge=0)
    loss_variant: str = "all"  # LOSS_VARIANTS key
    init: BlendParams = BlendParams()  # INIT blend used by per-step validation (never enqueued into the search)

    @field_validator("loss_variant")
    @classmethod
    def _known_variant(cls, v: str) -> str:
        if v not in LOSS_VARIANTS:
            raise ValueError(f"fewshot.training.loss_variant={v!r}: expected one of {list_loss_variants()}")
        return v

    @model_validator(mode="after")
    def _best_val_needs_val(self) -> TrainingConfig:
        if self.final_model == "best_val" and self.validate_every == 0:
            raise ValueError("fewshot.training.final_model='best_val' needs validation: validate_every >= 1 "
                             "(0 turns it off, which only final_model='last_step' allows)")
        return self


class FewshotConfig(Section):
    """Everything the few-shot stages read (SeMoBridge, SeMoBridge-T and their controls)."""

    shots: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16])  # K per run (spec 6)
    # sampling/TPE seeds; mean +- pop. std over them. The paper uses 3; 5 give the claims' paired intervals 4 degrees
    # of freedom (t quantile 2.78 instead of 4.30), enough to resolve the effects of a few points seen here.
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5])
    # Augmented copies per shot used as extra support views (spec's E; K' = K * (E + 1)). The features stage stores
    # V views per train image (view 0 un-augmented); E must be < V. E = 1 is the ImageNet/SUN/UCF recipe.
    augment_epochs: int = Field(1, ge=0)
    atol: float = Field(0.3, ge=0.0)  # absolute truncation of pinv(W_txt): singular values <= atol dropped
    logits: str = "all"  # LOGIT_SUBSETS key for the headline SeMoBridge / -T numbers
    subsets: list[str] = Field(default_factory=lambda: ["z1", "z2", "z3", "all"])  # training-free subsets reported
    search: SearchConfig = SearchConfig()
    training: TrainingConfig = TrainingConfig()
    run_training: bool = True  # SeMoBridge-T is the expensive part; off gives the training-free table only

    @field_validator("shots")
    @classmethod
    def _positive_shots(cls, v: list[int]) -> list[int]:
        if not v or any(k < 1 for k in v):
            raise ValueError(f"fewshot.shots={v!r}: expected a non-empty list of positive ints")
        return v

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("fewshot.seeds=[]: expected at least one seed")
        return v

    @field_validator("logits")
    @classmethod
    def _known_subset(cls, v: str) -> str:
        if v not in LOGIT_SUBSETS:
            raise ValueError(f"fewshot.logits={v!r}: expected one of {list_logit_subsets()}")
        return v

    @field_validator("subsets")
    @classmethod
    def _known_subsets(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in LOGIT_SUBSETS]
        if bad:
            raise ValueError(f"fewshot.subsets has unknown names {bad}: expected names from {list_logit_subsets()}")
        return v
