"""The feature stages: every CLIP feature later stages need, extracted once into zarr stores.

`features_fewshot@<dataset>` writes one classification dataset's store (`datasets.classification`): val, test and
(unless the entry says otherwise) train images once, and the class prompts; `support@<dataset>-<seed>` writes, per
shot count, every augmented view of the train images that seed's few-shot sample draws; `features_czsl@<dataset>`
writes one CZSL dataset's store (`datasets.czsl`); `features_text@<dataset>` writes one text-retrieval dataset's
store (`datasets.text_retrieval`).
The entry points only resolve inputs through the stage context (the data stage's datasets unless params point
elsewhere, the published backbone) and call the store writers of `features.stores`. Stores land in the stage's
output folder; block records (what encoding each block took, wherever it ran) stay in the scratch folder, so the
summaries count the work of every block, including blocks shard workers wrote (`features.shards`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from pipeline_lib.datasets.config import ClassificationDataset, TextRetrievalDataset
from pipeline_lib.datasets.sources import FEWSHOT_DEFAULT, TEXTS_DEFAULT, czsl_entry, czsl_source, resolve_source
from pipeline_lib.engine.context import StageContext
from pipeline_lib.engine.store import file_count
from pipeline_lib.features.groups import BlockHook, ExtractionRun, ImageGroup
from pipeline_lib.features.stores import (
    czsl_groups,
    fewshot_groups,
    load_czsl_source,
    load_fewshot_source,
    support_groups,
    write_czsl_store,
    write_fewshot_store,
    write_retrieval_text_store,
    write_support_stores,
)

log = logging.getLogger(__name__)

#: The few-shot store inside a `features_fewshot` instance's output folder.
FEWSHOT_STORE = "fewshot.zarr"
#: Folder of the block records inside the instance's scratch folder (never published: timings are not content).
BLOCK_RECORDS = "block_records"
#: The CZSL store inside a `features_czsl` instance's output folder.
CZSL_STORE = "czsl.zarr"
#: The text-retrieval store inside the `features_text` output folder.
TEXT_STORE = "retrieval_text.zarr"

# Called after every finished block with (store name, group, block); tests set it to simulate a kill. Looked up when
# a block finishes, so setting it on this module reaches the store writers.
after_block: BlockHook | None = None


def _after_block(store: str, group: str, block: int) -> None:
    if after_block is not None:
        after_block(store, group, block)


def classification_entry(ctx: StageContext) -> ClassificationDataset:
    """The `datasets.classification` entry of the instance's dataset."""
    return ctx.cfg.datasets.classification[ctx.item["dataset"]]


def fewshot_source(ctx: StageContext) -> Path:
    """Where the instance's classification dataset lives (the data stage's shapes world when its root is null)."""
    return resolve_source(Path(ctx.root), ctx.input("data"), classification_entry(ctx).root, FEWSHOT_DEFAULT)


def text_entry(ctx: StageContext) -> TextRetrievalDataset:
    """The `datasets.text_retrieval` entry of a `features_text` instance."""
    return ctx.cfg.datasets.text_retrieval[ctx.item["text_dataset"]]


def text_source(ctx: StageContext) -> Path:
    """Where the instance's text-retrieval file lives (the data stage's shapes paraphrases when its path is null)."""
    return resolve_source(Path(ctx.root), ctx.input("data"), text_entry(ctx).path, TEXTS_DEFAULT)


def cupl_source(ctx: StageContext) -> Path | None:
    """The dataset entry's optional CuPL sentences file (relative paths from the project folder)."""
    configured = classification_entry(ctx).cupl_file
    return resolve_source(Path(ctx.root), Path(ctx.root), configured, "") if configured else None


def extraction_run(ctx: StageContext, num_workers: int | None = None) -> ExtractionRun:
    """The published backbone (eval mode) on the context's device, with the instance's extraction params."""
    from pipeline_lib.backbone.load import load_published_backbone

    device = ctx.device
    backbone = load_published_backbone(ctx.input("backbone"), device)
    backbone.model.eval()
    workers = ctx.cfg.runtime.num_workers if num_workers is None else num_workers
    return ExtractionRun(backbone, ctx.cfg.features, device, workers, ctx.progress, Path(ctx.root),
                         records=ctx.work / BLOCK_RECORDS, on_block=_after_block)


def image_groups(run: ExtractionRun, ctx: StageContext) -> list[ImageGroup]:
    """Every image group the instance writes, in order: what shard planning and shard workers enumerate."""
    out_dir = ctx.output()
    if ctx.inst.stage.name == "features_fewshot":
        entry, source = classification_entry(ctx), fewshot_source(ctx)
        return fewshot_groups(run, out_dir / FEWSHOT_STORE, load_fewshot_source(entry, source), source, entry)
    if ctx.inst.stage.name == "support":
        entry, source = classification_entry(ctx), fewshot_source(ctx)
        ds = load_fewshot_source(entry, source)
        return support_groups(run, out_dir, ds, source, entry, ctx.cfg.fewshot.shots, int(ctx.item["seed"]))
    ds = load_czsl_source(run, czsl_source(ctx), czsl_entry(ctx).check_sizes)  # features_czsl
    return czsl_groups(run, out_dir / CZSL_STORE, ds)


def work_summary(run: ExtractionRun) -> dict[str, Any]:
    """Images encoded for the finished image groups (wherever their blocks ran) and the encoding rate.

    `images_per_s` is forwards per second of encoding time summed over the processes that encoded the blocks: the
    throughput of one encoder, not the wall-clock rate of a cluster.
    """
    seconds = sum(w.seconds for w in run.work)
    timed = sum(w.timed_forwards for w in run.work)
    return {
        "images_encoded": sum(w.forwards for w in run.work),
        "images_per_s": round(timed / seconds, 1) if seconds > 0 else 0.0,
        "blocks_skipped": sum(w.blocks_skipped for w in run.work),
    }


def _finish(ctx: StageContext, run: ExtractionRun, summary: dict[str, Any], t0: float) -> dict[str, Any]:
    out_dir = ctx.output()
    summary.update(work_summary(run))
    stores = sorted([*out_dir.glob("*.zarr"), *out_dir.glob("*/*.zarr")])  # support: one store per shot folder
    summary["files"] = {p.relative_to(out_dir).as_posix(): file_count(p) for p in stores}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    log.info("%s: %d images encoded at %.1f img/s in %.1f s",
             ctx.inst.id, summary["images_encoded"], summary["images_per_s"], summary["seconds"])
    return summary


def run_features_fewshot(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `features_fewshot@<dataset>`: the dataset's few-shot store; returns its summary (shapes,
    counts, throughput) for the manifest: features measure nothing a reader compares, so no metrics file."""
    t0 = time.perf_counter()
    run = extraction_run(ctx)
    summary: dict[str, Any] = {"device": run.device.type, "backbone": run.backbone.name, "dataset": ctx.item["dataset"]}
    summary["fewshot"] = write_fewshot_store(run, ctx.output() / FEWSHOT_STORE, fewshot_source(ctx),
                                             classification_entry(ctx), cupl_source(ctx))
    return _finish(ctx, run, summary, t0)


def run_support(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `support@<dataset>-<seed>`: for each shot count, every view of the train images that
    seed's few-shot sample draws, in its own folder (see `run_features_fewshot`)."""
    t0 = time.perf_counter()
    run = extraction_run(ctx)
    seed = int(ctx.item["seed"])
    summary: dict[str, Any] = {"device": run.device.type, "backbone": run.backbone.name, **ctx.item}
    summary["support"] = write_support_stores(run, ctx.output(), fewshot_source(ctx), classification_entry(ctx),
                                              ctx.cfg.fewshot.shots, seed)
    return _finish(ctx, run, summary, t0)


def run_features_czsl(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `features_czsl@<dataset>`: the CZSL dataset's image features and patch tokens (see
    `run_features_fewshot`)."""
    t0 = time.perf_counter()
    run = extraction_run(ctx)
    summary: dict[str, Any] = {"device": run.device.type, "backbone": run.backbone.name, **ctx.item}
    summary["czsl"] = write_czsl_store(run, ctx.output() / CZSL_STORE, czsl_source(ctx), czsl_entry(ctx).check_sizes)
    return _finish(ctx, run, summary, t0)


def run_features_text(ctx: StageContext) -> dict[str, Any]:
    """Stage entry point of `features_text@<dataset>`: one text-retrieval dataset's store (see
    `run_features_fewshot`)."""
    t0 = time.perf_counter()
    run = extraction_run(ctx)
    summary: dict[str, Any] = {"device": run.device.type, "backbone": run.backbone.name, **ctx.item}
    summary["retrieval_text"] = write_retrieval_text_store(run, ctx.output() / TEXT_STORE, text_source(ctx),
                                                           text_entry(ctx))
    return _finish(ctx, run, summary, t0)
