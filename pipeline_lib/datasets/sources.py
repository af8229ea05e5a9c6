"""Where a dataset lives on disk: the data stage's generated shapes world when its entry names no place, else the
entry's path (relative paths start at the project folder). Every stage and `bridgeflow plan` resolve it here, so an
extraction instance and the instances reading its store agree on the source."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline_lib.datasets.config import CzslDataset
    from pipeline_lib.engine.context import StageContext

#: Each dataset's place under the data stage's output when params name none.
FEWSHOT_DEFAULT = "fewshot/shapes"
CZSL_DEFAULT = "czsl/shapes"
TEXTS_DEFAULT = "retrieval/texts.parquet"


def resolve_source(root: Path, data_dir: Path, configured: str | None, default_rel: str) -> Path:
    """A dataset location: the data stage's default under `data_dir`, or the user's path (relative to `root`)."""
    if configured is None:
        return data_dir / default_rel
    p = Path(configured).expanduser()
    return p if p.is_absolute() else root / p


def czsl_entry(ctx: StageContext) -> CzslDataset:
    """The `datasets.czsl` entry of a `features_czsl` or `czsl` instance."""
    return ctx.cfg.datasets.czsl[ctx.item["czsl_dataset"]]


def czsl_source(ctx: StageContext) -> Path:
    """Where a `features_czsl` or `czsl` instance's CZSL dataset lives (the data stage's shapes benchmark when its
    entry's root is null): both instances of a dataset resolve it here, so the store rows match the loader's."""
    return resolve_source(Path(ctx.root), ctx.input("data"), czsl_entry(ctx).root, CZSL_DEFAULT)
