"""What a stage function receives: the validated config, its own matrix item, and its paths, resolved from the registry.

Stage functions never spell a repo-relative path: they ask for an upstream stage's published output
(`ctx.input("features_fewshot")`), for their own output folder (`ctx.output()`), metrics file (`ctx.metrics()`) or a
declared plot (`ctx.plot("fewshot_accuracy")`). Outputs land in the fingerprint-keyed scratch folder; the runner
publishes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline_lib.engine.stages import StageInstance, get_stage

if TYPE_CHECKING:
    import torch

    from pipeline_lib.engine.config import Config

T = TypeVar("T")


def progress_enabled(cfg: Config) -> bool:
    """Progress bars unless disabled in params or running under CI."""
    return cfg.runtime.progress and os.environ.get("CI", "").lower() not in ("1", "true", "yes")


def resolve_device(cfg: Config) -> torch.device:
    """CUDA when present and allowed by `runtime.device`, else CPU; asking for CUDA without one is an error."""
    import torch

    if cfg.runtime.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device = 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
    if cfg.runtime.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class StageContext:
    """One stage instance's view of the project: config, item, where its inputs are and where its outputs go."""

    cfg: Config
    root: Path  # the project folder (published outputs live here)
    work: Path  # the instance's fingerprint-keyed scratch folder (outputs are written here, then published)
    inst: StageInstance

    @property
    def item(self) -> dict[str, Any]:
        """The matrix item (e.g. `{"shots": 4, "seed": 1}`); empty for a plain stage."""
        return dict(self.inst.item)

    def input(self, stage: str) -> Path:
        """The published output folder of the one instance of an upstream stage this instance reads.

        For a matrix upstream that is the instance agreeing with this one's item and pins (`features_fewshot@pets`
        for `fewshot_run@pets-4-1`); an upstream with several such instances needs `input_instance`.
        """
        from pipeline_lib.engine.config import effective_params
        from pipeline_lib.engine.stages import upstream_instances

        self._check_declared(stage)
        found = [up for up in upstream_instances(self.inst, effective_params(self.cfg)) if up.stage.name == stage]
        if len(found) != 1:
            ids = ", ".join(up.id for up in found) or "none"
            raise KeyError(f"{self.inst.id} reads {len(found)} instances of {stage!r} ({ids}): use ctx.input_instance")
        return self.root / found[0].manifest_dir

    def _check_declared(self, stage: str) -> None:
        if stage not in self.inst.stage.deps:
            raise KeyError(f"stage {self.inst.stage.name!r} reads {stage!r} but does not declare it in the registry")

    def input_instance(self, stage: str, **item: Any) -> Path:
        """The published output folder of one matrix item of an upstream matrix stage."""
        self._check_declared(stage)
        return self.root / StageInstance(get_stage(stage), item).manifest_dir

    def output(self) -> Path:
        """This instance's output folder (the registry's first `outs` entry), created."""
        path = self.work / self.inst.manifest_dir
        path.mkdir(parents=True, exist_ok=True)
        return path

    def metrics(self) -> Path:
        """This stage's metrics JSON file (the registry declares at most one)."""
        if not self.inst.stage.metrics:
            raise KeyError(f"stage {self.inst.stage.name!r} declares no metrics file")
        return _mkparent(self.work / self.inst.path(self.inst.stage.metrics[0]))

    def plot(self, name: str) -> Path:
        """This instance's file of the declared plot called `name` (`Plot.name`: e.g. `fewshot_accuracy` for
        plots/fewshot_accuracy.csv, `czsl_curve` for plots/czsl_curve/{czsl_dataset}.csv)."""
        for plot in self.inst.stage.plots:
            if plot.name == name:
                return _mkparent(self.work / self.inst.path(plot.path))
        declared = ", ".join(p.name for p in self.inst.stage.plots) or "none"
        raise KeyError(f"stage {self.inst.stage.name!r} declares no plot {name!r} (declared: {declared})")

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg)

    def progress(self, iterable: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
        """tqdm over `iterable`, silent under CI=true or runtime.progress = false."""
        from tqdm.auto import tqdm

        return iter(tqdm(iterable, total=total, desc=desc, disable=not progress_enabled(self.cfg), leave=False))
