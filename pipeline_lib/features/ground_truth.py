"""A revisited Oxford / Paris dataset's ground truth, kept in its few-shot feature store next to the features it
describes (group `ground_truth`: easy, hard and junk database rows per query as compressed rows), so an `oti`
instance reads relevance from the store it ranks and DVC tracks both as one output."""

from __future__ import annotations

from pathlib import Path

import zarr

from pipeline_lib.data.revisited import RevisitedGroundTruth
from pipeline_lib.datasets.relevance import RelevantSets
from pipeline_lib.engine.store import read_array, write_whole

GROUND_TRUTH = "ground_truth"  # the store group
KINDS = ("easy", "hard", "junk")


def write_ground_truth(top: zarr.Group, gt: RevisitedGroundTruth) -> None:
    """Write `gt` under the store's `ground_truth` group (idempotent)."""
    group = top.require_group(GROUND_TRUTH)
    for kind in KINDS:
        sets: RelevantSets = getattr(gt, kind)
        write_whole(group, f"{kind}_offsets", sets.offsets)
        write_whole(group, f"{kind}_index", sets.index)
    group.attrs.update({"n_database": gt.n_database, "query_names": list(gt.query_names)})


def read_ground_truth(store: Path) -> RevisitedGroundTruth:
    """The ground truth `write_ground_truth` wrote into `store`."""
    attrs = zarr.open_group(str(store), mode="r")[GROUND_TRUTH].attrs
    sets = {kind: RelevantSets(read_array(store, f"{GROUND_TRUTH}/{kind}_offsets"),
                               read_array(store, f"{GROUND_TRUTH}/{kind}_index")) for kind in KINDS}
    return RevisitedGroundTruth(**sets, n_database=int(attrs["n_database"]),
                                query_names=tuple(attrs["query_names"]))
