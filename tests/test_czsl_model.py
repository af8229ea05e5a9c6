"""SAM-CZSL building blocks: sparse alignment, VAC, soft prompts, fusion, variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from czsl_model_fixtures import ATTRS, OBJS
from model_fixtures import tiny_clip, tiny_tokenizer

from pipeline_lib.czsl.model import (
    SamCzsl,
    compose_from_pair_probs,
    compose_probs,
    fuse,
    get_variant,
    list_variants,
)
from pipeline_lib.czsl.prompts import PromptLearner, word_embeddings
from pipeline_lib.czsl.sparse import sparse_alignment
from pipeline_lib.czsl.vac import VisualAdaptiveCondensation


@pytest.fixture(scope="module")
def clip():
    return tiny_clip()


PAIRS = torch.tensor([[a, o] for a in range(len(ATTRS)) for o in range(len(OBJS))])


# ---------------------------------------------------------------------------------------------------- sparse alignment


def test_sa_is_max_over_tokens_including_cls():
    e = torch.eye(4)
    # sample 0: CLS = e0, patches e1, (e1 + e2); sample 1: CLS = e3 (the best match for text e3), patches e0, e1
    tokens = torch.stack([torch.stack([e[0], e[1], e[1] + e[2]]), torch.stack([e[3], e[0], e[1]])])  # (2, 3, 4)
    texts = torch.stack([e[0], e[2], e[3]])  # (3, 4)
    scores, idx = sparse_alignment(tokens, texts, return_index=True)
    expected = torch.tensor([[1.0, 2**-0.5, 0.0], [1.0, 0.0, 1.0]])
    assert torch.allclose(scores, expected, atol=1e-6)
    assert idx[0, :2].tolist() == [0, 2]
    assert idx[1, 2] == 0  # the CLS token wins for text e3


def test_sa_is_scale_invariant_topk_mean_and_chunking():
    g = torch.Generator().manual_seed(0)
    tokens, texts = torch.randn(3, 7, 8, generator=g), torch.randn(11, 8, generator=g)
    full = sparse_alignment(tokens, texts)
    assert torch.allclose(full, sparse_alignment(5 * tokens, 0.1 * texts, chunk=3), atol=1e-6)
    cos = F.normalize(tokens, dim=-1) @ F.normalize(texts, dim=-1).t()  # (3, 7, 11)
    assert torch.allclose(full, cos.max(dim=1).values, atol=1e-6)
    top2 = sparse_alignment(tokens, texts, topk=2, chunk=4)
    assert torch.allclose(top2, cos.topk(2, dim=1).values.mean(dim=1), atol=1e-6)
    assert (top2 <= full + 1e-6).all()


def test_sa_rejects_bad_shapes_and_topk():
    with pytest.raises(ValueError, match="topk"):
        sparse_alignment(torch.randn(2, 3, 4), torch.randn(5, 4), topk=4)
    with pytest.raises(ValueError, match="expected tokens"):
        sparse_alignment(torch.randn(2, 4), torch.randn(5, 4))


# ---------------------------------------------------------------------------------------------------- VAC


def test_vac_shapes_and_gradient_flow():
    torch.manual_seed(0)
    vac = VisualAdaptiveCondensation(32, blocks=2, heads=4, queries=2)
    tokens = torch.randn(5, 9, 32, requires_grad=True)
    v = vac(tokens)
    assert v.shape == (5, 32)
    v.pow(2).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert vac.query.grad is not None and vac.query.grad.abs().sum() > 0
    for blk in vac.blocks:
        assert blk.attn.in_proj_weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible"):
        VisualAdaptiveCondensation(30, heads=4)


def test_vac_output_depends_on_tokens_per_sample():
    torch.manual_seed(0)
    vac = VisualAdaptiveCondensation(16, blocks=1, heads=2, dropout=0.0).eval()
    tokens = torch.randn(2, 5, 16)
    both = vac(tokens)
    assert torch.allclose(both[1], vac(tokens[1:])[0], atol=1e-5)
    assert not torch.allclose(both[0], both[1])


# ---------------------------------------------------------------------------------------------------- prompts


def test_prompts_start_equal_to_the_plain_prompt(clip):
    pl = PromptLearner(clip, tiny_tokenizer(), ATTRS, OBJS, context_length=8).eval()
    out = pl(PAIRS)
    assert out["comp"].shape == (9, 128) and out["attr"].shape == (3, 128) and out["obj"].shape == (3, 128)
    tok = tiny_tokenizer()
    # single-BPE words: the initial soft prompt is exactly the tokenised sentence
    ref = F.normalize(clip.encode_text(tok([f"a photo of {ATTRS[1]} {OBJS[2]}", f"a photo of {OBJS[0]}"])), dim=-1)
    assert torch.allclose(out["comp"][1 * 3 + 2], ref[0], atol=1e-5)
    assert torch.allclose(out["obj"][0], ref[1], atol=1e-5)
    assert torch.allclose(pl.comp_features(PAIRS, chunk=4), out["comp"], atol=1e-6)


def test_vocab_init_is_mean_of_bpe_pieces(clip):
    tok = tiny_tokenizer()
    ids = tok(["photorealistic"])[0]
    eos = int(ids.argmax())
    assert eos > 2, "the test word must split into several BPE pieces"
    expected = clip.token_embedding.weight[ids[1:eos]].mean(0)
    assert torch.allclose(word_embeddings(clip, tok, ["photorealistic"])[0], expected)


def test_prompt_gradients_reach_context_and_vocab_only(clip):
    pl = PromptLearner(clip, tiny_tokenizer(), ATTRS, OBJS, attr_dropout=0.0)
    out = pl(PAIRS)
    (out["comp"].sum() + out["attr"].sum() + out["obj"].sum()).backward()
    assert all(pl.ctx[b].grad.abs().sum() > 0 for b in ("comp", "attr", "obj"))
    assert pl.vocab.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    assert {n for n, _ in pl.named_parameters()} == {"ctx.comp", "ctx.attr", "ctx.obj", "vocab"}


def test_vocab_dropout_only_in_training(clip):
    pl = PromptLearner(clip, tiny_tokenizer(), ATTRS, OBJS, attr_dropout=0.5)
    torch.manual_seed(0)
    a = pl(PAIRS)["comp"]
    pl.eval()
    b, c = pl(PAIRS)["comp"], pl(PAIRS)["comp"]
    assert torch.equal(b, c) and not torch.allclose(a, b)


def test_prompt_template_must_fit_context(clip):
    with pytest.raises(ValueError, match="does not fit"):
        PromptLearner(clip, tiny_tokenizer(), ATTRS, OBJS, context_length=6)


# ---------------------------------------------------------------------------------------------------- fusion


def test_compose_probs_formula_on_hand_logits():
    pairs = torch.tensor([[0, 0], [0, 1], [1, 1]])
    comp = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    attr = torch.log(torch.tensor([[0.9, 0.1]]))
    obj = torch.log(torch.tensor([[0.25, 0.75]]))
    got = compose_probs(comp, attr, obj, pairs)
    expected = torch.tensor([[0.5 + 0.9 * 0.25, 0.3 + 0.9 * 0.75, 0.2 + 0.1 * 0.75]])
    assert torch.allclose(got, expected, atol=1e-6)


def test_bank_pbar_uses_marginals():
    pairs = torch.tensor([[0, 0], [0, 1], [1, 1]])
    p = torch.tensor([[0.5, 0.3, 0.2]])
    # p(a0) = 0.8, p(a1) = 0.2; p(o0) = 0.5, p(o1) = 0.5
    expected = torch.tensor([[0.5 + 0.8 * 0.5, 0.3 + 0.8 * 0.5, 0.2 + 0.2 * 0.5]])
    assert torch.allclose(compose_from_pair_probs(p, pairs, 2, 2), expected)


def test_fuse_is_weighted_sum_and_positive():
    a, b = torch.rand(4, 6) + 0.01, torch.rand(4, 6) + 0.01
    out = fuse({"sa": a, "vac": b}, {"sa": 0.5, "vac": 2.0, "bank": 1.0})
    assert torch.allclose(out, 0.5 * a + 2.0 * b)
    assert (out > 0).all()
    with pytest.raises(ValueError, match="miss"):
        fuse({"sa": a, "x": b}, {"sa": 1.0})


def test_variants_are_ablation_rows_in_order(clip):
    assert list_variants() == ["baseline", "+sa", "+vac", "+kl", "+bank_seen", "+dynamic"]
    with pytest.raises(KeyError, match="unknown SAM-CZSL variant"):
        get_variant("+foo")
    pl = PromptLearner(clip, tiny_tokenizer(), ATTRS, OBJS)
    base = SamCzsl(pl, 128, get_variant("baseline")).eval()
    kl = SamCzsl(pl, 128, get_variant("+kl"), vac_blocks=1).eval()
    tokens = torch.randn(2, 5, 128)
    texts = pl.eval()(PAIRS)
    lb, lk = base(tokens, texts), kl(tokens, texts)
    assert set(lb) == {"img_comp", "img_attr", "img_obj"}
    assert {"vac_comp", "vac_attr", "vac_obj", "v"} <= set(lk)
    # the baseline scores only the first (global) token; SA scores the best one
    assert torch.allclose(lb["img_comp"], 100 * F.normalize(tokens[:, 0], dim=-1) @ texts["comp"].t(), atol=1e-4)
    assert (lk["img_comp"] >= lb["img_comp"] - 1e-4).all()
    assert set(kl.pbars(lk, PAIRS)) == {"sa", "vac"}
