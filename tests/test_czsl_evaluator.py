"""The standard CZSL evaluator (spec 2.4) against hand-computed values and a literal transcription of the spec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from czsl_fixtures import write_czsl_fixture

from pipeline_lib.czsl.data import load_czsl_dataset
from pipeline_lib.czsl.evaluator import evaluate, evaluate_split, harmonic_means


def grid(n_attr: int, n_obj: int) -> tuple[torch.Tensor, torch.Tensor]:
    """attr / obj index of every pair of an attr-major grid."""
    pa = torch.arange(n_attr).repeat_interleave(n_obj)
    po = torch.arange(n_obj).repeat(n_attr)
    return pa, po


def run(scores, y, pa, po, seen, closed=None, **kw):
    y = torch.as_tensor(y)
    closed = torch.ones_like(seen) if closed is None else closed
    return evaluate(torch.as_tensor(scores, dtype=torch.float32), pa[y], po[y], y, pa, po, seen, closed, **kw)


def naive(
    scores: np.ndarray, y: np.ndarray, pa: np.ndarray, po: np.ndarray, seen: np.ndarray, closed: np.ndarray, k: int = 1
) -> dict:
    """Spec 2.3 / 2.4 transcribed step by step on full float32 NumPy copies (no chunks, no shortcuts)."""
    a, o = pa[y], po[y]

    def predict(b):  # 2.3: copy, add b to unseen columns, -1e10 outside the closed mask, top-k, attr and obj match
        t = scores.copy()
        t[:, ~seen] += np.float32(b)
        t[:, ~closed] = np.float32(-1e10)
        top = np.argsort(-t, axis=1, kind="stable")[:, :k]
        return ((pa[top] == a[:, None]) & (po[top] == o[:, None])).any(1), top

    s_idx, u_idx = seen[y], ~seen[y]
    match_max, _ = predict(1000.0)
    _, top_ub = predict(0.0)
    c = scores[np.arange(len(y)), y]
    m = np.sort(scores[:, seen], axis=1)[:, -k]
    d = (m - c)[u_idx][match_max[u_idx]] - np.float32(1e-4)
    d = np.sort(d)
    biases = d[:: max(len(d) // 20, 1)]
    curve_s = [predict(b)[0][s_idx].mean() for b in biases] + [match_max[s_idx].mean()]
    curve_u = [predict(b)[0][u_idx].mean() for b in biases] + [match_max[u_idx].mean()]
    s, u = np.array(curve_s), np.array(curve_u)
    auc = sum((u[j + 1] - u[j]) * (s[j] + s[j + 1]) / 2 for j in range(len(s) - 1))
    hm = [0.0 if x == 0 or z == 0 else 2 * x * z / (x + z) for x, z in zip(s, u, strict=True)]
    idx = int(np.argmax(hm))
    return {
        "seen": s.max(),
        "unseen": u.max(),
        "hm": hm[idx],
        "auc": auc,
        "attr_acc": (pa[top_ub] == a[:, None]).any(1).mean(),
        "obj_acc": (po[top_ub] == o[:, None]).any(1).mean(),
        "best_bias": 1000.0 if idx == len(biases) else float(biases[idx]),
        "biases": [float(b) for b in biases],
    }


# ---------------------------------------------------------------------------------------------------------------------
# Hand example (closed world). Pairs p0=(a0,o0) seen, p1=(a0,o1) seen, p2=(a1,o0) unseen, p3=(a1,o1) unseen but
# outside the closed mask (like a val-only pair in the test phase). Values are exact in binary.
HAND_SCORES = [
    [0.75, 0.25, 0.5, 1.0],  # s0 seen, y=p0 (p3 would win without the closed mask)
    [0.25, 0.5, 0.375, 0.0],  # s1 seen, y=p1
    [0.75, 0.125, 0.5, 0.0],  # s2 unseen, y=p2: c=0.5, m=0.75 -> d=0.25
    [0.25, 0.125, 0.625, 0.875],  # s3 unseen, y=p2: c=0.625, m=0.25 -> d=-0.375
    [0.0, 0.875, 0.125, 0.0],  # s4 unseen, y=p2: c=0.125, m=0.875 -> d=0.75
]
HAND_Y = [0, 1, 2, 2, 2]
HAND_SEEN = torch.tensor([True, True, False, False])
HAND_CLOSED = torch.tensor([True, True, True, False])


def test_hand_example() -> None:
    pa, po = grid(2, 2)
    m = run(HAND_SCORES, HAND_Y, pa, po, HAND_SEEN, HAND_CLOSED)
    # 1. Max bias (+1000 on p2; p3 masked): every sample predicts p2 -> seen 0/2, unseen 3/3.
    assert (m.seen_at_max, m.unseen_at_max) == (0.0, 1.0)
    # 2. Unbiased (closed mask): s0 p0 ok, s1 p1 ok, s2 p0 (attr wrong, obj right), s3 p2 ok, s4 p1 (both wrong).
    assert m.attr_acc == pytest.approx(3 / 5) and m.obj_acc == pytest.approx(4 / 5)
    assert m.acc_unbiased == pytest.approx(3 / 5)
    assert m.seen_unbiased == 1.0 and m.unseen_unbiased == pytest.approx(1 / 3)
    # 3. Kept margins (all unseen correct at max bias) d - 1e-4 sorted: [-0.3751, 0.2499, 0.7499]; step = 1.
    assert m.biases == pytest.approx([-0.3751, 0.2499, 0.7499], abs=1e-6)
    # 4. Sweep:
    #    b=-0.3751: s0 p0 (0.75 > 0.1249) ok; s1 p1 (0.5 > -0.0001) ok; s2 0.1249 < 0.75 no; s3 0.2499 < 0.25 no;
    #               s4 no                                         -> seen 2/2, unseen 0/3
    #    b=0.2499:  s0 0.7499 < 0.75 ok; s1 p2 0.6249 > 0.5 wrong; s2 0.7499 < 0.75 no; s3 0.8749 ok; s4 0.3749 no
    #                                                             -> seen 1/2, unseen 1/3
    #    b=0.7499:  s0, s1 lose to p2; s2 1.2499 ok; s3 ok; s4 0.8749 < 0.875 no -> seen 0/2, unseen 2/3
    #    appended max-bias point                                  -> seen 0, unseen 1
    assert m.curve_seen == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert m.curve_unseen == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # 5. AUC = (1/3)(1 + 0.5)/2 + (1/3)(0.5 + 0)/2 + (1/3)(0 + 0)/2 = 1/4 + 1/12 = 1/3.
    assert m.auc == pytest.approx(1 / 3)
    #    HM = [0, 2(0.5)(1/3)/(0.5 + 1/3) = 0.4, 0, 0] -> best at index 1, its bias 0.2499.
    assert m.hm == pytest.approx(0.4) and (m.hm_seen, m.hm_unseen) == (0.5, pytest.approx(1 / 3))
    assert m.best_bias == pytest.approx(0.2499, abs=1e-6)
    assert (m.seen, m.unseen) == (1.0, 1.0)  # best seen is the first point, best unseen the appended one
    assert (m.n_seen, m.n_unseen) == (2, 3)


def test_open_world_mask_changes_the_hand_example() -> None:
    """With an all-ones mask p3 competes: s0 and s3 now pick p3 unbiased, s3 loses to p3 at max bias too."""
    pa, po = grid(2, 2)
    m = run(HAND_SCORES, HAND_Y, pa, po, HAND_SEEN, torch.ones(4, dtype=torch.bool))
    assert m.attr_acc == pytest.approx(2 / 5) and m.obj_acc == pytest.approx(2 / 5)
    assert m.unseen_at_max == pytest.approx(2 / 3)
    ref = naive(
        np.array(HAND_SCORES, np.float32), np.array(HAND_Y), pa.numpy(), po.numpy(), HAND_SEEN.numpy(), np.ones(4, bool)
    )
    assert m.auc == pytest.approx(ref["auc"]) and m.hm == pytest.approx(ref["hm"])


def test_perfect_scores() -> None:
    """True pair scores highest (distinct unseen margins): S = U = 1 and AUC = 0.95 + 0.05 / 2 = 0.975."""
    pa, po = grid(3, 4)
    seen = torch.arange(12) < 6
    y = [i % 6 for i in range(10)] + [6 + i % 6 for i in range(40)]
    scores = torch.zeros(50, 12)
    for i, yi in enumerate(y):
        scores[i, yi] = 1.0 if i < 10 else 1.0 + 0.01 * (i - 10)
    m = run(scores, y, pa, po, seen)
    assert (m.seen, m.unseen, m.attr_acc, m.obj_acc) == (1.0, 1.0, 1.0, 1.0)
    assert len(m.biases) == 20  # 40 kept margins, step 2
    assert m.curve_unseen[:-1] == pytest.approx([j / 40 for j in range(0, 40, 2)])
    assert m.auc == pytest.approx(0.975) and m.auc > 0.95
    assert m.hm == pytest.approx(2 * 0.95 / 1.95)


def test_seen_only_correct_gives_zero_unseen() -> None:
    pa, po = grid(2, 3)
    seen = torch.tensor([True, True, True, False, False, False])
    y = [0, 1, 2, 3, 4, 5]
    scores = torch.zeros(6, 6)
    scores[0, 0] = scores[1, 1] = scores[2, 2] = 1.0
    scores[3, 3] = scores[4, 4] = scores[5, 5] = -5.0  # unseen truths below every other pair, even at max bias
    m = run(scores, y, pa, po, seen)
    assert m.unseen == 0.0 and m.hm == 0.0 and m.auc == 0.0
    assert m.biases == [] and m.best_bias == 1000.0  # no unseen sample correct at max bias: one curve point
    assert m.seen_unbiased == 1.0 and m.unseen_unbiased == 0.0


def test_top1_semantics() -> None:
    pa, po = grid(2, 2)
    seen = torch.tensor([True, True, False, False])
    scores = [
        [0.5, 0.5, 0.0, 0.0],  # y=p1 tied with p0: the first index (p0) is predicted -> wrong
        [0.0, 0.1, 0.9, 0.0],  # y=p0, p2 predicted: obj right, attr wrong -> wrong
        [0.0, 0.0, 0.3, 0.2],  # y=p3, p2 shares its attr but not its obj -> wrong
        [0.0, 0.1, 0.2, 0.9],  # y=p3 right
    ]
    y = [1, 0, 3, 3]
    m1 = run(scores, y, pa, po, seen)
    assert m1.acc_unbiased == 0.25  # only the last row
    assert m1.attr_acc == 0.75  # rows 0 (p0: a0), 2 (p2: a1), 3
    m2 = run(scores, y, pa, po, seen, top_k=2)
    # top-2: row 0 {p0, p1} ok; row 1 {p1, p2} lacks p0 -> wrong; row 2 {p2, p3} ok; row 3 ok.
    assert m2.acc_unbiased == 0.75 and m2.top_k == 2


def test_matches_direct_transcription() -> None:
    gen = torch.Generator().manual_seed(0)
    pa, po = grid(4, 5)
    for trial in range(4):
        seen = torch.rand(20, generator=gen) < 0.4
        closed = seen | (torch.rand(20, generator=gen) < 0.7)
        candidates = torch.nonzero(closed).flatten()
        y = candidates[torch.randint(len(candidates), (120,), generator=gen)]
        scores = torch.randn(120, 20, generator=gen) * (1 + trial) + 3 * torch.nn.functional.one_hot(y, 20)
        for k in (1, 2):
            m = run(scores, y, pa, po, seen, closed, top_k=k)
            ref = naive(scores.numpy(), y.numpy(), pa.numpy(), po.numpy(), seen.numpy(), closed.numpy(), k=k)
            for key in ("seen", "unseen", "hm", "auc", "attr_acc", "obj_acc", "best_bias"):
                assert getattr(m, key) == pytest.approx(ref[key], abs=1e-12), (trial, k, key)
            assert m.biases == ref["biases"]
            assert len(m.curve_seen) == len(m.curve_unseen) == len(m.biases) + 1 > 1


def test_ties_match_direct_transcription() -> None:
    """Exact ties (integer scores: many more than 8 tied columns) and ties created by float32 rounding at b = 1000
    (raw scores 1e-6 apart, ulp(1025) = 6.1e-5) resolve to the lowest column, as a full biased row's argmax does."""
    gen = torch.Generator().manual_seed(3)
    pa, po = grid(5, 6)
    seen = torch.rand(30, generator=gen) < 0.3
    closed = seen | (torch.rand(30, generator=gen) < 0.8)
    candidates = torch.nonzero(closed).flatten()
    y = candidates[torch.randint(len(candidates), (90,), generator=gen)]
    integer = torch.randint(0, 3, (90, 30), generator=gen).float()
    near = 25 + torch.randint(0, 20, (90, 30), generator=gen).float() * 1e-6
    near[torch.arange(90), y] += 2e-6
    for scores in (integer, near):
        m = run(scores, y, pa, po, seen, closed)
        ref = naive(scores.numpy(), y.numpy(), pa.numpy(), po.numpy(), seen.numpy(), closed.numpy())
        for key in ("seen", "unseen", "hm", "auc", "attr_acc", "obj_acc", "best_bias"):
            assert getattr(m, key) == pytest.approx(ref[key], abs=1e-12), key
        assert m.biases == ref["biases"]


def test_chunked_equals_unchunked_and_numpy_input() -> None:
    gen = torch.Generator().manual_seed(1)
    pa, po = grid(3, 5)
    seen = torch.arange(15) % 3 == 0
    y = torch.randint(15, (53,), generator=gen)
    scores = torch.randn(53, 15, generator=gen) + 2 * torch.nn.functional.one_hot(y, 15)
    full = run(scores, y, pa, po, seen, chunk_size=10_000).to_dict()
    for chunk in (1, 4, 17):
        assert run(scores, y, pa, po, seen, chunk_size=chunk).to_dict() == full
    arr = scores.numpy()
    m = evaluate(arr, pa[y], po[y], y, pa, po, seen, torch.ones(15, dtype=torch.bool), chunk_size=7)
    assert m.to_dict() == full


def test_seen_at_max_nonzero_with_log_probabilities() -> None:
    """Seen samples whose unseen log-probabilities are below -1000 stay correct at b = 1000 (spec 2.4.1)."""
    gen = torch.Generator().manual_seed(2)
    pa, po = grid(3, 4)
    seen = torch.arange(12) < 6
    y = torch.cat([torch.arange(8) % 6, 6 + torch.arange(12) % 6])  # 8 seen, 12 unseen samples
    logits = torch.randn(20, 12, generator=gen) + 4 * torch.nn.functional.one_hot(y, 12)
    logits[:4, 6:] -= 3000.0  # the first 4 seen samples: unseen pairs 3000 nats down
    scores = torch.log_softmax(logits, dim=1)
    m = run(scores, y, pa, po, seen)
    assert m.seen_at_max == 0.5 and m.curve_seen[-1] == 0.5
    ref = naive(scores.numpy(), y.numpy(), pa.numpy(), po.numpy(), seen.numpy(), np.ones(12, bool))
    assert m.auc == pytest.approx(ref["auc"], abs=1e-12) and m.hm == pytest.approx(ref["hm"], abs=1e-12)


def test_harmonic_means_zero_when_either_is_zero() -> None:
    assert harmonic_means(np.array([0.0, 0.5, 1.0]), np.array([1.0, 0.5, 0.0])).tolist() == [0.0, 0.5, 0.0]


def test_input_errors() -> None:
    pa, po = grid(2, 2)
    seen = torch.tensor([True, False, True, False])
    y = torch.tensor([0, 1])
    ones = torch.ones(4, dtype=torch.bool)
    with pytest.raises(ValueError, match="float32"):
        evaluate(torch.zeros(2, 4, dtype=torch.float16), pa[y], po[y], y, pa, po, seen, ones)
    with pytest.raises(ValueError, match=r"seen_mask has shape \(3,\); expected \(4,\)"):
        evaluate(torch.zeros(2, 4), pa[y], po[y], y, pa, po, seen[:3], ones)
    with pytest.raises(ValueError, match="sample 0: pair label 0"):
        evaluate(torch.zeros(2, 4), po[y] + 1, po[y], y, pa, po, seen, ones)
    with pytest.raises(ValueError, match="0 seen and 2 unseen"):
        evaluate(
            torch.zeros(2, 4), pa[y + 1], po[y + 1], y + 1, pa, po, torch.tensor([True, False, False, False]), ones
        )


def test_truth_outside_closed_mask_counts_wrong(caplog: pytest.LogCaptureFixture) -> None:
    """As in the references: a sample whose pair is masked stays in the counts and is never correct."""
    pa, po = grid(2, 2)
    scores = [*HAND_SCORES, [0.0, 0.0, 0.0, 5.0]]  # s5 unseen, y=p3 (masked) with the top raw score
    y = [*HAND_Y, 3]
    with caplog.at_level("WARNING", logger="pipeline_lib.czsl.evaluator"):
        m = run(scores, y, pa, po, HAND_SEEN, HAND_CLOSED)
    assert "1 samples have their ground-truth pair outside the closed mask" in caplog.text
    assert m.n_unseen == 4 and m.unseen_at_max == 0.75
    ref = naive(
        np.array(scores, np.float32), np.array(y), pa.numpy(), po.numpy(), HAND_SEEN.numpy(), HAND_CLOSED.numpy()
    )
    assert (m.auc, m.hm, m.unseen) == (pytest.approx(ref["auc"]), pytest.approx(ref["hm"]), ref["unseen"])


def test_evaluate_split_on_fixture(tmp_path: Path) -> None:
    root = write_czsl_fixture(tmp_path / "shapes")
    for world in ("closed", "open"):
        ds = load_czsl_dataset(root, world)
        pair = ds.labels("test")[2]
        scores = torch.nn.functional.one_hot(pair, len(ds.pairs)).float() + 0.1  # (N, P) perfect
        m = evaluate_split(scores, ds, "test")
        assert (m.seen, m.unseen, m.n_seen, m.n_unseen) == (1.0, 1.0, 1, 3)
        assert math.isfinite(m.auc) and 0 < m.auc <= 1
    with pytest.raises(ValueError, match="'val' or 'test'"):
        evaluate_split(scores, ds, "train")
