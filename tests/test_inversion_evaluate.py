"""Inversion evaluation: per-query AP, the validation/test query split, step selection on validation only."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline_lib.diagnose.retrieval import per_query_metrics, retrieval_metrics
from pipeline_lib.inversion.evaluate import (
    BASELINE_STEP,
    PER_QUERY_SCHEMA,
    direction_split,
    evaluate_direction,
    select_step,
    split_queries,
)


@pytest.mark.parametrize(("same_set", "chunk"), [(False, 1024), (False, 7), (True, 5)])
def test_per_query_ap_means_are_the_reported_metrics(same_set: bool, chunk: int) -> None:
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 4, size=40)
    gallery = gen.normal(size=(40, 16)).astype(np.float32)
    query = gallery if same_set else gen.normal(size=(23, 16)).astype(np.float32)
    qlabels = labels if same_set else labels[:23]
    kw = {"own": np.arange(40) if same_set else None, "chunk": chunk}
    pq = per_query_metrics(query, qlabels, gallery, labels, **kw)
    mean = retrieval_metrics(query, qlabels, gallery, labels, **kw)
    assert pq.ap.dtype == np.float64 and pq.ap.shape == (len(query),)
    assert ((pq.ap > 0) & (pq.ap <= 1)).all()
    assert pq.ap.mean() == pytest.approx(mean.map, rel=1e-12, abs=1e-12)
    assert pq.mean().as_dict() == pytest.approx(mean.as_dict(), rel=1e-12, abs=1e-12)
    # the mean over a subset is the metric of that subset of queries
    sub = np.arange(len(query)) % 3 == 0
    if not same_set:
        assert pq.mean(sub).as_dict() == pytest.approx(
            retrieval_metrics(query[sub], qlabels[sub], gallery, labels, chunk=chunk).as_dict(), rel=1e-12)


def test_split_is_disjoint_complete_stratified_and_deterministic() -> None:
    labels = np.repeat(np.arange(6), [300, 300, 301, 299, 7, 1])
    val = split_queries(labels, 0.5, 42)
    assert val.dtype == bool and val.shape == labels.shape  # a mask: val and test (~val) cover all, disjoint
    idx_val, idx_test = np.flatnonzero(val), np.flatnonzero(~val)
    assert set(idx_val).isdisjoint(idx_test) and len(idx_val) + len(idx_test) == len(labels)
    assert val.sum() == len(labels) // 2
    for c in range(5):  # every label gets its share to within one
        members = labels == c
        assert abs(val[members].sum() - 0.5 * members.sum()) <= 1
    assert (split_queries(labels, 0.5, 42) == val).all()  # deterministic
    assert (split_queries(labels, 0.5, 43) != val).any()  # and seeded
    assert split_queries(labels, 0.2, 42).sum() == int(len(labels) * 0.2)  # 241.6 -> 241: test keeps the rest
    assert split_queries(np.zeros(100), 0.57, 0).sum() == 57
    assert (direction_split("image", labels, 0.5, 42) != direction_split("text", labels, 0.5, 42)).any()


def test_split_of_single_query_groups_and_tiny_sets() -> None:
    groups = np.arange(128)  # text retrieval: one query per group
    val = split_queries(groups, 0.5, 0)
    assert val.sum() == 64 and not (val[:64].all() or val[64:].all())  # spread over the groups, not a block
    assert split_queries(np.array([0, 1, 2]), 0.5, 0).sum() == 1  # 1.5 -> 1: the odd query goes to test
    assert split_queries(np.array([0, 0]), 0.01, 0).sum() == 1  # each half keeps at least one query
    assert split_queries(np.array([0, 0]), 0.99, 0).sum() == 1
    with pytest.raises(ValueError, match="at least 2"):
        split_queries(np.array([3]), 0.5, 0)


def test_val_fraction_is_validated() -> None:
    from pydantic import ValidationError

    from pipeline_lib.inversion.config import InversionConfig

    assert InversionConfig().val_fraction == 0.5
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValidationError, match="val_fraction"):
            InversionConfig(val_fraction=bad)


def test_select_step_uses_the_given_validation_maps_and_prefers_the_earlier_step_on_ties() -> None:
    val = {1: 0.30, 10: 0.45, 50: 0.40, 150: 0.38}
    test = {1: 0.31, 10: 0.41, 50: 0.47, 150: 0.39}  # test would pick 50
    assert select_step(val) == 10
    assert select_step(test) == 50
    assert select_step({1: 0.5, 10: 0.7, 50: 0.7, 150: 0.2}) == 10
    assert select_step({150: 0.7, 50: 0.7}) == 50  # whatever the dict order
    with pytest.raises(ValueError):
        select_step({})


def _fixture() -> tuple[np.ndarray, ...]:
    """Two labels on orthogonal axes, two gallery items each; queries 0, 1 validation, 2, 3 test.

    At step 1 the validation queries sit on their own label (AP 1) and the test queries on the other (AP 5/12); at
    step 2 the other way round. So validation prefers step 1 and test prefers step 2.
    """
    e = np.eye(4, dtype=np.float32)
    gallery = np.stack([e[0], e[0] + 0.1 * e[2], e[1], e[1] + 0.1 * e[2]])
    glabels = np.array([0, 0, 1, 1])
    qlabels = np.array([0, 1, 0, 1])
    right, wrong = e[qlabels], e[1 - qlabels]
    is_val = np.array([True, True, False, False])
    step1 = np.where(is_val[:, None], right, wrong)
    step2 = np.where(is_val[:, None], wrong, right)
    snapshots = np.stack([step1, step2], axis=1)  # (Q, S, D)
    targets = right + 0.05 * e[3]
    return targets, snapshots, qlabels, gallery, glabels, is_val


def _evaluate(targets, snapshots, qlabels, gallery, glabels, is_val):
    return evaluate_direction("image", "image_to_image", "oti_to_image", targets, snapshots, (1, 2), 2, qlabels,
                              gallery, glabels, np.array([5, 6, 7, 8]), is_val=is_val, chunk=3)


def test_step_is_selected_on_validation_and_headlines_are_test_only() -> None:
    targets, snapshots, qlabels, gallery, glabels, is_val = _fixture()
    m, table = _evaluate(targets, snapshots, qlabels, gallery, glabels, is_val)
    low = (1 / 3 + 2 / 4) / 2  # relevant items ranked 3rd and 4th
    assert m["by_step"] == {"val": pytest.approx({"1": 1.0, "2": low}), "test": pytest.approx({"1": low, "2": 1.0})}
    assert m["selected_step"] == 1 and m["final_step"] == 2  # validation's choice, not test's (2)
    assert m["n_queries"] == 4 and m["n_val"] == 2 and m["n_test"] == 2 and m["n_gallery"] == 4
    assert m["oti_to_image_selected"]["map"] == pytest.approx(low)  # the selected step, measured on test
    assert m["oti_to_image"]["map"] == pytest.approx(1.0)  # the final step, measured on test
    assert m["image_to_image"]["n_queries"] == m["oti_to_image"]["n_queries"] == 2
    assert m["map_gain"] == pytest.approx(m["oti_to_image"]["map"] - m["image_to_image"]["map"])
    assert m["map_gain_selected"] == pytest.approx(m["oti_to_image_selected"]["map"] - m["image_to_image"]["map"])

    # whatever happens to the validation queries, the test numbers stay (only the selection may move)
    gen = np.random.default_rng(1)
    noisy_snaps, noisy_targets = snapshots.copy(), targets.copy()
    noisy_snaps[is_val] = gen.normal(size=noisy_snaps[is_val].shape)
    noisy_targets[is_val] = gen.normal(size=noisy_targets[is_val].shape)
    m2, _ = _evaluate(noisy_targets, noisy_snaps, qlabels, gallery, glabels, is_val)
    for key in ("image_to_image", "oti_to_image"):
        assert m2[key] == m[key]
    assert m2["by_step"]["test"] == m["by_step"]["test"]
    assert m2["oti_to_image_selected"]["map"] == m2["by_step"]["test"][str(m2["selected_step"])]

    # the per-query table: every method and step, both splits; its test means are the headline numbers
    assert dict(table.schema) == PER_QUERY_SCHEMA and table.height == 4 * 3
    assert table["query"].to_list()[:4] == [5, 6, 7, 8]
    assert table["split"].to_list()[:4] == ["val", "val", "test", "test"]
    base = table.filter(table["method"] == "image_to_image")
    assert base["step"].unique().to_list() == [BASELINE_STEP]
    for step, key in ((2, "oti_to_image"), (1, "oti_to_image_selected")):
        rows = table.filter((table["method"] == "oti_to_image") & (table["step"] == step) & (table["split"] == "test"))
        assert rows["ap"].mean() == pytest.approx(m[key]["map"], rel=1e-12)
    assert base.filter(base["split"] == "test")["ap"].mean() == pytest.approx(m["image_to_image"]["map"], rel=1e-12)
