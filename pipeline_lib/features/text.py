"""Text features: per-prompt projected and pre-projection EOS features, and their class averages (spec 2.2).

For class c with prompts i = 1..M_c, projected p_ci and EOS e_ci:
  class_proj[c]     = n(mean_i n(p_ci))      (the zero-shot classifier)
  class_proj_raw[c] = mean_i p_ci
  class_eos[c]      = n(mean_i n(e_ci))
  class_eos_raw[c]  = mean_i e_ci            (its norm is the SeMoBridge rescale constant)
where n(x) = x / ||x||_2.
The prompts themselves come from `pipeline_lib.features.prompts`; the helpers here add the features config keys to
its errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pipeline_lib.features.extract import autocast_context
from pipeline_lib.features.prompts import clip_ensemble_templates, fill_templates, load_cupl_sentences


@dataclass
class ClassTextFeatures:
    """Per-prompt and per-class text features as float32 numpy arrays."""

    prompt_proj: np.ndarray  # (C, M, D), rows past prompt_count[c] are NaN
    prompt_eos: np.ndarray  # (C, M, W)
    prompt_count: np.ndarray  # (C,) int64: M_c
    class_proj: np.ndarray  # (C, D)
    class_proj_raw: np.ndarray  # (C, D)
    class_eos: np.ndarray  # (C, W)
    class_eos_raw: np.ndarray  # (C, W)


def default_templates(prompts: str) -> list[str]:
    """The templates used when a dataset entry's `templates` is null: the clip_ensemble set its `prompts` names
    (spec 2.1)."""
    try:
        return clip_ensemble_templates(prompts)
    except ValueError as e:
        raise ValueError(
            f"prompts={prompts!r} (datasets.classification entry) has no default template ({e}); "
            "or set the entry's templates explicitly"
        ) from e


def class_prompts(classnames: list[str], templates: list[str], cupl_path: Path | None = None) -> list[list[str]]:
    """Prompts per class: every template filled, then the class's CuPL sentences (spec 2.1 concatenation order)."""
    prompts = fill_templates(classnames, templates)
    if cupl_path is not None:
        try:
            sentences = load_cupl_sentences(cupl_path, classnames)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"cupl_file (datasets.classification entry): {e.args[0]}") from e
        for own, extra in zip(prompts, sentences, strict=True):
            own.extend(extra)
    return prompts


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("cannot L2-normalise a zero feature vector")
    return x / norm


def class_average(prompt_feats: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n(mean_i n(x_ci)), mean_i x_ci) over the first counts[c] prompts of each class: (C, M, D) -> 2 x (C, D)."""
    if prompt_feats.ndim != 3 or counts.shape != prompt_feats.shape[:1]:
        raise ValueError(f"expected (C, M, D) features and (C,) counts; got {prompt_feats.shape} and {counts.shape}")
    normed, raw = [], []
    for c, m in enumerate(counts.tolist()):
        x = prompt_feats[c, :m].astype(np.float64)  # (M_c, D)
        raw.append(x.mean(axis=0))
        normed.append(_normalize(_normalize(x).mean(axis=0)))
    return np.stack(normed).astype(np.float32), np.stack(raw).astype(np.float32)


def encode_texts(
    model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    texts: Sequence[str],
    device: torch.device,
    batch_size: int = 256,
    eos: bool = True,
    amp: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Projected text features (N, D) = encode_text (not normalised), and pre-projection EOS features (N, W)."""
    from pipeline_lib.backbone.hooks import text_eos_features

    proj, eos_out = [], []
    with torch.inference_mode(), autocast_context(device, amp):
        for b in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[b : b + batch_size])).to(device)  # (B, L)
            proj.append(model.encode_text(tokens).float().cpu().numpy())  # (B, D)
            if eos:
                eos_out.append(text_eos_features(model, tokens).float().cpu().numpy())  # (B, W)
    width = model.token_embedding.embedding_dim if hasattr(model, "token_embedding") else 0
    dim = _embed_dim(model)
    p = np.concatenate(proj) if proj else np.zeros((0, dim), np.float32)
    e = (np.concatenate(eos_out) if eos_out else np.zeros((0, width), np.float32)) if eos else None
    return p, e


def _embed_dim(model: nn.Module) -> int:
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return proj.out_features
    if isinstance(proj, Tensor):
        return int(proj.shape[1])
    raise ValueError(f"{type(model).__name__} has no text_projection to read the joint-space width from")


def text_projection(model: nn.Module) -> np.ndarray:
    """W_txt (W, D) in the row-vector convention e @ W_txt (an nn.Linear weight is transposed)."""
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        if proj.bias is not None:
            raise ValueError("text projection has a bias; the bridge needs a linear map")
        return proj.weight.detach().float().cpu().numpy().T.copy()
    if isinstance(proj, Tensor):
        return proj.detach().float().cpu().numpy().copy()
    raise ValueError(f"{type(model).__name__} has no text_projection")


def logit_scale(model: nn.Module) -> float:
    """exp(logit_scale): the multiplier on cosines (100 for OpenAI CLIP)."""
    return float(model.logit_scale.detach().float().exp().cpu())


def class_text_features(
    model: nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    prompts: list[list[str]],
    device: torch.device,
    batch_size: int = 256,
    amp: bool = True,
) -> ClassTextFeatures:
    """Encode every class's prompts and average them per class (module docstring)."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every class needs at least one prompt")
    counts = np.array([len(p) for p in prompts], dtype=np.int64)
    flat = [t for p in prompts for t in p]
    proj, eos = encode_texts(model, tokenizer, flat, device, batch_size, eos=True, amp=amp)
    n_cls, m_max = len(prompts), int(counts.max())
    prompt_proj = np.full((n_cls, m_max, proj.shape[1]), np.nan, np.float32)  # (C, M, D)
    prompt_eos = np.full((n_cls, m_max, eos.shape[1]), np.nan, np.float32)  # (C, M, W)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for c in range(n_cls):
        prompt_proj[c, : counts[c]] = proj[offsets[c] : offsets[c + 1]]
        prompt_eos[c, : counts[c]] = eos[offsets[c] : offsets[c + 1]]
    class_proj, class_proj_raw = class_average(prompt_proj, counts)
    class_eos, class_eos_raw = class_average(prompt_eos, counts)
    return ClassTextFeatures(prompt_proj, prompt_eos, counts, class_proj, class_proj_raw, class_eos, class_eos_raw)
