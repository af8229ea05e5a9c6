"""Render many specs, in worker processes or in this one, with the same bytes either way.

Workers are started with the "spawn" method: a forked copy of a process that already runs threads (Prefect, torch,
zarr) can deadlock, and spawned workers import only numpy, PIL and the renderer, which takes well under a second.
Chunks come back in submission order, so results never depend on scheduling.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any, Self

import numpy as np
from PIL import Image

from pipeline_lib.data.shapes import ImageSpec, RenderSettings, render, render_batch

logger = logging.getLogger(__name__)

Progress = Callable[..., Iterable[Any]]  # ctx.progress-style wrapper: progress(iterable, total=..., desc=...)


def _write_pngs(specs: Sequence[ImageSpec], paths: Sequence[str], settings: RenderSettings) -> int:
    """Render specs and save each as a PNG (PIL's PNG writer is deterministic: no timestamps)."""
    for spec, path in zip(specs, paths, strict=True):
        Image.fromarray(render(spec, settings), "RGB").save(path, format="PNG")
    return len(specs)


def _chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


class Renderer:
    """Renders specs to arrays or PNG files, with `workers` processes (1 = in this process).

    Use as a context manager so the pool is started once for all datasets and always shut down.
    """

    def __init__(self, settings: RenderSettings, workers: int = 1, chunk: int = 250, progress: Progress | None = None):
        if workers < 1:
            raise ValueError(f"workers={workers}: expected >= 1")
        self.settings = settings
        self.workers = workers
        self.chunk = chunk
        self.progress = progress
        self._pool: Executor | None = None

    def __enter__(self) -> Self:
        if self.workers > 1 and multiprocessing.current_process().daemon:
            # Daemonic processes (e.g. some task-runner workers) may not start children: render here instead.
            logger.warning("rendering in this process: it is daemonic and cannot start %d workers", self.workers)
        elif self.workers > 1:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _map(self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]], total: int, desc: str) -> Iterator[Any]:
        """Apply fn to each job, results in job order."""
        if self._pool is None:
            results: Iterator[Any] = (fn(*job) for job in jobs)
        else:
            futures = [self._pool.submit(fn, *job) for job in jobs]
            results = (future.result() for future in futures)
        if self.progress is not None:  # counts chunks: only the plain iterable protocol of the wrapper is used
            results = iter(self.progress(results, total=len(jobs), desc=f"{desc} ({total} images)"))
        yield from results

    def to_array(self, specs: Sequence[ImageSpec], out: np.ndarray, desc: str = "render") -> None:
        """Render specs into `out` (N, S, S, 3) uint8 (e.g. an np.memmap), chunk by chunk."""
        size = self.settings.image_size
        if out.shape != (len(specs), size, size, 3) or out.dtype != np.uint8:
            raise ValueError(f"out has shape {out.shape} {out.dtype}; expected ({len(specs)}, {size}, {size}, 3) uint8")
        bounds = _chunks(len(specs), self.chunk)
        jobs = [(list(specs[a:b]), self.settings) for a, b in bounds]
        for (start, stop), images in zip(bounds, self._map(render_batch, jobs, len(specs), desc), strict=True):
            out[start:stop] = images  # (chunk, S, S, 3)

    def to_pngs(self, specs: Sequence[ImageSpec], paths: Sequence[Path], desc: str = "render") -> int:
        """Render specs to PNG files (parent folders must exist); returns the number written."""
        if len(specs) != len(paths):
            raise ValueError(f"{len(specs)} specs but {len(paths)} paths")
        bounds = _chunks(len(specs), self.chunk)
        jobs = [(list(specs[a:b]), [str(p) for p in paths[a:b]], self.settings) for a, b in bounds]
        return sum(self._map(_write_pngs, jobs, len(specs), desc))
