"""Revisited Oxford / Paris: the ground-truth pickle loads (and a malicious one is refused); the easy/medium/hard mAP
and mP@k agree with a per-query reference loop, with hand-computed values, and whatever the chunk size."""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from replicas import REVISITED_DATABASE as DATABASE
from replicas import REVISITED_GND as GND
from replicas import REVISITED_QUERIES as QUERIES
from replicas import write_revisited

from pipeline_lib.data.errors import DatasetError
from pipeline_lib.data.revisited import RevisitedGroundTruth, load_revisited_dataset, load_revisited_ground_truth
from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.diagnose.revisited import PROTOCOLS, revisited_metrics, revisited_per_query


def test_loads_splits_labels_and_ground_truth(tmp_path: Path) -> None:
    folder = write_revisited(tmp_path, "roxford5k")
    ds = load_revisited_dataset(folder)
    assert ds.classnames == ["all souls", "ashmolean", "bodleian", "christ church", "cornmarket", "hertford",
                             "magdalen", "oxford", "radcliffe camera"]
    assert ds.split_file == folder / "gnd_roxford5k.pkl" and ds.image_dir == (folder / "jpg").resolve()
    train, test = ds.split("train"), ds.split("test")
    assert train["path"].to_list() == [str((folder / "jpg" / f"{n}.jpg").resolve()) for n in DATABASE]
    assert test["path"].to_list() == [str((folder / "jpg" / f"{n}.jpg").resolve()) for n in QUERIES]
    assert test["classname"].to_list() == ["all souls", "radcliffe camera", "ashmolean"]
    assert test["label"].to_list() == [0, 8, 1]
    assert train["label"].to_list()[:3] == [0, 0, 8]
    assert set(ds.splits) == {"train", "test"}

    gt = load_revisited_ground_truth(folder)
    assert (gt.n_queries, gt.n_database) == (3, 12)
    assert [gt.easy.row(i).tolist() for i in range(3)] == [[0, 1], [2], [4, 5]]
    assert [gt.hard.row(i).tolist() for i in range(3)] == [[11], [3], []]
    assert [gt.junk.row(i).tolist() for i in range(3)] == [[6], [], [7]]
    assert gt.easy.offsets.dtype == np.int64 and gt.junk.index.dtype == np.int64
    medium = gt.medium()
    assert [medium.row(i).tolist() for i in range(3)] == [[0, 1, 11], [2, 3], [4, 5]]


def test_bad_folders_and_ground_truth_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=f"exactly one gnd_\\*.pkl in {tmp_path}"):
        load_revisited_dataset(tmp_path)
    folder = write_revisited(tmp_path, "rparis6k")
    (folder / "gnd_other.pkl").write_bytes((folder / "gnd_rparis6k.pkl").read_bytes())
    with pytest.raises(DatasetError, match="found \\['gnd_other.pkl', 'gnd_rparis6k.pkl'\\]"):
        load_revisited_ground_truth(folder)
    (folder / "gnd_other.pkl").unlink()

    (folder / "jpg" / "hertford_000015.jpg").unlink()
    with pytest.raises(DatasetError, match="1 of 12 train images are missing .*hertford_000015.jpg"):
        load_revisited_dataset(folder)
    assert len(load_revisited_dataset(folder, check_files=False).split("train")) == 12

    bad = [dict(g) for g in GND]
    bad[1]["junk"] = [12]
    with pytest.raises(DatasetError, match=r"query 1 \(radcliffe_camera_000095\): junk index 12 is outside"):
        load_revisited_ground_truth(write_revisited(tmp_path / "a", "roxford5k", bad))
    bad[1] = {"easy": [], "hard": [], "junk": [3]}
    with pytest.raises(DatasetError, match=r"query 1 \(radcliffe_camera_000095\) has no easy or hard"):
        load_revisited_ground_truth(write_revisited(tmp_path / "b", "roxford5k", bad))
    bad[1] = {"easy": [1.5], "hard": [], "junk": []}
    with pytest.raises(DatasetError, match=r"gnd\[1\]\['easy'\] .*integer database indices"):
        load_revisited_ground_truth(write_revisited(tmp_path / "c", "roxford5k", bad))


def test_numpy_1_and_protocol_2_pickles_load(tmp_path: Path) -> None:
    """Older ground-truth files name numpy.core (numpy 1) and rebuild array bytes through _codecs.encode."""
    folder = write_revisited(tmp_path, "rparis6k")
    data = pickle.dumps({"imlist": DATABASE, "qimlist": QUERIES, "gnd": GND}, protocol=2)
    assert b"\n_reconstruct\n" in data and b"_codecs\nencode\n" in data
    (folder / "gnd_rparis6k.pkl").write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    gt = load_revisited_ground_truth(folder)
    assert gt.hard.row(1).tolist() == [3] and gt.easy.row(2).tolist() == [4, 5] and gt.junk.row(2).tolist() == [7]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_naming_other_globals_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = tmp_path / "roxford5k"
    folder.mkdir()
    payload = {"imlist": DATABASE, "qimlist": QUERIES, "gnd": GND, "x": _RunsCode(marker)}
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(payload))
    with pytest.raises(DatasetError, match=r"disallowed global (posix|nt|os)\.system"):
        load_revisited_ground_truth(folder)
    assert not marker.exists()


# ---- metrics ----------------------------------------------------------------------------------------------------


def _reference(query: np.ndarray, gallery: np.ndarray, easy: list[list[int]], hard: list[list[int]],
               junk: list[list[int]], kappas: tuple[int, ...]) -> dict[str, list[float]]:
    """The definitions, one query and one protocol at a time, ranking in float64 with a stable sort."""
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = qn.astype(np.float64) @ gn.astype(np.float64).T
    out: dict[str, list[float]] = {}
    for i in range(len(query)):
        order = np.argsort(-sims[i], kind="stable").tolist()
        e, h, j = set(easy[i]), set(hard[i]), set(junk[i])
        for proto, (pos, ign) in {"easy": (e, j | h), "medium": (e | h, j), "hard": (h, j | e)}.items():
            kept = [x for x in order if x not in ign - pos]
            ranks = [r for r, x in enumerate(kept) if x in pos]
            if not pos:
                values = [math.nan] * (1 + len(kappas))
            else:
                ap = sum(((k / r if r else 1.0) + (k + 1) / (r + 1)) / 2 for k, r in enumerate(ranks)) / len(pos)
                mps = []
                for kappa in kappas:
                    kq = min(max(ranks) + 1, kappa)
                    mps.append(sum(r + 1 <= kq for r in ranks) / kq)
                values = [ap, *mps]
            for name, v in zip(["ap", *(f"mp@{k}" for k in kappas)], values, strict=True):
                out.setdefault(f"{name}_{proto}", []).append(v)
    return out


def _gt(easy: list[list[int]], hard: list[list[int]], junk: list[list[int]], n_database: int) -> RevisitedGroundTruth:
    sets = RelevantSets.from_lists
    return RevisitedGroundTruth(sets(easy), sets(hard), sets(junk), n_database=n_database)


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, list[list[int]], list[list[int]], list[list[int]]]:
    rng = np.random.default_rng(seed)
    n_q, n_g, d = 23, 40, 6
    gallery = rng.standard_normal((n_g, d)).astype(np.float32)
    gallery[[7, 19, 31]] = gallery[3]  # exact ties: they rank in gallery order
    query = rng.standard_normal((n_q, d)).astype(np.float32)
    lists: list[list[list[int]]] = [[], [], []]
    for i in range(n_q):
        sizes = [int(rng.integers(0, 6)), int(rng.integers(0, 4)) if i % 3 else 0, int(rng.integers(0, 5))]
        if sizes[0] + sizes[1] == 0:
            sizes[0] = 1
        pool = [3, 7, 19, 31] if i % 5 == 0 else list(range(n_g))  # some queries' items are all among the ties
        for kind, size in enumerate(sizes):
            lists[kind].append(sorted(rng.choice(pool, size=min(size, len(pool)), replace=False).tolist()))
    lists[2][1] = sorted(set(lists[2][1]) | set(lists[0][1]))  # an item both easy and junk counts as easy
    return query, gallery, lists[0], lists[1], lists[2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_per_query_reference(seed: int) -> None:
    query, gallery, easy, hard, junk = _random_case(seed)
    gt = _gt(easy, hard, junk, 40)
    kappas = (1, 3, 5, 10)
    got = revisited_per_query(query, gallery, gt, kappas=kappas, chunk=7)
    want = _reference(query, gallery, easy, hard, junk, kappas)
    assert sorted(got) == sorted(want)
    for key, values in want.items():
        assert got[key].dtype == np.float64 and got[key].shape == (23,)
        np.testing.assert_allclose(got[key], values, rtol=0, atol=1e-9, err_msg=key)
    assert np.isnan(got["ap_hard"]).any() and not np.isnan(got["ap_medium"]).any()

    means = revisited_metrics(torch.from_numpy(query), torch.from_numpy(gallery), gt, kappas=kappas)
    assert means["n_queries"] == 23
    for key, values in want.items():
        name = "map" + key[2:] if key.startswith("ap_") else key
        assert means[name] == pytest.approx(100 * np.nanmean(values), abs=1e-9)


def _unit(*degrees: float) -> np.ndarray:
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def test_hand_computed_example() -> None:
    gallery = _unit(0, 10, 20, 30, 40, 50)  # query 0 (at 0 deg) ranks g0..g5, query 1 (at 50 deg) g5..g0
    gt = _gt([[1, 4], [5]], [[2, 5], []], [[0], []], 6)
    got = revisited_per_query(_unit(0, 50), gallery, gt, kappas=(1, 3, 5))
    # query 0, easy: g0, g2, g5 ignored -> kept g1 g3 g4, positives at 0-based ranks 0, 2
    assert got["ap_easy"][0] == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)  # 19/24, not (1 + 2/3) / 2
    assert [got[f"mp@{k}_easy"][0] for k in (1, 3, 5)] == pytest.approx([1, 2 / 3, 2 / 3])  # kq = min(k, 3)
    # medium: g0 ignored -> kept g1..g5, positives g1 g2 g4 g5 at ranks 0, 1, 3, 4
    assert got["ap_medium"][0] == pytest.approx((1 + 1 + (2 / 3 + 3 / 4) / 2 + (3 / 4 + 4 / 5) / 2) / 4)  # 209/240
    assert [got[f"mp@{k}_medium"][0] for k in (1, 3, 5)] == pytest.approx([1, 2 / 3, 4 / 5])
    # hard: g0, g1, g4 ignored -> kept g2 g3 g5, positives at ranks 0, 2
    assert got["ap_hard"][0] == pytest.approx(19 / 24)
    assert [got[f"mp@{k}_hard"][0] for k in (1, 3, 5)] == pytest.approx([1, 2 / 3, 2 / 3])
    # query 1: its one easy image ranks first; no hard image -> NaN, left out of the hard means
    assert got["ap_easy"][1] == got["ap_medium"][1] == got["mp@5_medium"][1] == 1.0
    assert np.isnan(got["ap_hard"][1]) and np.isnan(got["mp@1_hard"][1])

    means = revisited_metrics(_unit(0, 50), gallery, gt, kappas=(1, 3, 5))
    assert means["map_hard"] == pytest.approx(100 * 19 / 24)
    assert means["map_easy"] == pytest.approx(100 * (19 / 24 + 1) / 2)
    assert means["map_medium"] == pytest.approx(100 * (209 / 240 + 1) / 2)
    assert means["mp@3_hard"] == pytest.approx(100 * 2 / 3) and means["n_queries"] == 2
    assert set(means) == {f"{m}_{p}" for p in PROTOCOLS for m in ("map", "mp@1", "mp@3", "mp@5")} | {"n_queries"}


def test_ties_keep_gallery_order() -> None:
    gallery = _unit(0, 0, 30)  # g0 and g1 tie; g0 comes first
    gt = _gt([[1]], [[0]], [[]], 3)
    got = revisited_per_query(_unit(0), gallery, gt)
    assert got["ap_medium"][0] == 1.0
    assert got["ap_easy"][0] == 1.0  # the hard g0 ahead of it is ignored
    assert got["ap_hard"][0] == 1.0
    gt = _gt([[1]], [[]], [[]], 3)
    assert revisited_per_query(_unit(0), gallery, gt)["ap_easy"][0] == 1 / 4  # (0 / 1 + 1 / 2) / 2


def test_chunking_does_not_change_results() -> None:
    query, gallery, easy, hard, junk = _random_case(5)
    gt = _gt(easy, hard, junk, 40)
    full = revisited_per_query(query, gallery, gt, chunk=1000)
    for chunk in (1, 4, 23):
        part = revisited_per_query(query, gallery, gt, chunk=chunk)
        for key, values in full.items():
            np.testing.assert_array_equal(part[key], values, err_msg=f"{key}, chunk {chunk}")


def test_shape_mismatches_are_refused() -> None:
    gt = _gt([[1]], [[]], [[]], 3)
    with pytest.raises(ValueError, match="ground truth has 1 x 3"):
        revisited_per_query(_unit(0, 1), _unit(0, 1, 2), gt)
    with pytest.raises(ValueError, match="kappas"):
        revisited_per_query(_unit(0), _unit(0, 1, 2), gt, kappas=(0,))
