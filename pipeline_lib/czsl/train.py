"""Training and prediction for SAM-CZSL.

Frozen mode reads cached projected tokens (N, 1 + L, D) from the features store and trains only the prompts and
VAC, which is fast; LoRA mode runs the (LoRA-wrapped) vision encoder on images each step. Losses (spec 3.3 / 6):
L = L_base(img) + L_vac, L_base = CE_comp + w_a CE_attr + w_o CE_obj with comp logits over train pairs only, and
L_vac = (1 - alpha) L_base^vac + alpha tau^2 KL(p_sa || p_vac) with the SA side detached (alpha = 0 without KL).
Checkpoint selection: every evaluation's closed-world val AUC (standard evaluator) is replaced by the median of the
`cfg.select_window` evaluations centred on it (the first and last evaluations, lacking a full window, are not
candidates), and the checkpoint with the best such value is kept: a median of 3 ignores any single-epoch spike
(val AUC moved by about +-0.1 between epochs on the small benchmark), which a plain best-epoch rule selects.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.model import SamCzsl, Variant
from pipeline_lib.czsl.prompts import PromptLearner, Tokenizer
from pipeline_lib.czsl.sparse import sparse_alignment

log = logging.getLogger(__name__)

Progress = Callable[..., Iterable]


def quiet_progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    """tqdm unless CI=true (used when no stage context supplies a progress wrapper)."""
    from tqdm.auto import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, disable=os.environ.get("CI") == "true"))


# ---------------------------------------------------------------------------------------------------- inputs


@dataclass
class SplitData:
    """One split: labels plus a way to get visual tokens (cached tokens, or image paths for LoRA mode)."""

    attr: torch.Tensor  # (N,) attr index
    obj: torch.Tensor  # (N,) obj index
    label: torch.Tensor  # (N,) train: index in train_pairs; val/test: index in the world's pairs
    tokens: torch.Tensor | None = None  # (N, 1 + L, D) projected, not normalised (frozen mode)
    paths: list[str] | None = None  # image files (LoRA mode)

    def __len__(self) -> int:
        return int(self.attr.shape[0])


class TokenSource:
    """Visual tokens for row indices: slices of the cache, or the (LoRA) encoder run on the images.

    Token 0 is always the backbone's global image embedding (CLS for 'tok' pooling, the mean patch token for 'avg'
    pooling): for an avg-pooled tower the raw CLS token is never trained into the joint space, so the "CLS" of the
    baseline and of SA's token set is the embedding the backbone was trained with.
    """

    def __init__(
        self, split: SplitData, device: torch.device, *, clip: nn.Module | None = None,
        preprocess: Callable | None = None,
    ) -> None:
        if split.tokens is None and (split.paths is None or clip is None or preprocess is None):
            raise ValueError("a split needs cached tokens, or image paths with a model and a preprocess transform")
        self.split, self.device, self.clip, self.preprocess = split, device, clip, preprocess

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.split.tokens is not None:
            return self.split.tokens[idx].to(self.device, torch.float32)  # (B, T, D)
        from pipeline_lib.data.images import load_rgb

        images = torch.stack([self.preprocess(load_rgb(self.split.paths[i])) for i in idx.tolist()])  # (B, 3, H, W)
        return encoder_tokens(self.clip, images.to(self.device))  # (B, T, D)


def global_token_kind(clip: nn.Module) -> str:
    """What token 0 of `encoder_tokens` is: a class token, or the mean of the patch tokens (avg-pooling towers),
    which sparse alignment's max over [token 0, patches] cannot add information to."""
    return "class token" if getattr(clip.visual, "pool_type", "tok") == "tok" else "patch mean"


def encoder_tokens(clip: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[global embedding, patch tokens] (B, 1 + L, D) in the joint space, from the shared tower hook."""
    from pipeline_lib.backbone.hooks import image_token_features

    tokens = image_token_features(clip, images)  # (B, 1 + L, D), CLS first
    visual = clip.visual
    pool = getattr(visual, "pool_type", "tok")
    if pool == "tok":
        return tokens
    if pool == "avg" and not getattr(visual, "final_ln_after_pool", False):
        pooled = tokens[:, 1:].mean(dim=1, keepdim=True)  # (B, 1, D) = encode_image for avg pooling (ln/proj linear)
    else:
        pooled = clip.encode_image(images).unsqueeze(1)  # (B, 1, D)
    return torch.cat([pooled, tokens[:, 1:]], dim=1)


# ---------------------------------------------------------------------------------------------------- model


def build_model(
    cfg: CzslConfig, variant: Variant, clip: nn.Module, tokenizer: Tokenizer, attrs: list[str], objs: list[str],
    dim: int, device: torch.device, text_encoder: Callable | None = None, seed: int = 0,
) -> SamCzsl:
    """Seeded construction so every variant of one seed starts from the same prompt / VAC initialisation."""
    torch.manual_seed(seed)
    prompts = PromptLearner(
        clip, tokenizer, attrs, objs, context_length=cfg.context_length, prompt_init=cfg.prompt_init,
        attr_dropout=cfg.attr_dropout, text_encoder=text_encoder,
    )
    model = SamCzsl(
        prompts, dim, variant, logit_scale=cfg.logit_scale, sa_topk=cfg.sa_topk, sa_chunk=cfg.sa_chunk,
        vac_blocks=cfg.vac_blocks, vac_heads=cfg.vac_heads, vac_mlp_ratio=cfg.vac_mlp_ratio,
        vac_dropout=cfg.vac_dropout,
    )
    return model.to(device)


def loss_terms(
    logits: dict[str, torch.Tensor], y_pair: torch.Tensor, y_attr: torch.Tensor, y_obj: torch.Tensor,
    cfg: CzslConfig, variant: Variant,
) -> dict[str, torch.Tensor]:
    """Every loss term of a batch; `loss` is the one optimised."""

    def base(prefix: str) -> torch.Tensor:
        return (F.cross_entropy(logits[f"{prefix}_comp"], y_pair)
                + cfg.w_attr * F.cross_entropy(logits[f"{prefix}_attr"], y_attr)
                + cfg.w_obj * F.cross_entropy(logits[f"{prefix}_obj"], y_obj))

    out = {"base": base("img")}
    total = out["base"]
    if variant.use_vac:
        out["base_vac"] = base("vac")
        alpha = cfg.kl_alpha if variant.use_kl else 0.0
        tau = cfg.kl_temperature
        if variant.use_kl:
            teacher = (logits["img_comp"].detach() / tau).softmax(dim=-1)  # (B, P_train)
            student = (logits["vac_comp"] / tau).log_softmax(dim=-1)  # (B, P_train)
            out["kl"] = F.kl_div(student, teacher, reduction="batchmean") * tau**2
            total = total + (1 - alpha) * out["base_vac"] + alpha * out["kl"]
        else:
            total = total + out["base_vac"]
    out["loss"] = total
    return out


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    best_epoch: int
    best_val_auc: float
    history: list[dict] = field(default_factory=list)  # one row per step: epoch, step, loss terms
    val_curve: list[dict] = field(default_factory=list)  # one row per evaluation: epoch, val_auc
    trainable_params: int = 0


def trainable_parameters(model: SamCzsl, lora_params: list[nn.Parameter] | None = None) -> list[dict]:
    """Optimiser groups: prompts + VAC at cfg.lr; LoRA weights (if any) in their own group."""
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "name": "head"}]
    if lora_params:
        groups.append({"params": list(lora_params), "name": "lora"})
    return groups


def train_model(
    model: SamCzsl, train: SplitData, train_pairs: torch.Tensor, cfg: CzslConfig, *, source: TokenSource,
    val_auc: Callable[[SamCzsl], float], lora_params: list[nn.Parameter] | None = None,
    progress: Progress = quiet_progress, device: torch.device | None = None, seed: int = 0,
) -> TrainResult:
    """Adam over the head (and LoRA) parameters; keeps the state with the best smoothed val AUC (ties -> earlier)."""
    device = device or next(model.parameters()).device
    groups = trainable_parameters(model, lora_params)
    opt = torch.optim.Adam(
        [{"params": g["params"], "lr": cfg.lora_lr if g["name"] == "lora" else cfg.lr} for g in groups],
        weight_decay=cfg.weight_decay,
    )
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    pairs = train_pairs.to(device)
    y_pair, y_attr, y_obj = train.label.to(device), train.attr.to(device), train.obj.to(device)
    result = TrainResult(best_epoch=-1, best_val_auc=-1.0,
                         trainable_params=sum(p.numel() for g in groups for p in g["params"]))
    snapshots: list[dict] = []  # one per evaluation (a few MB each: head and LoRA weights only)
    step = 0
    for epoch in progress(range(1, cfg.epochs + 1), total=cfg.epochs, desc=f"czsl {model.variant.name}"):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            idx = perm[start : start + cfg.batch_size]
            tokens = source(idx)  # (B, T, D)
            logits = model(tokens, model.texts(pairs))
            terms = loss_terms(logits, y_pair[idx], y_attr[idx], y_obj[idx], cfg, model.variant)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            opt.step()
            step += 1
            result.history.append({"variant": model.variant.name, "epoch": epoch, "step": step,
                                   **{k: v.item() for k, v in terms.items()}})
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            auc = float(val_auc(model))
            result.val_curve.append({"variant": model.variant.name, "epoch": epoch, "val_auc": auc})
            log.info("czsl %s epoch %d: loss %.4f, val AUC %.4f", model.variant.name, epoch,
                     result.history[-1]["loss"], auc)
            snapshots.append(_snapshot(model, lora_params))
    aucs = [row["val_auc"] for row in result.val_curve]
    if aucs:
        smoothed = smooth(aucs, cfg.select_window)
        best = int(np.nanargmax(smoothed))  # first maximum: ties -> earlier epoch
        result.best_epoch, result.best_val_auc = result.val_curve[best]["epoch"], float(smoothed[best])
        _restore(model, lora_params, snapshots[best])
    model.eval()
    return result


def smooth(values: list[float], window: int) -> np.ndarray:
    """Centred running median over `window` points; NaN where the window does not fit (the ends).

    Ends are left out rather than shrunk: a two-point window at the end is the mean with a possible spike. With fewer
    points than `window`, the values are returned as they are.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) < window:
        return x
    half = window // 2
    out = np.full(len(x), np.nan)
    for i in range(half, len(x) - (window - 1 - half)):
        out[i] = np.median(x[i - half : i - half + window])
    return out


def _snapshot(model: SamCzsl, lora_params: list[nn.Parameter] | None) -> dict:
    return {"head": copy.deepcopy(model.state_dict()), "lora": [p.detach().clone() for p in lora_params or []]}


def _restore(model: SamCzsl, lora_params: list[nn.Parameter] | None, state: dict) -> None:
    model.load_state_dict(state["head"])
    with torch.no_grad():
        for p, v in zip(lora_params or [], state["lora"], strict=False):
            p.copy_(v)


# ---------------------------------------------------------------------------------------------------- prediction


@dataclass
class Predictions:
    """Per-sample outputs over a world's pairs (rows follow the split order)."""

    pbar_sa: torch.Tensor  # (N, P) p_bar of the image branch (CLS or SA)
    pbar_vac: torch.Tensor | None  # (N, P) p_bar of VAC
    p_vac: torch.Tensor | None  # (N, P) softmax of VAC composition logits (the bank's pseudo-labels / entropy)
    v: torch.Tensor | None  # (N, D) normalised VAC features
    cls: torch.Tensor  # (N, D) normalised CLS tokens
    comp_text: torch.Tensor  # (P, D) normalised composition texts
    img_for_gap: torch.Tensor  # (N, D) the row's image-side feature for the ground-truth composition


@torch.no_grad()
def predict(
    model: SamCzsl, source: TokenSource, n: int, pairs: torch.Tensor, gt_pair: torch.Tensor, *, batch_size: int = 256,
) -> Predictions:
    """Run the trained head over a split. gt_pair (N,) is used only to pick the feature for the gap diagnostic."""
    model.eval()
    device = next(model.parameters()).device
    pairs = pairs.to(device)
    texts = model.texts(pairs)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("sa", "vac", "p_vac", "v", "cls", "gap")}
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        tokens = source(idx)  # (B, T, D)
        logits = model(tokens, texts)
        pb = model.pbars(logits, pairs)
        out["sa"].append(pb["sa"].cpu())
        out["cls"].append(F.normalize(tokens[:, 0], dim=-1).cpu())
        gt_text = texts["comp"][gt_pair[idx].to(device)]  # (B, D)
        if "v" in logits:
            out["vac"].append(pb["vac"].cpu())
            out["p_vac"].append(logits["vac_comp"].softmax(dim=-1).cpu())
            out["v"].append(logits["v"].cpu())
            out["gap"].append(logits["v"].cpu())
        elif model.variant.token_branch == "sa":
            _, tok = sparse_alignment(tokens, gt_text, topk=1, chunk=model.sa_chunk, return_index=True)  # (B, B)
            sel = tok.diagonal()  # (B,) best token for each sample's own text
            out["gap"].append(F.normalize(tokens[torch.arange(len(idx)), sel.to(tokens.device)], dim=-1).cpu())
        else:
            out["gap"].append(out["cls"][-1])

    def cat(k: str) -> torch.Tensor | None:
        return torch.cat(out[k]) if out[k] else None

    return Predictions(pbar_sa=cat("sa"), pbar_vac=cat("vac"), p_vac=cat("p_vac"), v=cat("v"), cls=cat("cls"),
                       comp_text=texts["comp"].cpu(), img_for_gap=cat("gap"))


def modality_gap(img: torch.Tensor, text: torch.Tensor, gt_pair: torch.Tensor) -> dict[str, float]:
    """Modality-gap measures between image features (N, D) and composition texts (P, D).

    centroid_gap: || mean_i n(img_i) - mean_i n(t_{y_i}) || (Liang et al.'s gap, over matched pairs).
    rmg (relative modality gap): mean matched cosine distance 1 - cos(img_i, t_{y_i}) divided by the mean distance
    to all composition texts; it falls as images move towards their own text relative to the others.
    """
    i = F.normalize(img.float(), dim=-1)  # (N, D)
    t = F.normalize(text.float(), dim=-1)  # (P, D)
    matched = t[gt_pair]  # (N, D)
    d_match = (1 - (i * matched).sum(-1)).mean()
    d_all = (1 - i @ t.t()).mean()
    return {"centroid_gap": float((i.mean(0) - matched.mean(0)).norm()), "rmg": float(d_match / d_all)}


def seed_everything(seed: int) -> None:
    """Deterministic CPU runs: seeded torch / numpy and deterministic algorithms where available."""
    torch.manual_seed(seed)
    np.random.seed(seed)
