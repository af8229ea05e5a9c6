"""SAM-CZSL training and the czsl stage: loss terms, loss reduction, determinism, checkpoint selection, smoke runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from czsl_model_fixtures import make_bench

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.model import get_variant
from pipeline_lib.czsl.train import TokenSource, build_model, loss_terms, train_model
from pipeline_lib.czsl.worlds import pair_tensor


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("czsl"))


def test_loss_terms_kl_and_alpha_weighting():
    cfg = CzslConfig(kl_alpha=0.25, w_attr=0.5, w_obj=2.0)
    g = torch.Generator().manual_seed(0)
    logits = {f"{b}_{k}": torch.randn(4, n, generator=g) for b in ("img", "vac") for k, n in
              (("comp", 5), ("attr", 3), ("obj", 3))}
    y, a, o = torch.tensor([0, 1, 2, 4]), torch.tensor([0, 1, 2, 0]), torch.tensor([2, 1, 0, 0])
    ce = torch.nn.functional.cross_entropy
    t = loss_terms(logits, y, a, o, cfg, get_variant("+kl"))
    assert t["base"] == pytest.approx(float(ce(logits["img_comp"], y) + 0.5 * ce(logits["img_attr"], a)
                                            + 2.0 * ce(logits["img_obj"], o)), rel=1e-5)
    assert t["kl"] > 0
    assert t["loss"] == pytest.approx(float(t["base"] + 0.75 * t["base_vac"] + 0.25 * t["kl"]), rel=1e-5)
    same = {**logits, "vac_comp": logits["img_comp"].clone()}
    assert float(loss_terms(same, y, a, o, cfg, get_variant("+kl"))["kl"]) == pytest.approx(0.0, abs=1e-6)
    no_kl = loss_terms(logits, y, a, o, cfg, get_variant("+vac"))
    assert "kl" not in no_kl and no_kl["loss"] == pytest.approx(float(no_kl["base"] + no_kl["base_vac"]), rel=1e-5)
    assert set(loss_terms(logits, y, a, o, cfg, get_variant("baseline"))) == {"base", "loss"}


def _train(bench, cfg, aucs=None):
    model = build_model(cfg, get_variant("+kl"), bench.clip, bench.tok, bench.ds.attrs, bench.ds.objs, 128,
                        torch.device("cpu"))
    calls = iter(aucs or [])
    snapshots = []

    def val_auc(m):
        snapshots.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(calls, 0.0)

    src = TokenSource(bench.splits["train"], torch.device("cpu"))
    res = train_model(model, bench.splits["train"], pair_tensor(bench.ds, bench.ds.train_pairs), cfg, source=src,
                      val_auc=val_auc)
    return model, res, snapshots


def test_training_reduces_the_loss_and_is_deterministic(bench):
    cfg = CzslConfig(epochs=4, batch_size=16, vac_blocks=1)
    m1, r1, _ = _train(bench, cfg)
    m2, r2, _ = _train(bench, cfg)
    losses = [[h["loss"] for h in r1.history if h["epoch"] == e] for e in (1, 4)]
    assert np.mean(losses[1]) < 0.7 * np.mean(losses[0])
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_checkpoint_selection_ignores_a_single_epoch_spike(bench):
    cfg = CzslConfig(epochs=5, batch_size=24, vac_blocks=1)  # select_window 3: running median
    model, res, snapshots = _train(bench, cfg, aucs=[0.5, 0.95, 0.55, 0.6, 0.58])
    assert res.best_epoch == 3 and res.best_val_auc == 0.6  # median(0.95, 0.55, 0.6); the 0.95 spike is ignored
    state = model.state_dict()
    assert all(torch.equal(state[k], snapshots[2][k]) for k in state)


def test_smoothing_is_a_centred_running_median() -> None:
    from pipeline_lib.czsl.train import smooth

    out = smooth([0.2, 0.9, 0.5, 0.4], 3)
    assert np.isnan(out[[0, 3]]).all() and out[1:3].tolist() == [0.5, 0.5]
    assert smooth([0.2, 0.9], 1).tolist() == [0.2, 0.9] and smooth([0.2, 0.9], 3).tolist() == [0.2, 0.9]


def test_window_one_keeps_best_val_epoch(bench):
    cfg = CzslConfig(epochs=3, batch_size=24, vac_blocks=1, select_window=1)
    model, res, snapshots = _train(bench, cfg, aucs=[0.2, 0.9, 0.5])
    assert res.best_epoch == 2 and res.best_val_auc == 0.9
    assert [r["val_auc"] for r in res.val_curve] == [0.2, 0.9, 0.5]
    state = model.state_dict()
    assert all(torch.equal(state[k], snapshots[1][k]) for k in state)
    assert not all(torch.equal(state[k], snapshots[2][k]) for k in state)
