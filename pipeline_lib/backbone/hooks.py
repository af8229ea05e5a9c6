"""Entry points into the towers of an open_clip `CLIP` below its public `encode_text` / `encode_image`.

Textual inversion, soft prompts and patch-level alignment need to feed the encoders something other than token ids or
pixels, or to read something other than the pooled feature. Wherever possible the model's own forward runs and a
temporary forward hook swaps one intermediate tensor (token embeddings after `token_embedding`, patch embeddings after
`visual.conv1`), so masks, pooling, norms and projections stay exactly the library's. Only
`text_features_from_embeddings` re-runs the text tower by hand, because its sequence length may differ from the
model's context (the native path always adds the full positional table). Pseudo-token prompts use it to stop at the
last EOS (`pooled_length`): under CLIP's causal mask the padding after it never reaches the pooled token, and "a photo
of £" is 6 of ViT-B/32's 77 positions.

Supported: `open_clip.model.CLIP` with its built-in text transformer, and `open_clip.transformer.VisionTransformer`
image towers. Anything else (timm trunks, HF text towers, `CustomTextCLIP`/SigLIP, CoCa) raises `UnsupportedBackbone`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from open_clip.model import CLIP
from open_clip.transformer import VisionTransformer, text_global_pool
from torch import Tensor, nn

from pipeline_lib.engine.errors import UserInputError

log = logging.getLogger(__name__)

__all__ = [
    "UnsupportedBackbone",
    "check_image_tower",
    "check_text_tower",
    "image_features_from_patch_embeddings",
    "image_token_features",
    "placeholder_positions",
    "pooled_length",
    "text_eos_features",
    "text_features_at_positions",
    "text_features_from_embeddings",
    "text_features_from_token_embeddings",
]


class UnsupportedBackbone(UserInputError):
    """The model's tower has no hook here (e.g. a timm trunk, an HF text tower, SigLIP's CustomTextCLIP)."""


def _model_name(model: nn.Module) -> str:
    """A readable name for error messages: the open_clip name when the loader attached one, else the class."""
    name = getattr(model, "name", None) or getattr(model, "model_name", None)
    return f"{name} ({type(model).__name__})" if name else type(model).__name__


def check_text_tower(model: nn.Module) -> None:
    """Raise `UnsupportedBackbone` unless `model` is an open_clip `CLIP` with the built-in text transformer."""
    if not isinstance(model, CLIP):
        raise UnsupportedBackbone(
            f"text hooks need an open_clip.model.CLIP with a built-in text transformer; got {_model_name(model)}"
        )


def check_image_tower(model: nn.Module) -> VisionTransformer:
    """Return `model.visual` if it is an open_clip `VisionTransformer`, else raise `UnsupportedBackbone`."""
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise UnsupportedBackbone(
            f"image hooks need an open_clip VisionTransformer image tower; {_model_name(model)} has "
            f"{type(visual).__name__}"
        )
    return visual


@contextmanager
def _forward_hook(module: nn.Module, hook: Callable[[nn.Module, tuple, Tensor], Tensor | None]) -> Iterator[None]:
    """Register a forward hook for the duration of the block and always remove it (also on errors)."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _pooled(output: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The pooled feature of a tower whose `output_tokens` flag may make it return (pooled, tokens)."""
    return output[0] if isinstance(output, tuple) else output


# ----------------------------------------------------------------------------------------------------- text tower


def _check_placeholders(token_ids: Tensor, placeholder_id: int, n_pseudo: int) -> None:
    """Every row must contain exactly R placeholder tokens.

    A template that tokenises the placeholder into a different BPE piece (e.g. "£." without a space) would otherwise
    silently leave the prompt without a pseudo-token.
    """
    counts = (token_ids == placeholder_id).sum(dim=1)  # (B,)
    if not bool((counts == n_pseudo).all()):
        bad = int((counts != n_pseudo).nonzero()[0, 0])
        raise ValueError(
            f"row {bad} of token_ids has {int(counts[bad])} placeholder tokens (id {placeholder_id}); expected exactly "
            f"R={n_pseudo} per row (one per pseudo-token)"
        )


def text_features_from_token_embeddings(
    model: CLIP,
    token_ids: Tensor,
    pseudo_tokens: Tensor | None = None,
    placeholder_id: int | None = None,
) -> Tensor:
    """Text features (B, D) with the R placeholder tokens of each row replaced by pseudo-token embeddings.

    `pseudo_tokens` (B, R, W) or (1, R, W) (broadcast to every row) lives in the input token-embedding space, before
    positional embeddings. The placeholder's own embedding is overwritten, not shifted: sequence length, positional
    embeddings, causal mask and EOS pooling are those of `token_ids` (positions after the last EOS are skipped, see
    `pooled_length`). With `pseudo_tokens=None` this is exactly `model.encode_text(token_ids)`. Gradients flow to
    `pseudo_tokens`; the model is never put into no-grad mode here.
    """
    check_text_tower(model)
    if pseudo_tokens is None:
        return model.encode_text(token_ids)
    if placeholder_id is None:
        raise ValueError("placeholder_id is required when pseudo_tokens are given")
    if pseudo_tokens.dim() != 3:
        raise ValueError(f"pseudo_tokens must be (B, R, W); got shape {tuple(pseudo_tokens.shape)}")
    bsz, n_pseudo, width = pseudo_tokens.shape
    if width != model.token_embedding.embedding_dim:
        raise ValueError(
            f"pseudo_tokens width {width} != text transformer width {model.token_embedding.embedding_dim}"
        )
    if bsz not in (1, token_ids.shape[0]):
        raise ValueError(f"pseudo_tokens batch {bsz} must be 1 or match token_ids batch {token_ids.shape[0]}")
    positions = placeholder_positions(token_ids, placeholder_id, n_pseudo)
    return text_features_at_positions(model, token_ids, positions, pseudo_tokens, pooled_length(model, token_ids))


def placeholder_positions(token_ids: Tensor, placeholder_id: int, n_pseudo: int) -> tuple[Tensor, Tensor]:
    """(rows, cols), each (B * R,), of the placeholder tokens in row-major order, after checking R per row.

    Computing them once per prompt batch (rather than every optimisation step) avoids a host sync per step on CUDA.
    """
    _check_placeholders(token_ids, placeholder_id, n_pseudo)
    rows, cols = (token_ids == placeholder_id).nonzero(as_tuple=True)
    return rows, cols


def pooled_length(model: CLIP, token_ids: Tensor) -> int | None:
    """Length of the shortest prefix of `token_ids` (B, L) with the same text features, or None when every position
    counts.

    With a causal mask and EOS pooling (CLIP's text tower) the pooled token attends only to positions up to its own,
    so everything after the last row's EOS can be dropped: the result is the full-length forward's up to float
    rounding. A tower without a causal mask or pooling another position keeps the whole sequence.
    """
    if getattr(model, "attn_mask", None) is None:
        return None
    pool = getattr(model, "text_pool_type", None)
    if pool == "argmax":
        eos = token_ids.argmax(dim=-1)  # (B,) EOT has the largest id in CLIP's BPE vocabulary
    elif pool == "eos":
        eos = (token_ids == model.text_eos_id).int().argmax(dim=-1)  # (B,) first EOS, as text_global_pool
    else:
        return None
    return int(eos.max()) + 1


def text_features_at_positions(
    model: CLIP, token_ids: Tensor, positions: tuple[Tensor, Tensor], pseudo_tokens: Tensor,
    length: int | None = None,
) -> Tensor:
    """`text_features_from_token_embeddings` with precomputed `placeholder_positions` (no checks, no host sync).

    `length` (from `pooled_length`, computed once per prompt batch) runs only the first `length` positions; None runs
    the model's native full-length forward.
    """
    rows, cols = positions
    width = pseudo_tokens.shape[-1]
    values = pseudo_tokens.expand(token_ids.shape[0], -1, -1).reshape(-1, width)  # (B * R, W), row-major like rows
    if length is not None:
        ids = token_ids[:, :length]  # (B, length): the placeholders sit before the EOS, so all are kept
        embeddings = model.token_embedding(ids).index_put((rows, cols), values.to(model.token_embedding.weight.dtype))
        return text_features_from_embeddings(model, embeddings, ids)

    def replace(_module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
        return out.index_put((rows, cols), values.to(out.dtype))  # (B, L, W), placeholders overwritten

    with _forward_hook(model.token_embedding, replace):
        return model.encode_text(token_ids)


def _project_text(model: CLIP, pooled: Tensor) -> Tensor:
    """Apply the text projection, which open_clip stores as a Parameter (W, D) or an nn.Linear."""
    proj = model.text_projection
    if proj is None:
        return pooled
    if isinstance(proj, nn.Linear):
        return proj(pooled)
    return pooled @ proj  # (B, D)


def text_features_from_embeddings(model: CLIP, embeddings: Tensor, token_ids: Tensor) -> Tensor:
    """Text features (B, D) from full input embedding sequences (B, L, W), e.g. soft prompts.

    `token_ids` (B, L) only locate the pooled position (EOS by argmax for CLIP's BPE, where EOT has the largest id).
    L may be shorter than the model's context: the first L positional embeddings and the top-left L x L block of the
    causal mask are used, which is what the full-length forward computes for the first L positions.
    """
    check_text_tower(model)
    if embeddings.dim() != 3 or token_ids.shape != embeddings.shape[:2]:
        raise ValueError(
            f"embeddings must be (B, L, W) and token_ids (B, L); got {tuple(embeddings.shape)} and "
            f"{tuple(token_ids.shape)}"
        )
    length = embeddings.shape[1]
    context = model.positional_embedding.shape[0]
    if length > context:
        raise ValueError(f"sequence length {length} exceeds the model's context length {context}")
    cast_dtype = model.transformer.get_cast_dtype()
    x = embeddings.to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)  # (B, L, W)
    mask = model.attn_mask[:length, :length] if model.attn_mask is not None else None  # (L, L)
    x = model.transformer(x, attn_mask=mask)  # (B, L, W)
    x = model.ln_final(x)  # (B, L, W)
    pooled = text_global_pool(x, token_ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    return _project_text(model, pooled)  # (B, D)


def text_eos_features(model: CLIP, token_ids: Tensor) -> Tensor:
    """Pre-projection text features (B, W): the pooled (EOS) token after `ln_final`, from the native forward."""
    check_text_tower(model)
    captured: list[Tensor] = []

    def grab(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        captured.append(out)

    with _forward_hook(model.ln_final, grab):
        model.encode_text(token_ids)
    x = captured[-1]  # (B, L, W)
    return text_global_pool(x, token_ids, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))


# ---------------------------------------------------------------------------------------------------- image tower


def _grid(visual: VisionTransformer) -> tuple[int, int]:
    gh, gw = visual.grid_size
    return int(gh), int(gw)


def image_features_from_patch_embeddings(model: nn.Module, patch_embeddings: Tensor) -> Tensor:
    """Image features (B, D) from patch embeddings (B, N, W) that stand in for the output of the patch conv.

    The native `encode_image` runs on a zero image of the model's size while a hook on `visual.conv1` returns the
    given patches laid out as (B, W, gh, gw), so the class token, positional embeddings, `ln_pre`, transformer,
    pooling, `ln_post` and projection are exactly the model's. Patch order is row-major over the grid.
    """
    visual = check_image_tower(model)
    gh, gw = _grid(visual)
    if patch_embeddings.dim() != 3 or patch_embeddings.shape[1:] != (gh * gw, visual.conv1.out_channels):
        raise ValueError(
            f"patch_embeddings must be (B, {gh * gw}, {visual.conv1.out_channels}) for a {gh}x{gw} grid of width "
            f"{visual.conv1.out_channels}; got {tuple(patch_embeddings.shape)}"
        )
    bsz = patch_embeddings.shape[0]
    grid = patch_embeddings.transpose(1, 2).reshape(bsz, -1, gh, gw)  # (B, W, gh, gw)

    def replace(_module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor:
        return grid.to(out.dtype)

    height, width = visual.image_size
    weight = visual.conv1.weight
    dummy = torch.zeros(bsz, weight.shape[1], height, width, device=weight.device, dtype=weight.dtype)  # (B, 3, H, W)
    with _forward_hook(visual.conv1, replace):
        return _pooled(model.encode_image(dummy))


def image_token_features(model: nn.Module, images: Tensor) -> Tensor:
    """Every output token of the image tower in the joint space (B, 1 + N, D), CLS first, not normalised.

    Each token goes through `ln_post` and `proj`, the path the pooled feature takes: for 'tok' pooling token 0 equals
    `encode_image`, for 'avg' pooling the mean of the patch tokens does. Towers with attentional pooling have no
    per-token path into the joint space and are rejected.
    """
    visual = check_image_tower(model)
    if visual.attn_pool is not None:
        raise UnsupportedBackbone(
            f"{_model_name(model)} pools its image tokens attentionally; per-token joint-space features are undefined"
        )
    captured: list[Tensor] = []

    def grab(_module: nn.Module, _inputs: tuple, out: Tensor) -> None:
        captured.append(out)

    with _forward_hook(visual.transformer, grab):
        model.encode_image(images)
    x = visual.ln_post(captured[-1])  # (B, 1 + N, W)
    return x @ visual.proj if visual.proj is not None else x  # (B, 1 + N, D)
