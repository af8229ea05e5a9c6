"""Soft prompts of the three SAM-CZSL text branches (composition, attribute, object) over a shared primitive vocabulary.

Layout (spec 3.1): "SOS a photo of [a] [o] EOS" for compositions, "SOS a photo of [x] EOS" for primitives. Each
branch has its own learnable context (positions 1..n_ctx) initialised from the embedding of `prompt_init`; the
primitive vocabulary (attributes first, then objects) is shared across branches and initialised from the mean token
embedding of each word's BPE pieces. The frozen text tower turns the embedding sequences into joint-space features
through the shared hook `text_features_from_embeddings`, so gradients reach only the prompt parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

TextEncoder = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


def default_text_encoder() -> TextEncoder:
    """The shared tower hook (imported lazily so the module imports even where the backbone package is partial)."""
    from pipeline_lib.backbone.hooks import text_features_from_embeddings

    return text_features_from_embeddings


def token_embedding_layer(model: nn.Module) -> nn.Embedding:
    """The text tower's token embedding (open_clip CLIP keeps it at the top level, CustomTextCLIP under .text)."""
    emb = getattr(model, "token_embedding", None)
    if emb is None and hasattr(model, "text"):
        emb = getattr(model.text, "token_embedding", None)
    if not isinstance(emb, nn.Embedding):
        raise TypeError(f"model {type(model).__name__} has no token_embedding nn.Embedding; expected an open_clip CLIP")
    return emb


def clean_name(name: str) -> str:
    """Prompt text of a primitive (spec 1.2.6): '.' -> ' ', lowercase; underscores stay."""
    return name.replace(".", " ").lower()


def _eos_positions(ids: torch.Tensor) -> torch.Tensor:
    return ids.argmax(dim=-1)  # (B,) EOT has the largest id in CLIP's BPE vocabulary


@torch.no_grad()
def word_embeddings(model: nn.Module, tokenizer: Tokenizer, words: Sequence[str]) -> torch.Tensor:
    """Mean token embedding of each word's BPE pieces (SOS and EOS excluded) -> (V, W)."""
    ids = tokenizer([clean_name(w) for w in words])  # (V, Lctx)
    table = token_embedding_layer(model).weight.detach()
    eos = _eos_positions(ids)
    rows = []
    for i, w in enumerate(words):
        pieces = ids[i, 1 : int(eos[i])]
        if pieces.numel() == 0:
            raise ValueError(f"primitive {w!r} tokenises to no BPE pieces; expected a non-empty word")
        rows.append(table[pieces.to(table.device)].mean(dim=0))  # (W,)
    return torch.stack(rows)  # (V, W)


class PromptLearner(nn.Module):
    """Learnable context for three branches plus a shared primitive vocabulary; returns normalised text features."""

    branches = ("comp", "attr", "obj")

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Tokenizer,
        attrs: Sequence[str],
        objs: Sequence[str],
        *,
        context_length: int = 8,
        prompt_init: str = "a photo of",
        attr_dropout: float = 0.3,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        # The frozen tower is kept outside the module's parameters so state_dict/optimisers only see prompt weights.
        object.__setattr__(self, "clip", clip)
        self.encode = text_encoder if text_encoder is not None else default_text_encoder()
        self.n_attr, self.n_obj = len(attrs), len(objs)
        self.context_length = context_length
        table = token_embedding_layer(clip).weight

        init_ids = tokenizer([prompt_init])[0]  # (Lctx,)
        n_ctx = int(_eos_positions(init_ids[None])[0]) - 1
        if n_ctx < 1:
            raise ValueError(f"prompt_init={prompt_init!r} has no tokens; expected words such as 'a photo of'")
        self.n_ctx = n_ctx
        ctx_init = table[init_ids[1 : 1 + n_ctx].to(table.device)].detach().clone()  # (n_ctx, W)
        self.ctx = nn.ParameterDict({b: nn.Parameter(ctx_init.clone()) for b in self.branches})
        self.vocab = nn.Parameter(word_embeddings(clip, tokenizer, list(attrs) + list(objs)))  # (A + O, W)
        self.vocab_dropout = nn.Dropout(attr_dropout)

        # Template ids: context words, then one ("x") or two ("x x") placeholder tokens before EOS.
        for name, n_slots in (("comp", 2), ("attr", 1), ("obj", 1)):
            ids = tokenizer([" ".join([prompt_init] + ["x"] * n_slots)])[0][:context_length]  # (L,)
            eos = int(_eos_positions(ids[None])[0])
            if eos != 1 + n_ctx + n_slots or eos >= context_length:
                raise ValueError(
                    f"template for branch {name!r} does not fit: EOS at {eos}, context_length={context_length}; "
                    f"expected EOS at {1 + n_ctx + n_slots} < context_length"
                )
            self.register_buffer(f"ids_{name}", ids.clone(), persistent=False)
            self.register_buffer(f"base_{name}", table[ids.to(table.device)].detach().clone(), persistent=False)

    def _build(self, branch: str, slot_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embedding sequences (B, L, W) and token ids (B, L) for one branch; slot_rows (B, S, W) fill the slots."""
        ids: torch.Tensor = getattr(self, f"ids_{branch}")  # (L,)
        base: torch.Tensor = getattr(self, f"base_{branch}")  # (L, W)
        b, s = slot_rows.shape[0], slot_rows.shape[1]
        n = self.n_ctx
        ctx = self.ctx[branch].unsqueeze(0).expand(b, -1, -1)  # (B, n_ctx, W)
        head = base[:1].unsqueeze(0).expand(b, -1, -1)  # (B, 1, W) SOS
        tail = base[1 + n + s :].unsqueeze(0).expand(b, -1, -1)  # (B, L - 1 - n - s, W) EOS + padding
        emb = torch.cat([head, ctx, slot_rows, tail], dim=1)  # (B, L, W)
        return emb, ids.unsqueeze(0).expand(b, -1)

    def _encode(self, emb: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode(self.clip, emb, ids), dim=-1)  # (B, D)

    def forward(self, pairs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised text features: comp (P, D) for pairs (P, 2) [attr_idx, obj_idx], attr (A, D), obj (O, D).

        The three branches share one text-tower call (same sequence length), which is what makes a training step
        cheap on CPU.
        """
        vocab = self.vocab_dropout(self.vocab)  # (A + O, W)
        attr_rows, obj_rows = vocab[: self.n_attr], vocab[self.n_attr :]
        comp_slots = torch.stack([attr_rows[pairs[:, 0]], obj_rows[pairs[:, 1]]], dim=1)  # (P, 2, W)
        parts = [self._build("comp", comp_slots), self._build("attr", attr_rows.unsqueeze(1)),
                 self._build("obj", obj_rows.unsqueeze(1))]
        emb = torch.cat([e for e, _ in parts])  # (P + A + O, L, W)
        ids = torch.cat([i for _, i in parts])  # (P + A + O, L)
        feats = self._encode(emb, ids)  # (P + A + O, D)
        n_p = pairs.shape[0]
        return {"comp": feats[:n_p], "attr": feats[n_p : n_p + self.n_attr], "obj": feats[n_p + self.n_attr :]}

    def comp_features(self, pairs: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Composition features only, in chunks (OW text sets can be large) -> (P, D)."""
        vocab = self.vocab_dropout(self.vocab)
        attr_rows, obj_rows = vocab[: self.n_attr], vocab[self.n_attr :]
        out = []
        for start in range(0, pairs.shape[0], chunk):
            p = pairs[start : start + chunk]
            slots = torch.stack([attr_rows[p[:, 0]], obj_rows[p[:, 1]]], dim=1)  # (p, 2, W)
            out.append(self._encode(*self._build("comp", slots)))
        return torch.cat(out)  # (P, D)
