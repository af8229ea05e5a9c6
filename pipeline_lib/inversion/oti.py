"""OTI: optimise pseudo-token embeddings in "a photo of £" so the text feature matches a query image's feature.

The pseudo-tokens live in the text transformer's input token-embedding space (width W) and overwrite the placeholder
token(s) of the tokenised template; everything else is the frozen model's native text forward (see backbone.hooks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from open_clip.model import CLIP
from torch import Tensor

from pipeline_lib.backbone.hooks import (
    check_text_tower,
    placeholder_positions,
    pooled_length,
    text_features_at_positions,
    text_features_from_token_embeddings,
)
from pipeline_lib.inversion.config import OtiConfig
from pipeline_lib.inversion.optimise import Encoder, InversionOutput, invert_with_config

log = logging.getLogger(__name__)

#: list[str] -> LongTensor (B, context_length), e.g. the backbone's open_clip tokenizer.
Tokenizer = Callable[[list[str]], Tensor]


def placeholder_token_id(tokenizer: Tokenizer, placeholder: str) -> int:
    """The id of the placeholder, which must tokenise into exactly one piece between start and end of text."""
    ids = tokenizer([f" {placeholder} "])[0]  # (L,)
    pieces = ids[ids != 0].tolist()
    if len(pieces) != 3:
        raise ValueError(
            f"placeholder {placeholder!r} tokenises into {len(pieces) - 2} pieces ({pieces[1:-1]}); expected exactly "
            f"one token between start and end of text"
        )
    return int(pieces[1])


def prompt_ids(tokenizer: Tokenizer, cfg: OtiConfig, n: int) -> tuple[Tensor, int]:
    """Token ids (n, L) of the template with R placeholders (" £ " repeated R times) and the placeholder id."""
    ph_id = placeholder_token_id(tokenizer, cfg.placeholder)
    text = cfg.template.format(f" {cfg.placeholder} " * cfg.num_tokens)
    ids = tokenizer([text])  # (1, L)
    found = int((ids == ph_id).sum())
    if found != cfg.num_tokens:
        raise ValueError(
            f"template {cfg.template!r} with {cfg.num_tokens} placeholder(s) tokenises to {found} placeholder "
            f"tokens (id {ph_id}); expected exactly {cfg.num_tokens} (is the context too short?)"
        )
    return ids.expand(n, -1).contiguous(), ph_id  # (n, L)


def oti_encoder(model: CLIP, ids: Tensor, placeholder_id: int, num_tokens: int) -> Encoder:
    """pseudo-tokens (B, R, W) -> text features (B, D) of the prompt `ids` (B, L) with the tokens injected."""
    positions = placeholder_positions(ids, placeholder_id, num_tokens)  # checked once, not every step
    length = pooled_length(model, ids)  # the prompt's positions up to its EOS: the padding after it is never run
    return lambda pseudo: text_features_at_positions(model, ids, positions, pseudo, length)


def run_oti(
    model: CLIP, tokenizer: Tokenizer, image_features: Tensor, cfg: OtiConfig, *, seed: int, amp: bool = True
) -> InversionOutput:
    """Invert a batch of image features (B, D) into pseudo-tokens (B, R, W) and their text features."""
    check_text_tower(model)
    device = image_features.device
    ids, ph_id = prompt_ids(tokenizer, cfg, image_features.shape[0])
    width = model.token_embedding.embedding_dim
    encode = oti_encoder(model, ids.to(device), ph_id, cfg.num_tokens)
    return invert_with_config(encode, image_features, (cfg.num_tokens, width), cfg, seed=seed, amp=amp)  # (B, R, W)


@torch.no_grad()
def oti_features(model: CLIP, tokenizer: Tokenizer, tokens: Tensor, cfg: OtiConfig, chunk: int = 256) -> Tensor:
    """fp32 text features (N, D) of saved pseudo-tokens (N, R, W), recomputed in chunks on the model's device."""
    device = model.token_embedding.weight.device
    ids, ph_id = prompt_ids(tokenizer, cfg, min(chunk, tokens.shape[0]))
    out = [
        text_features_from_token_embeddings(model, ids[: len(part)].to(device), part.to(device), ph_id).float().cpu()
        for part in tokens.split(chunk)
    ]
    return torch.cat(out) if out else torch.empty(0, model.text_projection.shape[1])
