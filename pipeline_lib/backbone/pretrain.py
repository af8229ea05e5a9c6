"""Contrastive (InfoNCE) pretraining of a tiny open_clip CLIP on the shapes-world corpus.

Every random draw of step t (batch indices, captions) comes from a generator seeded by (seed, t), and the model has no
dropout, so a run is a pure function of (corpus, config): a run resumed from a checkpoint ends bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import open_clip
import polars as pl
import torch
import torch.nn.functional as F

from pipeline_lib.backbone.config import PretrainConfig
from pipeline_lib.backbone.load import Backbone, create_backbone
from pipeline_lib.data import captions as data_captions
from pipeline_lib.optim.sparse_adamw import RowSparseAdamW

logger = logging.getLogger(__name__)

#: Captioned factors, in the order a caption names them; the few-shot classes are the shapes.
ATTRIBUTES: tuple[str, ...] = ("shape", "colour", "pattern", "size")
CHECKPOINT_FILE = "pretrain_checkpoint.pt"

Progress = Callable[..., Iterator[Any]]


# ----------------------------------------------------------------------------------------------------------- corpus
@dataclass
class Corpus:
    """The pretraining corpus: uint8 images (N, S, S, 3) and one label row per image."""

    images: np.ndarray
    labels: pl.DataFrame

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"corpus images must be uint8 (N, S, S, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError(f"corpus has {len(self.images)} images but {len(self.labels)} label rows")
        missing = [a for a in ATTRIBUTES if a not in self.labels.columns]
        if missing:
            raise ValueError(f"corpus labels lack columns {missing}; found {self.labels.columns}")

    def values(self, attribute: str) -> list[str]:
        """Sorted distinct values of one attribute (the zero-shot classes for it)."""
        return sorted(self.labels[attribute].cast(pl.String).unique().to_list())


def load_corpus(pretrain_dir: Path) -> Corpus:
    """Read images.npy + labels.parquet (written by the data stage) with errors naming the missing file."""
    pretrain_dir = Path(pretrain_dir)
    images_path, labels_path = pretrain_dir / "images.npy", pretrain_dir / "labels.parquet"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise FileNotFoundError(f"pretraining corpus file {path} not found: run the data stage first")
    return Corpus(images=np.load(images_path), labels=pl.read_parquet(labels_path))


def split_corpus(corpus: Corpus, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row indices; whole shape-contrast groups go to one side so no held-out object is seen."""
    n = len(corpus.labels)
    rng = np.random.default_rng([seed, 7])
    if "group" in corpus.labels.columns:
        group = corpus.labels["group"].fill_null(-1).to_numpy().astype(np.int64)
        unit = np.where(group >= 0, group, -1 - np.arange(n))  # ungrouped rows are units of their own
    else:
        unit = np.arange(n)
    units = np.unique(unit)
    held_units = rng.choice(units, size=max(1, round(holdout_fraction * len(units))), replace=False)
    held = np.isin(unit, held_units)
    if held.all():
        raise ValueError(f"holdout_fraction={holdout_fraction} leaves no training images out of {n}")
    return np.flatnonzero(~held), np.flatnonzero(held)


class BatchSampler:
    """Training batches where a fraction is made of whole shape-contrast groups (same image, only the shape varies).

    Groups force the loss to separate shapes that share every other factor; the rest of the batch is uniform.
    """

    def __init__(self, corpus: Corpus, train_idx: np.ndarray, group_fraction: float, seed: int) -> None:
        self.train_idx = np.asarray(train_idx)
        self.seed = seed
        self.group_fraction = group_fraction
        self.groups: list[np.ndarray] = []
        if "group" in corpus.labels.columns and group_fraction > 0:
            group = corpus.labels["group"].fill_null(-1).to_numpy()[self.train_idx]
            order = np.argsort(group, kind="stable")
            ids, starts = np.unique(group[order], return_index=True)
            for gid, members in zip(ids, np.split(order, starts[1:]), strict=True):
                if gid >= 0 and len(members) > 1:
                    self.groups.append(self.train_idx[members])

    def batch(self, step: int, size: int) -> np.ndarray:
        """Row indices of the batch of `step` (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, step, 1])
        picked: list[np.ndarray] = []
        n_grouped = 0
        if self.groups:
            budget = int(self.group_fraction * size)
            for g in rng.permutation(len(self.groups)):
                if n_grouped + len(self.groups[g]) > budget:
                    break
                picked.append(self.groups[g])
                n_grouped += len(self.groups[g])
        chosen = np.concatenate(picked) if picked else np.empty(0, dtype=np.int64)
        rest = self.train_idx[~np.isin(self.train_idx, chosen)] if len(chosen) else self.train_idx
        singles = rng.choice(rest, size=size - n_grouped, replace=len(rest) < size - n_grouped)
        return np.concatenate([chosen, singles]).astype(np.int64)


# --------------------------------------------------------------------------------------------------------- captions
class CaptionScheme(Protocol):
    """How label rows become training captions and how attribute values become zero-shot prompts."""

    def sample(self, rows: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[str]: ...

    def class_prompts(self, attribute: str, value: str, shapes: Sequence[str]) -> list[str]: ...


@dataclass
class WorldCaptions:
    """The shapes world's captions (pipeline_lib.data.captions) and its zero-shot prompts.

    Shape is classified with the few-shot class prompts (the class name alone, as the few-shot stage does); every
    other factor with prompts that name it together with every combination of the remaining factors, averaged, so
    no other factor biases the classifier.
    """

    partial_prob: float = 0.2
    vocab: dict[str, list[str]] = field(default_factory=dict)  # factor -> values, for the marginalised prompts

    def sample(self, rows: Sequence[dict[str, Any]], rng: np.random.Generator) -> list[str]:
        return data_captions.captions(rows, rng, partial_prob=self.partial_prob)

    def class_prompts(self, attribute: str, value: str, shapes: Sequence[str]) -> list[str]:
        if attribute == "shape":
            return data_captions.class_prompts([value])[0]
        return data_captions.factor_prompts(attribute, value, self.vocab)


# ------------------------------------------------------------------------------------------------------ model bits
def init_tiny_backbone(name: str, seed: int, device: torch.device | str = "cpu") -> Backbone:
    """A randomly initialised tiny backbone whose initial weights depend only on `seed` (global RNG untouched)."""
    return create_backbone(name, None, "auto", device, init_seed=seed)


def images_to_tensor(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> normalised float (B, 3, S, S): the model's eval transform for images already at size."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


def make_optimizers(model: torch.nn.Module, cfg: PretrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices only (open_clip's rule: no decay on gains, biases, logit scale).

    The token embedding is stepped by `RowSparseAdamW`: the same update, bit for bit, without reading the rows of the
    ~49k tokens the captions never use.
    """
    embedding = getattr(model, "token_embedding", None)
    table = embedding.weight if isinstance(embedding, torch.nn.Embedding) and embedding.weight.requires_grad else None
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or p is table:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizers: list[torch.optim.Optimizer] = [torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)]
    if table is not None:
        optimizers.append(RowSparseAdamW([table], lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                                         weight_decay=cfg.weight_decay))
    return optimizers


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over normalised features (B, D), (B, D)."""
    logits = logit_scale.exp() * image_features @ text_features.T  # (B, B)
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.inference_mode()
def encode_images(model: open_clip.CLIP, images: np.ndarray, mean, std, device, batch_size: int = 512) -> torch.Tensor:
    """Normalised image features (N, D) of uint8 images (N, S, S, 3)."""
    feats = []
    for start in range(0, len(images), batch_size):
        x = images_to_tensor(images[start : start + batch_size], mean, std).to(device)
        feats.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu())  # (b, D)
    return torch.cat(feats)


@torch.inference_mode()
def zero_shot_classifiers(
    model: open_clip.CLIP, tokenizer: Callable, scheme: CaptionScheme, values: dict[str, list[str]], device
) -> dict[str, torch.Tensor]:
    """Per attribute, class weights (C, D): the renormalised mean of each value's normalised prompt features."""
    out = {}
    for attribute, names in values.items():
        weights = []
        for value in names:
            prompts = scheme.class_prompts(attribute, value, values["shape"])
            t = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)  # (M, D)
            weights.append(F.normalize(t.mean(0), dim=-1).cpu())
        out[attribute] = torch.stack(weights)  # (C, D)
    return out


def zero_shot_accuracy(
    model: open_clip.CLIP,
    tokenizer: Callable,
    scheme: CaptionScheme,
    corpus: Corpus,
    idx: np.ndarray,
    values: dict[str, list[str]],
    mean,
    std,
    device,
) -> dict[str, float]:
    """Top-1 zero-shot accuracy per attribute on corpus rows `idx`."""
    was_training = model.training
    model.eval()
    feats = encode_images(model, corpus.images[np.sort(idx)], mean, std, device)  # (N, D)
    classifiers = zero_shot_classifiers(model, tokenizer, scheme, values, device)
    rows = corpus.labels[np.sort(idx)]
    acc = {}
    for attribute, weights in classifiers.items():
        truth = np.array([values[attribute].index(str(v)) for v in rows[attribute].to_list()])
        pred = (feats @ weights.T).argmax(dim=1).numpy()  # (N,)
        acc[attribute] = float((pred == truth).mean())
    model.train(was_training)
    return acc


class CachedTokenizer:
    """Token rows of captions seen before come from a cache: the corpus's captions repeat (a finite grammar), and
    the BPE tokenizer is a per-string function costing ~10 ms per batch of 128 in Python."""

    def __init__(self, tokenizer: Callable[[list[str]], torch.Tensor]) -> None:
        self.tokenizer = tokenizer
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(t for t in texts if t not in self.rows))
        if new:
            self.rows.update(zip(new, self.tokenizer(new), strict=True))
        return torch.stack([self.rows[t] for t in texts])  # (B, L)


# --------------------------------------------------------------------------------------------------------- training
@dataclass
class PretrainResult:
    """What a pretraining run produced (the model is trained in place)."""

    rows: list[dict[str, Any]]  # loss curve: step, loss, lr, logit_scale, zs_<attribute> on eval steps
    zero_shot: dict[str, float]  # final held-out zero-shot accuracy per attribute
    chance: dict[str, float]
    final_loss: float
    steps: int
    seconds: float  # wall time of the steps run by this process
    steps_run: int  # steps run by this process (less than `steps` after a resume)
    resumed_from: int
    held_out: int
    extra: dict[str, Any] = field(default_factory=dict)


def _config_key(cfg: PretrainConfig, model_name: str, n_images: int) -> str:
    # "optimizers": the checkpoint layout (one state per optimiser); checkpoints of another layout are ignored
    return json.dumps({"cfg": cfg.model_dump(), "model": model_name, "n": n_images, "layout": "optimizers"},
                      sort_keys=True)


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def _default_progress(iterable: Iterable, total: int | None = None, desc: str = "") -> Iterator:
    from tqdm.auto import tqdm

    quiet = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    return iter(tqdm(iterable, total=total, desc=desc, disable=quiet, leave=False))


def pretrain(
    model: open_clip.CLIP,
    tokenizer: Callable[[list[str]], torch.Tensor],
    corpus: Corpus,
    cfg: PretrainConfig,
    work_dir: Path,
    *,
    model_name: str = "",
    device: torch.device | str = "cpu",
    scheme: CaptionScheme | None = None,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> PretrainResult:
    """Train `model` in place; checkpoints in `work_dir` let a killed run continue where it stopped.

    `stop_after` ends the run after that many global steps (a checkpoint is written there), as a kill would; calling
    again with the same arguments resumes. The model must be freshly initialised with torch.manual_seed(cfg.seed)
    (see init_tiny_backbone) for runs to be reproducible.
    """
    device = torch.device(device)
    progress = progress or _default_progress
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    pp = open_clip.get_model_preprocess_cfg(model)
    mean, std = pp["mean"], pp["std"]
    if corpus.images.shape[1] != model.visual.image_size[0]:
        raise ValueError(
            f"corpus images are {corpus.images.shape[1]} px but {model_name or 'the model'} expects "
            f"{model.visual.image_size[0]} px: set data.image_size to the backbone's image size"
        )

    train_idx, held_idx = split_corpus(corpus, cfg.holdout_fraction, cfg.seed)
    eval_idx = np.random.default_rng([cfg.seed, 11]).permutation(held_idx)[: cfg.eval_images]
    values = {a: corpus.values(a) for a in ATTRIBUTES}
    scheme = scheme or WorldCaptions(partial_prob=cfg.partial_caption_prob, vocab=values)
    sampler = BatchSampler(corpus, train_idx, cfg.group_fraction, cfg.seed)
    label_rows = corpus.labels.select(list(ATTRIBUTES)).to_dicts()
    tokenize = CachedTokenizer(tokenizer)

    model.to(device).train()
    optimizers = make_optimizers(model, cfg)
    rows: list[dict[str, Any]] = []
    start = 0
    key = _config_key(cfg, model_name, len(corpus.labels))
    ckpt_path = work_dir / CHECKPOINT_FILE
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ckpt.get("key") == key:
            model.load_state_dict(ckpt["model"])
            for optimizer, state in zip(optimizers, ckpt["optimizers"], strict=True):
                optimizer.load_state_dict(state)
            rows, start = ckpt["rows"], int(ckpt["step"])
            logger.info("resuming pretraining at step %d/%d from %s", start, cfg.steps, ckpt_path)
        else:
            logger.warning("ignoring checkpoint %s: it belongs to other settings", ckpt_path)

    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    t0 = time.perf_counter()
    loss_value = rows[-1]["loss"] if rows else float("nan")
    for step in progress(range(start, end), total=end - start, desc="pretrain backbone"):
        lr = lr_at(step, cfg)
        for group in (g for optimizer in optimizers for g in optimizer.param_groups):
            group["lr"] = lr
        idx = sampler.batch(step, cfg.batch_size)
        rng = np.random.default_rng([cfg.seed, step, 2])
        captions = scheme.sample([label_rows[i] for i in idx], rng)
        images = images_to_tensor(corpus.images[idx], mean, std).to(device)
        tokens = tokenize(captions).to(device)  # (B, L)
        image_features = F.normalize(model.encode_image(images), dim=-1)  # (B, D)
        text_features = F.normalize(model.encode_text(tokens), dim=-1)  # (B, D)
        loss = clip_loss(image_features, text_features, model.logit_scale)
        model.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for optimizer in optimizers:
            optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"pretraining loss became {loss_value} at step {step}: lower backbone.train.lr")
        done = step + 1
        evaluate = cfg.eval_every > 0 and done % cfg.eval_every == 0 and done < cfg.steps
        if done % cfg.log_every == 0 or done == cfg.steps or evaluate:
            row: dict[str, Any] = {
                "step": done,
                "loss": loss_value,
                "lr": lr,
                "logit_scale": float(model.logit_scale.detach().exp()),
            }
            if evaluate:
                acc = zero_shot_accuracy(model, tokenizer, scheme, corpus, eval_idx, values, mean, std, device)
                row.update({f"zs_{a}": v for a, v in acc.items()})
                logger.info("step %d loss %.3f zero-shot %s", done, loss_value, acc)
            rows.append(row)
        if cfg.checkpoint_every > 0 and (done % cfg.checkpoint_every == 0 or done == end) and done < cfg.steps:
            _save_checkpoint(
                ckpt_path,
                {
                    "key": key,
                    "step": done,
                    "rows": rows,
                    "model": model.state_dict(),
                    "optimizers": [optimizer.state_dict() for optimizer in optimizers],
                },
            )
    seconds = time.perf_counter() - t0
    model.eval()
    final = zero_shot_accuracy(model, tokenizer, scheme, corpus, eval_idx, values, mean, std, device)
    if end == cfg.steps and rows and rows[-1]["step"] == cfg.steps:
        rows[-1].update({f"zs_{a}": v for a, v in final.items()})
    return PretrainResult(
        rows=rows,
        zero_shot=final,
        chance={a: 1.0 / len(v) for a, v in values.items()},
        final_loss=loss_value,
        steps=end,
        seconds=seconds,
        steps_run=max(0, end - start),
        resumed_from=start,
        held_out=len(eval_idx),
    )
