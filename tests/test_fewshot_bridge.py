"""Bridge formulas (SeMoBridge spec 3) against hand-computed small cases."""

import torch
import torch.nn.functional as F

from pipeline_lib.fewshot.bridge import (
    bridge,
    bridged_prototypes,
    bridged_queries,
    fit_bridge,
    image_prototypes,
    rescale_constant,
    truncated_pinv,
)


def test_pinv_atol_is_absolute_and_drops_values_equal_to_it():
    # torch keeps sigma > atol: a singular value exactly at atol is dropped (exactly representable 0.5 / 0.25).
    for dt in (torch.float32, torch.float64):
        w = torch.diag(torch.tensor([2.0, 0.5, 0.25, 0.1], dtype=dt))
        assert torch.equal(truncated_pinv(w, 0.5).diagonal(), torch.tensor([0.5, 0.0, 0.0, 0.0]))
        assert torch.allclose(truncated_pinv(w, 0.25).diagonal(), torch.tensor([0.5, 2.0, 0.0, 0.0]))
    # float32(0.3) = 0.30000001 > 0.3 (double atol), so torch keeps it: pinned because W_txt is fp32.
    w = torch.diag(torch.tensor([1.0, 0.3, 0.29999998]))
    d = truncated_pinv(w, 0.3).diagonal()
    assert d[1] > 3.3 and d[2] == 0.0
    # absolute, not relative: scaling W up keeps the small values
    w = torch.diag(torch.tensor([100.0, 0.4]))
    assert torch.allclose(truncated_pinv(w, 0.3).diagonal(), torch.tensor([0.01, 2.5]))


def test_pinv_of_rotated_matrix_truncates_in_its_svd_basis():
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    s = torch.tensor([3.0, 1.0, 0.2, 0.05], dtype=torch.float64)
    w = u @ torch.diag(s) @ v.T
    expect = v @ torch.diag(torch.tensor([1 / 3.0, 1.0, 0, 0], dtype=torch.float64)) @ u.T
    assert torch.allclose(torch.linalg.pinv(w, atol=0.3, rtol=0), expect, atol=1e-10)
    fit = fit_bridge(w.float(), torch.ones(2, 4), 0.3)
    assert fit.n_dropped == 2 and fit.rank_pinv_wtxt == 2
    assert abs(fit.scale - 2.0) < 1e-6  # ||(1,1,1,1)|| = 2


def test_rescale_constant_is_mean_of_class_mean_norms():
    eos_raw = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    assert rescale_constant(eos_raw) == 3.0


def test_bridge_order_of_operations():
    pinv = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # (D_p, D_t)
    w_txt = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # (D_t, D_p)
    f = torch.tensor([[1.0, 2.0]])
    b = torch.tensor([1.0, -1.0])
    g, u = bridge(f, pinv, w_txt, scale=10.0, bias=b)
    # u = f W+ + b = (2, 2) + (1, -1) = (3, 1); u~ = 10 (3, 1)/sqrt(10); g = u~ W_txt = 10/sqrt(10) (3, 4)
    r = 10.0 / 10.0 ** 0.5
    assert torch.allclose(u, torch.tensor([[3 * r, r]]))
    assert torch.allclose(g, torch.tensor([[3 * r, 4 * r]]))
    # the bias is added before normalising: scaling f changes the bridged direction
    g2, _ = bridge(2 * f, pinv, w_txt, 10.0, b)
    assert not torch.allclose(F.normalize(g2, dim=-1), F.normalize(g, dim=-1))


def test_prototypes_hand_case():
    support = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])  # (C=1, K'=2, D=2)
    assert torch.allclose(image_prototypes(support), F.normalize(torch.tensor([[1.0, 0.5]]), dim=-1))
    eye = torch.eye(2)
    p_hat, u_hat, g_hat, _ = bridged_prototypes(support, eye, eye, scale=3.0)
    # each view normalised first: (1, 0) and (0, 1), so the bridged prototype is n(1, 1), unlike P
    assert torch.allclose(p_hat, F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1))
    assert torch.allclose(u_hat, p_hat) and torch.allclose(g_hat.norm(dim=-1), torch.full((1, 2), 3.0))
    bias = torch.tensor([[0.0, 1.0]])  # class bias goes to every view of its class
    p_b = bridged_prototypes(support, eye, eye, 1.0, bias)[0]
    v1 = F.normalize(torch.tensor([2.0, 1.0]), dim=0)
    v2 = F.normalize(torch.tensor([0.0, 2.0]), dim=0)
    assert torch.allclose(p_b[0], F.normalize(v1 + v2, dim=0))


def test_bridged_queries_equals_normalised_bridge():
    torch.manual_seed(1)
    w = torch.randn(6, 5)
    pinv = truncated_pinv(w, 0.3)
    f = torch.randn(7, 5)
    g, _ = bridge(f, pinv, w, scale=2.5)
    assert torch.allclose(bridged_queries(f, pinv, w), F.normalize(g, dim=-1), atol=1e-6)
