"""SeMoBridge-T (spec 5): lr schedule, each loss, weights, determinism, model selection and checkpoint mixing."""

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.bridge import bridged_prototypes, image_prototypes, truncated_pinv
from pipeline_lib.fewshot.closed_form import semobridge_t_step
from pipeline_lib.fewshot.config import TrainingConfig
from pipeline_lib.fewshot.logits import kl_bits
from pipeline_lib.fewshot.train import (
    InitValidator,
    bias_norm_variance,
    loss_weights,
    lr_at,
    semobridge_t_losses,
    train_semobridge_t,
)


def test_lr_schedule_pinned_steps():
    cfg = TrainingConfig()
    assert lr_at(0, cfg) == 1e-5
    assert lr_at(1, cfg) == pytest.approx(3e-7)
    assert lr_at(250, cfg) == pytest.approx(7.5e-5)
    assert lr_at(499, cfg) == pytest.approx(1.5e-4 * 499 / 500)
    assert lr_at(500, cfg) == 1.5e-4 and lr_at(4999, cfg) == 1.5e-4
    assert lr_at(0, TrainingConfig(warmup_steps=0)) == 1.5e-4


def test_loss_weights_and_variants():
    w = loss_weights(TrainingConfig(), has_bias=True)
    assert w == {"img": 0.5, "txte": 0.25, "txtp": 0.25, "cons": 0.1, "bias": 0.1}
    assert loss_weights(TrainingConfig(), has_bias=False)["bias"] == 0.0
    assert loss_weights(TrainingConfig(loss_variant="img"), True) == {"img": 0.5, "txte": 0, "txtp": 0, "cons": 0,
                                                                      "bias": 0}
    w = loss_weights(TrainingConfig(loss_variant="img+txt+cons"), True)
    assert w["cons"] == 0.1 and w["bias"] == 0.0 and w["txte"] == 0.25
    with pytest.raises(ValueError, match="loss_variant"):
        TrainingConfig(loss_variant="txt-only")


def test_bias_norm_variance_hand_case():
    b = torch.tensor([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]])  # norms 5, 1, 0; mean 2
    assert bias_norm_variance(b).item() == pytest.approx((9 + 1 + 4) / 3)


def test_each_loss_against_hand_computation():
    # C = 2, K' = 2, D = 2, identity bridge: u~ = L n(F), g^ = u~
    support = torch.tensor([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [-1.0, 1.0]]])
    eye = torch.eye(2)
    p_hat, u_hat, g_hat, _ = bridged_prototypes(support, eye, eye, 2.0)
    text_proj = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text_eos = F.normalize(torch.tensor([[1.0, 1.0], [-1.0, 1.0]]), dim=-1)
    w = {"img": 1, "txte": 1, "txtp": 1, "cons": 1, "bias": 1}
    bias = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    t = semobridge_t_losses(F.normalize(support, dim=-1), p_hat, u_hat, g_hat, text_proj, text_eos, bias, w, 100.0)
    n = F.normalize(support, dim=-1).reshape(4, 2)
    tgt = torch.tensor([0, 0, 1, 1])

    def ce(logits, target):
        return float(-(logits.log_softmax(-1)[torch.arange(len(target)), target]).mean())

    assert t["img"].item() == pytest.approx(ce(100 * n @ p_hat.T, tgt), rel=1e-5)
    assert t["cons"].item() == pytest.approx(ce(n @ p_hat.T, tgt), rel=1e-5)  # g^ = 2 n(F): same direction, temp 1
    assert t["txte"].item() == pytest.approx(ce(u_hat @ text_eos.T, torch.tensor([0, 1])), rel=1e-5)
    assert t["txtp"].item() == pytest.approx(ce(p_hat @ text_proj.T, torch.tensor([0, 1])), rel=1e-5)
    assert t["bias"].item() == pytest.approx(0.25)  # norms 1, 0
    total = sum(t[k].item() for k in ("img", "txte", "txtp", "cons", "bias"))
    assert t["total"].item() == pytest.approx(total, rel=1e-5)
    # a x100 on a temperature-1 loss would change it: the scales really differ
    assert t["cons"].item() != pytest.approx(ce(100 * n @ p_hat.T, tgt), rel=1e-3)


def _problem(seed=0, c=5, k=4, d=8, n_val=60):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    w_txt = torch.randn(d, d, generator=g) / d ** 0.5
    support = 0.5 * text[:, None, :] + 0.3 * torch.randn(c, k, d, generator=g)
    val_y = torch.arange(n_val) % c
    val = 0.5 * text[val_y] + 0.4 * torch.randn(n_val, d, generator=g)
    eos = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    return support, w_txt, text, eos, val, val_y


def _train(cfg, seed=0):
    support, w_txt, text, eos, val, val_y = _problem(seed)
    pinv = truncated_pinv(w_txt, 0.3)
    proto = image_prototypes(support)
    v = InitValidator(val, val_y, text, proto, kl_bits(proto, text), cfg.init)
    return train_semobridge_t(support, w_txt, pinv, 1.7, text, eos, cfg, v)


def test_training_is_deterministic_and_selects_best_val():
    cfg = TrainingConfig(steps=12, warmup_steps=3, lr=1e-2)
    a, b = _train(cfg), _train(cfg)
    assert torch.equal(a.pinv_last, b.pinv_last) and torch.equal(a.bias_last, b.bias_last)
    assert a.curves["total"] == b.curves["total"] and a.curves["val_acc"] == b.curves["val_acc"]
    assert len(a.curves["step"]) == 12 and a.curves["lr"][:4] == [lr_at(i, cfg) for i in range(4)]
    acc = a.curves["val_acc"]
    assert a.best_val_acc == max(acc) and a.best_step == acc.index(max(acc))  # first strict improvement
    assert not torch.equal(a.pinv_last, truncated_pinv(_problem()[1], 0.3))  # it trained
    assert a.curves["bias"][0] == 0.0  # biases start at zero
    assert all(math.isfinite(x) for x in a.curves["total"])


def test_validation_every_nth_step_and_the_last_selects_among_them():
    every = TrainingConfig(steps=12, warmup_steps=3, lr=1e-2)
    sparse = every.model_copy(update={"validate_every": 5})
    a, b = _train(every), _train(sparse)
    validated = [s for s, acc in enumerate(b.curves["val_acc"]) if math.isfinite(acc)]
    assert validated == [4, 9, 11]  # after steps 5 and 10 (1-based) and the last
    assert [b.curves["val_acc"][s] for s in validated] == [a.curves["val_acc"][s] for s in validated]
    assert torch.equal(a.pinv_last, b.pinv_last)  # validation never changes the training
    assert b.best_step in validated and b.best_val_acc == max(a.curves["val_acc"][s] for s in validated)
    with pytest.raises(ValueError, match="validate_every >= 1"):
        TrainingConfig(validate_every=0)  # best_val needs validation
    assert TrainingConfig(validate_every=0, final_model="last_step").validate_every == 0


def test_validation_uses_the_weights_after_each_step():
    cfg = TrainingConfig(steps=3, warmup_steps=0, lr=5e-2)
    support, w_txt, text, eos, val, val_y = _problem(1)
    proto = image_prototypes(support)
    v = InitValidator(val, val_y, text, proto, kl_bits(proto, text), cfg.init)
    seen = []
    class Spy:
        def __call__(self, pinv, w, p_hat):
            seen.append((pinv.clone(), p_hat.clone()))
            return v(pinv, w, p_hat)
    res = train_semobridge_t(support, w_txt, truncated_pinv(w_txt, 0.3), 1.0, text, eos, cfg, Spy())
    assert len(seen) == 3
    last_pinv, last_p_hat = seen[-1]
    assert torch.equal(last_pinv, res.pinv_last)
    expect = bridged_prototypes(support, res.pinv_last, w_txt, 1.0, res.bias_last)[0]
    assert torch.allclose(last_p_hat, expect, atol=1e-6)


def test_checkpoint_mixing_choices():
    res = _train(TrainingConfig(steps=10, warmup_steps=0, lr=3e-2))
    pp, pb, qp = res.inference_weights("best_val", "faithful")
    assert pp is res.pinv_last and pb is res.bias_last and qp is res.pinv_best
    pp, pb, qp = res.inference_weights("best_val", "consistent")
    assert pp is res.pinv_best and pb is res.bias_best and qp is res.pinv_best
    pp, pb, qp = res.inference_weights("last_step", "faithful")
    assert pp is res.pinv_last and qp is res.pinv_last


def test_without_class_bias_and_img_only_variant():
    res = _train(TrainingConfig(steps=4, warmup_steps=0, use_class_bias=False, loss_variant="img"))
    assert res.bias_last is None
    assert all(math.isnan(x) for x in res.curves["txte"]) and not math.isnan(res.curves["img"][0])


def test_fused_ops_equal_pytorch_forms_and_gradients():
    from pipeline_lib.fewshot.ops import cross_entropy_mean, l2_normalize

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: l2_normalize(t, 2.5), (x,))
    assert torch.allclose(l2_normalize(x, 2.5), 2.5 * F.normalize(x, dim=-1))
    z = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0, 3, 1, 1, 2, 0])
    assert torch.autograd.gradcheck(lambda a: cross_entropy_mean(a, t), (z,))
    assert torch.allclose(cross_entropy_mean(z, t), F.cross_entropy(z, t))


@pytest.mark.parametrize("variant", ["img", "img+txt", "img+txt+cons", "all"])
@pytest.mark.parametrize("bias_scale", [None, 0.0, 0.3])  # no class bias; the zero init; a trained bias
def test_closed_form_step_equals_autograd_of_the_loss(variant, bias_scale):
    g = torch.Generator().manual_seed(1)
    c, k, d = 5, 4, 8
    support = torch.randn(c, k, d, dtype=torch.float64, generator=g)
    w_txt = torch.randn(d, d, dtype=torch.float64, generator=g) / 3
    text = F.normalize(torch.randn(c, d, dtype=torch.float64, generator=g), dim=-1)
    eos = F.normalize(torch.randn(c, d, dtype=torch.float64, generator=g), dim=-1)
    pinv = torch.randn(d, d, dtype=torch.float64, generator=g).requires_grad_()
    bias = (None if bias_scale is None
            else (bias_scale * torch.randn(c, d, dtype=torch.float64, generator=g)).requires_grad_())
    w = loss_weights(TrainingConfig(loss_variant=variant, use_class_bias=bias is not None), bias is not None)
    p_hat, u_hat, g_hat, _ = bridged_prototypes(support, pinv, w_txt, 1.7, bias)
    want = semobridge_t_losses(F.normalize(support, dim=-1), p_hat, u_hat, g_hat, text, eos, bias, w, 100.0)
    params = [pinv] + ([bias] if bias is not None else [])
    grads = torch.autograd.grad(want["total"], params, allow_unused=True)
    got = semobridge_t_step(support, F.normalize(support, dim=-1), pinv.detach(),
                            None if bias is None else bias.detach(), w_txt, 1.7, text, eos, w, 100.0)
    assert sorted(got.terms) == sorted(want)
    for name, value in want.items():
        assert got.terms[name].item() == pytest.approx(value.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(got.p_hat, p_hat.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.grad_pinv, grads[0], rtol=1e-10, atol=1e-12)
    if bias is not None:
        want_bias = torch.zeros_like(bias) if grads[1] is None else grads[1]
        torch.testing.assert_close(got.grad_bias, want_bias, rtol=1e-10, atol=1e-12)
    else:
        assert got.grad_bias is None


def test_training_equals_autograd_with_torch_adamw():
    """The loop as it reads in the spec (autograd of the loss, torch.optim.AdamW) ends where the closed-form loop
    ends, up to float rounding."""
    cfg = TrainingConfig(steps=40, warmup_steps=5)
    support, w_txt, text, eos, _, _ = _problem(3)
    pinv = truncated_pinv(w_txt, 0.3)
    res = train_semobridge_t(support, w_txt, pinv, 1.7, text, eos, cfg.model_copy(update={"final_model": "last_step"}))
    inv_text = pinv.clone().requires_grad_()
    bias = torch.zeros(support.shape[0], w_txt.shape[0], requires_grad=True)
    opt = torch.optim.AdamW([inv_text, bias], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    w = loss_weights(cfg, True)
    for step in range(cfg.steps):
        p_hat, u_hat, g_hat, _ = bridged_prototypes(support, inv_text, w_txt, 1.7, bias)
        total = semobridge_t_losses(F.normalize(support, dim=-1), p_hat, u_hat, g_hat, text, eos, bias, w,
                                    cfg.logit_scale)["total"]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad()
        total.backward()
        opt.step()
    torch.testing.assert_close(res.pinv_last, inv_text.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.bias_last, bias.detach(), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(res.pinv_last, pinv, atol=1e-4)  # the weights did move
