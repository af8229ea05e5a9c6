"""Open-world feasibility (spec 2.5): word-vector scores by hand, filters, val threshold search."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from czsl_fixtures import TRAIN_PAIRS, write_czsl_fixture
from torch import nn

from pipeline_lib.czsl.data import load_czsl_dataset
from pipeline_lib.czsl.evaluator import MASK_VALUE, evaluate
from pipeline_lib.czsl.feasibility import (
    Feasibility,
    backbone_word_embedder,
    calibrate_on_val,
    calibrate_threshold,
    compute_feasibility,
    dataset_feasibility,
    feasibility_filter,
    load_word_vectors,
    name_words,
    threshold_candidates,
    word_file_embedder,
)

ATTRS = ["blue", "green", "red"]
OBJS = ["ball", "cone", "cube"]
# Unit-free 2-d vectors: cos(red, green) = 0.6, cos(green, blue) = 0.8, cos(red, blue) = 0;
# cos(ball, cone) = cos(cube, cone) = 1/sqrt(2), cos(ball, cube) = 0.
VECTORS = {
    "red": (1.0, 0.0),
    "green": (0.6, 0.8),
    "blue": (0.0, 1.0),
    "ball": (1.0, 0.0),
    "cube": (0.0, 1.0),
    "cone": (1.0, 1.0),
    "fake": (2.0, 0.0),
    "fur": (0.0, 4.0),
    "the": (9.0, 9.0),
}
R = 1 / math.sqrt(2)


@pytest.fixture()
def vec_file(tmp_path: Path) -> Path:
    path = tmp_path / "vecs.txt"
    path.write_text("".join(f"{w} {x} {y}\n" for w, (x, y) in VECTORS.items()), encoding="utf-8")
    return path


def test_feasibility_by_hand(vec_file: Path) -> None:
    """Train: red-{ball, cube}, green-{cube}, blue-{cone}; ball seen with {red}, cube {green, red}, cone {blue}."""
    f = dataset_feasibility(ATTRS, OBJS, TRAIN_PAIRS, word_vectors=vec_file)
    assert f.source == "word_vectors:vecs.txt"
    expected = [
        (R + 0.0) / 2,  # blue ball: obj side cos(ball, cone); attr side cos(blue, red) = 0
        0.0,  # blue cone: seen
        (R + 0.8) / 2,  # blue cube: cos(cube, cone); attr side max(cos(blue, green), cos(blue, red)) = 0.8
        (0.0 + 0.6) / 2,  # green ball: cos(ball, cube) = 0; cos(green, red) = 0.6
        (R + 0.8) / 2,  # green cone: cos(cone, cube); cos(green, blue)
        0.0,  # green cube: seen
        0.0,  # red ball: seen
        (R + 0.0) / 2,  # red cone: max(cos(cone, ball), cos(cone, cube)); cos(red, blue) = 0
        0.0,  # red cube: seen
    ]
    assert f.scores.dtype == torch.float32
    assert f.scores.tolist() == pytest.approx(expected, abs=1e-6)
    assert f.seen_mask.tolist() == [False, True, False, False, False, True, True, False, True]


def test_minus_one_when_no_other_primitive() -> None:
    vecs = {"x": [1.0, 0.0], "y": [0.0, 1.0], "p": [1.0, 0.0], "q": [0.6, 0.8]}

    def embed(names):
        return torch.tensor([vecs[n] for n in names])

    f = compute_feasibility(["x", "y"], ["p", "q"], [("x", "p")], embed, source="test")
    # (x, q): obj side cos(q, p) = 0.6, no attr with q -> -1; (y, p): no obj with y -> -1, cos(y, x) = 0;
    # (y, q): -1 on both sides.
    assert f.scores.tolist() == pytest.approx([0.0, (0.6 - 1) / 2, (-1 + 0.0) / 2, -1.0])
    with pytest.raises(ValueError, match=r"embedder returned \(3, 2\) for 4 names"):
        compute_feasibility(["x", "y"], ["p", "q"], [("x", "p")], lambda names: embed(names[:3]), source="test")


def test_name_words_and_file_embedder(vec_file: Path) -> None:
    assert name_words("Faux.Fur") == ["fake", "fur"]  # default rename map
    assert name_words("traffic_light") == ["traffic", "light"]
    assert name_words("Shoes.Flats") == ["shoes", "flats"]
    assert name_words("Zebra", rename={"zebra": "the"}) == ["the"]
    embed = word_file_embedder(vec_file, rename={"Striped_Thing": "fur_fake"})
    out = embed(["faux.fur", "Striped_Thing", "RED"])
    assert out.tolist() == [[1.0, 2.0], [1.0, 2.0], [1.0, 0.0]]  # means of (2, 0) and (0, 4)
    with pytest.raises(KeyError, match=r"words are not in .*vecs.txt.*purple"):
        embed(["purple"])
    assert set(load_word_vectors(vec_file, {"red", "nope"})) == {"red"}


def test_word_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("red 1 2\nblue 1 x\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: word 'blue' has non-numeric"):
        load_word_vectors(bad, {"red", "blue"})
    bad.write_text("red 1 2\nblue 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: word 'blue' has 3 values; expected 2"):
        load_word_vectors(bad, {"red", "blue"})
    with pytest.raises(FileNotFoundError, match="GloVe"):
        dataset_feasibility(ATTRS, OBJS, TRAIN_PAIRS, word_vectors=tmp_path / "absent.txt")
    with pytest.raises(ValueError, match="no word-vector file configured and no fallback"):
        dataset_feasibility(ATTRS, OBJS, TRAIN_PAIRS)


class _TinyText(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(10, 2)
        with torch.no_grad():
            self.token_embedding.weight.copy_(torch.arange(20, dtype=torch.float32).view(10, 2))


def _tokenizer(texts: list[str]) -> torch.Tensor:
    """SOT = 8, EOT = 9 (the largest id, as in CLIP's BPE), padding 0."""
    vocab = {"blue": 1, "green": 2, "red": 3, "ball": 4, "cone": 5, "cube": 6, "shiny": 7}
    out = torch.zeros(len(texts), 6, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [8, *(vocab[w] for w in t.split()), 9]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def test_backbone_fallback_embedder() -> None:
    embed = backbone_word_embedder(_TinyText(), _tokenizer)
    out = embed(["Red", "shiny_ball", "Shiny.Cube"])
    w = _TinyText().token_embedding.weight
    assert torch.allclose(out, torch.stack([w[3], (w[7] + w[4]) / 2, (w[7] + w[6]) / 2]))
    f = dataset_feasibility(ATTRS, OBJS, TRAIN_PAIRS, fallback=embed)
    assert f.source == "backbone_token_embeddings" and f.scores.shape == (9,)
    with pytest.raises(TypeError, match="no token_embedding"):
        backbone_word_embedder(nn.Linear(2, 2), _tokenizer)


FEAS = torch.tensor([0.35, 0.0, 0.75, 0.3, 0.75, 0.0, 0.0, 0.35, 0.0])
SEEN = torch.tensor([False, True, False, False, False, True, True, False, True])


def test_filters() -> None:
    scores = torch.full((2, 9), 10.0)
    mult = feasibility_filter(FEAS, SEEN, 0.5, "multiply")(scores)
    assert mult[0].tolist() == [0, 10, 10, 0, 10, 10, 10, 0, 10]  # infeasible unseen -> 0 (not -inf)
    doubled = feasibility_filter(FEAS, SEEN, -0.1, "multiply")(scores)
    assert doubled[0].tolist() == [10, 20, 10, 10, 10, 20, 20, 10, 20]  # tau <= 0: seen pairs (feas 0) doubled
    masked = feasibility_filter(FEAS, SEEN, 0.5, "mask")(scores)
    assert masked[0].tolist() == [MASK_VALUE, 10, 10, MASK_VALUE, 10, 10, 10, MASK_VALUE, 10]
    assert feasibility_filter(FEAS, SEEN, -0.1, "mask")(scores).equal(scores)  # seen never doubled
    with pytest.raises(ValueError, match="filter variant='soft'"):
        feasibility_filter(FEAS, SEEN, 0.5, "soft")  # type: ignore[arg-type]


def test_threshold_candidates() -> None:
    t = threshold_candidates(FEAS, SEEN)
    assert len(t) == 50 and t[0] == pytest.approx(0.3) and t[-1] == pytest.approx(0.75)
    assert np.allclose(np.diff(t), (0.75 - 0.3) / 49)


def _val_problem(seed: int = 0):
    """Grid 3 x 3 (attr-major, as FEAS); unseen samples of feasible pairs 2 and 4 face a strong distractor on an
    infeasible unseen pair (0, 3 or 7), which only filtering removes."""
    gen = torch.Generator().manual_seed(seed)
    pa = torch.arange(3).repeat_interleave(3)
    po = torch.arange(3).repeat(3)
    y = torch.tensor([1, 5, 6, 8] * 5 + [2, 4] * 10)
    scores = 1 + torch.rand(len(y), 9, generator=gen)  # positive, as CLIP logits
    scores[torch.arange(len(y)), y] += 1.5
    distractor = torch.tensor([0, 3, 7])[torch.randint(3, (len(y),), generator=gen)]
    unseen_rows = torch.arange(20, len(y))
    scores[unseen_rows, distractor[unseen_rows]] += 3.0
    return scores, pa[y], po[y], y, pa, po


def test_calibration_picks_best_val_auc() -> None:
    scores, a, o, y, pa, po = _val_problem()
    feas = Feasibility(scores=FEAS, seen_mask=SEEN, source="test")
    cal = calibrate_threshold(scores, a, o, y, pa, po, feas, variant="multiply", chunk_size=7)
    unfiltered = evaluate(scores, a, o, y, pa, po, SEEN, torch.ones(9, dtype=torch.bool))
    assert cal.val_aucs[0] == pytest.approx(unfiltered.auc)  # tau = lo keeps every pair
    assert cal.val_metrics.auc == max(cal.val_aucs) > unfiltered.auc
    assert cal.threshold == cal.thresholds[cal.val_aucs.index(max(cal.val_aucs))]  # first best
    assert 0.35 < cal.threshold <= 0.75  # distractor pairs (feas <= 0.35) are filtered
    assert (cal.variant, cal.source) == ("multiply", "test")
    # The chosen tau gives the same result as filtering the matrix up front.
    pre = feasibility_filter(FEAS, SEEN, cal.threshold)(scores)
    assert evaluate(pre, a, o, y, pa, po, SEEN, torch.ones(9, dtype=torch.bool)).to_dict() == cal.val_metrics.to_dict()
    masked = calibrate_threshold(scores, a, o, y, pa, po, feas, variant="mask", n_thresholds=5)
    assert masked.variant == "mask" and len(masked.thresholds) == 5
    with pytest.raises(ValueError, match="expected 9"):
        calibrate_threshold(scores[:, :8], a, o, y, pa[:8], po[:8], feas)


def test_saved_feasibility_round_trip(tmp_path: Path, vec_file: Path) -> None:
    f = dataset_feasibility(ATTRS, OBJS, TRAIN_PAIRS, word_vectors=vec_file)
    f.save(tmp_path / "feas.npy")
    back = np.load(tmp_path / "feas.npy")
    assert back.dtype == np.float32 and np.array_equal(back, f.scores.numpy())


def test_calibrate_on_val_checks_world_and_mask(tmp_path: Path, vec_file: Path) -> None:
    root = write_czsl_fixture(tmp_path / "shapes")
    ow, cw = load_czsl_dataset(root, "open"), load_czsl_dataset(root, "closed")
    feas = dataset_feasibility(ow.attrs, ow.objs, ow.train_pairs, word_vectors=vec_file)
    _, _, pair = ow.labels("val")
    scores = 1 + torch.nn.functional.one_hot(pair, 9).float()  # (3, 9) positive, perfect
    cal = calibrate_on_val(scores, ow, feas, n_thresholds=3)
    assert len(cal.thresholds) == 3 and cal.source == "word_vectors:vecs.txt"
    with pytest.raises(ValueError, match="needs the open world"):
        calibrate_on_val(scores, cw, feas)
    other = Feasibility(scores=feas.scores, seen_mask=~feas.seen_mask, source="x")
    with pytest.raises(ValueError, match="seen mask differs"):
        calibrate_on_val(scores, ow, other)
