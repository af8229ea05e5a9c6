"""Open-world feasibility calibration (spec 2.5): word-vector feasibility scores, a val threshold, score filtering.

feas(a, o) for an unseen pair is the mean of
  obj side:  max cosine between o and any other object o' seen with a in train_pairs (-1 if none),
  attr side: max cosine between a and any other attribute a' seen with o in train_pairs (-1 if none);
seen pairs are set to 0. The vector follows the open-world pair order (attr-major attrs x objs).

Word vectors come from a GloVe-format text file ("word v1 v2 ...", e.g. GloVe 6B-300d) when one is configured, or
from a caller-supplied embedder (typically the backbone's own token embeddings, `backbone_word_embedder`); the
result records which source was used. Names are lowercased, renamed through an optional map, split on '_' (and on
'.' / spaces, which UT-Zappos names use) and the pieces' vectors averaged.

Filtering, as the references implement it: S * (M + seen_mask) with M = 1[feas >= tau]. Infeasible unseen pairs
become 0 (not -inf) and, when tau <= 0, seen pairs (feas = 0) are doubled. This only ranks infeasible pairs last
when scores are positive. The "mask" variant sets infeasible unseen scores to -1e10 instead and leaves seen pairs
alone. The threshold is chosen on VAL: 50 evenly spaced values over [min, max] of the unseen entries, best val AUC.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from pipeline_lib.czsl.data import CzslDataset
from pipeline_lib.czsl.evaluator import MASK_VALUE, ColumnTransform, CzslMetrics, Scores, evaluate

log = logging.getLogger(__name__)

FilterVariant = Literal["multiply", "mask"]
FILTER_VARIANTS: tuple[str, ...] = ("multiply", "mask")
N_THRESHOLDS = 50  # spec 2.5.2
WordEmbedder = Callable[[Sequence[str]], torch.Tensor]  # raw attr/obj names -> (n, d) float vectors

# Spec 2.5.1 names two UT-Zappos renames; callers extend the map (keys are matched lowercased).
DEFAULT_RENAMES: dict[str, str] = {"faux.fur": "fake_fur", "boots.ankle": "ankle_boots"}
_SPLIT_RE = re.compile(r"[_.\s]+")


def name_words(name: str, rename: Mapping[str, str] | None = None) -> list[str]:
    """Vocabulary words of an attr/obj name: lowercase, rename (DEFAULT_RENAMES updated by `rename`), split on '_',
    '.' and spaces."""
    key = name.lower()
    renames = {k.lower(): v for k, v in {**DEFAULT_RENAMES, **(rename or {})}.items()}
    key = renames.get(key, key)
    words = [w for w in _SPLIT_RE.split(key.lower()) if w]
    if not words:
        raise ValueError(f"name {name!r} has no words after lowercasing, renaming and splitting")
    return words


def load_word_vectors(path: Path, vocabulary: set[str]) -> dict[str, np.ndarray]:
    """Vectors of the requested words from a GloVe-format text file (only those lines are parsed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"word-vector file not found: {path} (expected GloVe text format 'word v1 v2 ...')")
    found: dict[str, np.ndarray] = {}
    dim: int | None = None
    with path.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            word, _, rest = line.rstrip("\n").partition(" ")
            if word not in vocabulary or word in found:
                continue
            try:
                vec = np.array(rest.split(), dtype=np.float32)
            except ValueError as exc:
                raise ValueError(f"{path}:{lineno}: word {word!r} has non-numeric values ({exc})") from exc
            if dim is None:
                dim = vec.size
            if vec.size == 0 or vec.size != dim:
                raise ValueError(f"{path}:{lineno}: word {word!r} has {vec.size} values; expected {dim} like the rest")
            found[word] = vec
    return found


def word_file_embedder(path: Path, rename: Mapping[str, str] | None = None) -> WordEmbedder:
    """Embedder over a GloVe-format file: each name is the mean of its words' vectors; unknown words are an error."""

    def embed(names: Sequence[str]) -> torch.Tensor:
        words = [name_words(n, rename) for n in names]
        vectors = load_word_vectors(path, {w for ws in words for w in ws})
        missing = sorted({f"{n} ({w})" for n, ws in zip(names, words, strict=True) for w in ws if w not in vectors})
        if missing:
            raise KeyError(
                f"{len(missing)} words are not in {path}: {missing[:10]}; add renames for them or use the backbone "
                "embedder fallback"
            )
        return torch.from_numpy(np.stack([np.mean([vectors[w] for w in ws], axis=0) for ws in words]))  # (n, d)

    return embed


def backbone_word_embedder(model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor]) -> WordEmbedder:
    """Fallback embedder: mean input token embedding of a name's BPE tokens in the backbone's own text tower.

    The name is cleaned as for prompts ('.' and '_' -> ' ', lowercase); SOT and EOT/padding are left out (open_clip
    tokenizers put SOT first and EOT at the arg-max id).
    """
    emb = getattr(model, "token_embedding", None)
    if emb is None and hasattr(model, "text"):
        emb = getattr(model.text, "token_embedding", None)
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"model {type(model).__name__} has no token_embedding nn.Embedding; expected an open_clip CLIP")

    @torch.no_grad()
    def embed(names: Sequence[str]) -> torch.Tensor:
        texts = [" ".join(_SPLIT_RE.split(n.lower())).strip() for n in names]
        ids = tokenizer(texts).to(emb.weight.device)  # (n, L)
        eot = ids.argmax(dim=1)  # (n,)
        out = []
        for i in range(ids.shape[0]):
            if int(eot[i]) <= 1:
                raise ValueError(f"name {names[i]!r} tokenises to no word tokens")
            out.append(emb.weight[ids[i, 1 : int(eot[i])]].float().mean(0))  # (W,)
        return torch.stack(out).cpu()  # (n, W)

    return embed


@dataclass(frozen=True)
class Feasibility:
    """Feasibility scores over the open-world pair order, and where the word vectors came from."""

    scores: torch.Tensor  # (A * O,) float32, attr-major; 0 for seen pairs
    seen_mask: torch.Tensor  # (A * O,) bool
    source: str  # e.g. "word_vectors:glove.6B.300d.txt" or "backbone_token_embeddings"

    def save(self, path: Path) -> None:
        """float32 .npy over the open-world pair order (the `czsl-eval --feasibility` input)."""
        np.save(Path(path), self.scores.numpy().astype(np.float32))


def compute_feasibility(
    attrs: Sequence[str],
    objs: Sequence[str],
    train_pairs: Sequence[tuple[str, str]],
    embed: WordEmbedder,
    source: str,
) -> Feasibility:
    """feas(a, o) per spec 2.5.1 over attrs x objs (attr-major); seen pairs are zeroed."""
    a_idx = {a: i for i, a in enumerate(attrs)}
    o_idx = {o: i for i, o in enumerate(objs)}
    n_a, n_o = len(attrs), len(objs)
    train = torch.zeros(n_a, n_o, dtype=torch.bool)  # (A, O)
    for a, o in train_pairs:
        if a not in a_idx or o not in o_idx:
            raise ValueError(f"train pair {(a, o)} uses a name outside attrs/objs")
        train[a_idx[a], o_idx[o]] = True
    vectors = embed([*attrs, *objs])  # (A + O, d): one call, so a word file is scanned once
    if vectors.ndim != 2 or vectors.shape[0] != n_a + n_o:
        raise ValueError(f"embedder returned {tuple(vectors.shape)} for {n_a + n_o} names; expected ({n_a + n_o}, d)")
    attr_sim = _cosine_matrix(vectors[:n_a])  # (A, A)
    obj_sim = _cosine_matrix(vectors[n_a:])  # (O, O)
    attr_sim.fill_diagonal_(float("-inf"))  # "any *other* attribute"
    obj_sim.fill_diagonal_(float("-inf"))

    obj_side = torch.full((n_a, n_o), -1.0)  # (A, O)
    for a in range(n_a):
        if train[a].any():
            obj_side[a] = obj_sim[:, train[a]].max(dim=1).values  # (O,) best o' seen with a
    attr_side = torch.full((n_a, n_o), -1.0)  # (A, O)
    for o in range(n_o):
        if train[:, o].any():
            attr_side[:, o] = attr_sim[:, train[:, o]].max(dim=1).values  # (A,) best a' seen with o
    obj_side[torch.isneginf(obj_side)] = -1.0  # only candidate was o itself (a seen pair, zeroed below)
    attr_side[torch.isneginf(attr_side)] = -1.0
    seen = train.reshape(-1)  # (A * O,)
    feas = ((obj_side + attr_side) / 2).reshape(-1) * (~seen).float()  # (A * O,)
    log.info("feasibility from %s over %d x %d pairs (%d seen)", source, n_a, n_o, int(seen.sum()))
    return Feasibility(scores=feas.float(), seen_mask=seen, source=source)


def _cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    v = torch.nn.functional.normalize(vectors.float(), dim=1)  # (n, d)
    return v @ v.T  # (n, n)


def dataset_feasibility(
    attrs: Sequence[str],
    objs: Sequence[str],
    train_pairs: Sequence[tuple[str, str]],
    *,
    word_vectors: Path | None = None,
    fallback: WordEmbedder | None = None,
    fallback_name: str = "backbone_token_embeddings",
    rename: Mapping[str, str] | None = None,
) -> Feasibility:
    """Feasibility from the configured word-vector file, else from the caller's fallback embedder.

    A configured file that is missing is an error (never a silent fallback).
    """
    if word_vectors is not None:
        return compute_feasibility(
            attrs,
            objs,
            train_pairs,
            word_file_embedder(Path(word_vectors), rename),
            source=f"word_vectors:{Path(word_vectors).name}",
        )
    if fallback is None:
        raise ValueError("no word-vector file configured and no fallback embedder given; expected one of them")
    return compute_feasibility(attrs, objs, train_pairs, fallback, source=fallback_name)


def threshold_candidates(feas: torch.Tensor, seen_mask: torch.Tensor, n: int = N_THRESHOLDS) -> np.ndarray:
    """n evenly spaced thresholds over [min, max] of the unseen entries (spec 2.5.2)."""
    unseen = feas[~seen_mask.to(torch.bool)]
    if unseen.numel() == 0:
        raise ValueError("every pair is seen; there is no unseen feasibility score to threshold")
    return np.linspace(float(unseen.min()), float(unseen.max()), n)


def feasibility_filter(
    feas: torch.Tensor, seen_mask: torch.Tensor, threshold: float, variant: FilterVariant = "multiply"
) -> ColumnTransform:
    """Row-chunk transform for the evaluator.

    multiply: S * (M + seen_mask), the references' rule (infeasible unseen -> 0; seen doubled when tau <= 0).
    mask: infeasible unseen -> -1e10, everything else unchanged.
    """
    if variant not in FILTER_VARIANTS:
        raise ValueError(f"filter variant={variant!r}; expected one of {FILTER_VARIANTS}")
    if feas.shape != seen_mask.shape or feas.ndim != 1:
        raise ValueError(f"feasibility {tuple(feas.shape)} and seen_mask {tuple(seen_mask.shape)}; expected (P,) each")
    feasible = feas.float() >= float(threshold)  # (P,) float32 comparison, as the references do
    seen = seen_mask.to(torch.bool)
    if variant == "multiply":
        factor = feasible.float() + seen.float()  # (P,) in {0, 1, 2}
        return lambda chunk: chunk * factor.to(chunk.device)
    keep = feasible | seen  # (P,)
    return lambda chunk: chunk.masked_fill(~keep.to(chunk.device), MASK_VALUE)


@dataclass(frozen=True)
class Calibration:
    """Outcome of the val threshold search."""

    threshold: float
    variant: str
    source: str
    val_metrics: CzslMetrics  # evaluator output at the chosen threshold
    thresholds: list[float] = field(default_factory=list)
    val_aucs: list[float] = field(default_factory=list)


def calibrate_threshold(
    val_scores: Scores,
    attr_labels: torch.Tensor,
    obj_labels: torch.Tensor,
    pair_labels: torch.Tensor,
    pair_attrs: torch.Tensor,
    pair_objs: torch.Tensor,
    feasibility: Feasibility,
    *,
    variant: FilterVariant = "multiply",
    n_thresholds: int = N_THRESHOLDS,
    **eval_kwargs,
) -> Calibration:
    """Pick tau on VAL (spec 2.5.2): run the full open-world evaluator per candidate, keep the first best AUC.

    The score columns must follow the open-world pair order; the closed mask is all ones.
    """
    feas, seen = feasibility.scores, feasibility.seen_mask
    if val_scores.shape[1] != feas.numel():
        raise ValueError(
            f"val scores have {val_scores.shape[1]} columns; expected {feas.numel()} (the open-world pair order)"
        )
    closed = torch.ones_like(seen)
    best: tuple[float, float, CzslMetrics] | None = None
    thresholds = threshold_candidates(feas, seen, n_thresholds)
    aucs = []
    for tau in thresholds:
        m = evaluate(
            val_scores,
            attr_labels,
            obj_labels,
            pair_labels,
            pair_attrs,
            pair_objs,
            seen,
            closed,
            column_transform=feasibility_filter(feas, seen, float(tau), variant),
            **eval_kwargs,
        )
        aucs.append(m.auc)
        if best is None or m.auc > best[1]:
            best = (float(tau), m.auc, m)
    assert best is not None
    log.info(
        "OW threshold %.4f (val AUC %.4f, %s filter, feasibility from %s)",
        best[0],
        best[1],
        variant,
        feasibility.source,
    )
    return Calibration(
        threshold=best[0],
        variant=variant,
        source=feasibility.source,
        val_metrics=best[2],
        thresholds=[float(t) for t in thresholds],
        val_aucs=aucs,
    )


def calibrate_on_val(
    val_scores: Scores,
    dataset: CzslDataset,
    feasibility: Feasibility,
    *,
    variant: FilterVariant = "multiply",
    n_thresholds: int = N_THRESHOLDS,
    **eval_kwargs,
) -> Calibration:
    """`calibrate_threshold` with labels from an open-world dataset's val split (rows in val order)."""
    if dataset.world != "open":
        raise ValueError(f"dataset world is {dataset.world!r}; feasibility calibration needs the open world")
    if not torch.equal(dataset.seen_mask, feasibility.seen_mask):
        raise ValueError("feasibility seen mask differs from the dataset's; was it computed for another dataset?")
    attr, obj, pair = dataset.labels("val")
    return calibrate_threshold(
        val_scores,
        attr,
        obj,
        pair,
        dataset.pair_attr_idx(),
        dataset.pair_obj_idx(),
        feasibility,
        variant=variant,
        n_thresholds=n_thresholds,
        **eval_kwargs,
    )
