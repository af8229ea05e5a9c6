"""Explicit relevance: which gallery rows answer each query, when "same label" cannot say it (a qrels file, where one
document answers several queries; the revisited Oxford / Paris ground truth)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class RelevantSets:
    """Each query's relevant gallery rows, as compressed rows: query i's are `index[offsets[i]:offsets[i + 1]]`.

    For relevance that is not "same label": a qrels file, where one document may answer several queries."""

    offsets: np.ndarray  # (Q + 1,) int64, non-decreasing, offsets[0] = 0
    index: np.ndarray  # (offsets[-1],) int64 gallery rows

    def __post_init__(self) -> None:
        offsets, index = np.asarray(self.offsets, np.int64), np.asarray(self.index, np.int64)
        if (offsets.ndim != 1 or index.ndim != 1 or len(offsets) == 0 or offsets[0] != 0
                or bool((np.diff(offsets) < 0).any()) or offsets[-1] != len(index)):
            raise ValueError(f"not compressed rows: offsets {offsets.shape} ending {offsets[-1:]}, index {index.shape}")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "index", index)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int] | np.ndarray]) -> RelevantSets:
        """From one list of gallery rows per query."""
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(r) for r in rows])
        index = np.fromiter((int(i) for r in rows for i in r), dtype=np.int64, count=int(offsets[-1]))
        return cls(offsets, index)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def subset(self, rows: np.ndarray) -> RelevantSets:
        """The sets of the queries `rows` (an index array), in that order."""
        return RelevantSets.from_lists([self.row(int(r)).tolist() for r in rows])

    def union(self, other: RelevantSets) -> RelevantSets:
        """Per query, the rows in either (sorted): e.g. the revisited Medium positives, Easy + Hard."""
        if len(other) != len(self):
            raise ValueError(f"union of sets for {len(self)} and {len(other)} queries")
        return RelevantSets.from_lists([np.union1d(self.row(i), other.row(i)).tolist() for i in range(len(self))])

    def row(self, i: int) -> np.ndarray:
        """Query i's relevant gallery rows."""
        return self.index[self.offsets[i]:self.offsets[i + 1]]

    def mask(self, lo: int, hi: int, n_gallery: int) -> Tensor:
        """(hi - lo, n_gallery) boolean relevance of queries lo..hi-1."""
        out = torch.zeros(hi - lo, n_gallery, dtype=torch.bool)
        a, b = int(self.offsets[lo]), int(self.offsets[hi])
        rows = np.repeat(np.arange(hi - lo), np.diff(self.offsets[lo:hi + 1]))
        out[torch.from_numpy(rows), torch.from_numpy(self.index[a:b])] = True
        return out
