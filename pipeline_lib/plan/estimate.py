"""What each stage instance computes, counted from params and dataset sizes before anything runs.

One estimator per stage: it returns the instance's work as (kind, amount) parts and the disk its outputs take.
Dataset sizes come from the datasets themselves (split files and metadata are read, images are not opened); the
shapes world, before the data stage has generated it, from the data params. Kinds with a probe rate
(`plan.probe`) get a time estimate; optimisation steps on cached features do not (they are not the cost at scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_lib.czsl.config import dataset_config
from pipeline_lib.datasets.sources import CZSL_DEFAULT, FEWSHOT_DEFAULT, TEXTS_DEFAULT, resolve_source
from pipeline_lib.engine.config import Config
from pipeline_lib.engine.stages import StageInstance, get_stage
from pipeline_lib.plan.probe import IMAGE_FORWARD, IMAGE_TRAIN, OTI_STEPS, OVI_STEPS


@dataclass(frozen=True)
class Work:
    """One instance's work: (kind, amount) parts, the bytes its outputs take, and what the counts leave out."""

    parts: tuple[tuple[str, int], ...] = ()
    disk_bytes: int = 0
    note: str = ""


@dataclass(frozen=True)
class ClassificationSizes:
    train_labels: list[int]
    val: int
    test: int


@dataclass
class PlanInputs:
    """What the estimators read: the project, the config, the model's widths; dataset sizes are read once each."""

    root: Path
    cfg: Config
    arch: dict[str, int]  # embed_dim, tokens (plan.probe.architecture)
    _sizes: dict[str, ClassificationSizes] = field(default_factory=dict)
    _czsl: dict[str, dict[str, int] | None] = field(default_factory=dict)
    _texts: dict[str, dict[str, int] | None] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / get_stage("data").manifest_dir

    @property
    def bytes_per_value(self) -> int:
        return 2 if self.cfg.features.dtype == "float16" else 4

    def source(self, configured: str | None, default: str) -> Path:
        """Where a dataset lives: as the feature stages resolve it (the data stage's default when unset)."""
        return resolve_source(self.root, self.data_dir, configured, default)

    def classification(self, name: str) -> ClassificationSizes:
        if name not in self._sizes:
            self._sizes[name] = self._read_classification(name)
        return self._sizes[name]

    def _read_classification(self, name: str) -> ClassificationSizes:
        from pipeline_lib.datasets.load import load_classification

        entry = self.cfg.datasets.classification[name]
        folder = self.source(entry.root, FEWSHOT_DEFAULT)
        if entry.root is None and not folder.is_dir():  # not generated yet: its params say
            d = self.cfg.data
            labels = [c for c in range(len(d.shapes)) for _ in range(d.fewshot_train_per_class)]
            return ClassificationSizes(labels, len(d.shapes) * d.fewshot_val_per_class,
                                       len(d.shapes) * d.fewshot_test_per_class)
        ds = load_classification(entry, folder, check_files=False)
        val = len(ds.split("val")) if "val" in ds.splits and ds.splits["val"] is not ds.splits["test"] else 0
        return ClassificationSizes(ds.split("train")["label"].to_list(), val, len(ds.split("test")))

    def czsl_images(self, name: str) -> dict[str, int] | None:
        """Images per split of a CZSL dataset, None when it is not there yet (the shapes world before the data
        stage); read once (the metadata of a real benchmark takes a few seconds)."""
        if name not in self._czsl:
            self._czsl[name] = self._read_czsl(name)
        return self._czsl[name]

    def _read_czsl(self, name: str) -> dict[str, int] | None:
        from pipeline_lib.czsl.data import load_czsl_dataset

        folder = self.source(self.cfg.datasets.czsl[name].root, CZSL_DEFAULT)
        if not folder.is_dir():
            return None
        ds = load_czsl_dataset(folder, "closed", check_sizes=False, check_images=False)
        return {split: len(ds.split(split)) for split in ("train", "val", "test")}

    def texts(self, name: str) -> dict[str, int] | None:
        """Query and gallery texts of a text-retrieval dataset, None when it is not there yet (the data stage's
        paraphrases before it ran)."""
        from pipeline_lib.datasets.texts import load_retrieval_texts

        if name not in self._texts:
            entry = self.cfg.datasets.text_retrieval[name]
            path = self.source(entry.path, TEXTS_DEFAULT)
            texts = load_retrieval_texts(entry, path) if path.exists() else None
            self._texts[name] = None if texts is None else {"query": len(texts.query), "gallery": len(texts.gallery)}
        return self._texts[name]


def _features(p: PlanInputs, rows: int, per_row: int = 1) -> int:
    """Bytes of `rows` stored features of `per_row` vectors each."""
    return rows * per_row * p.arch["embed_dim"] * p.bytes_per_value


def data(p: PlanInputs, inst: StageInstance) -> Work:
    d = p.cfg.data
    if not d.generate:
        return Work(note="data.generate is off: nothing generated")
    fewshot = len(d.shapes) * (d.fewshot_train_per_class + d.fewshot_val_per_class + d.fewshot_test_per_class)
    return Work((("images drawn", d.pretrain_images + fewshot),), note="pretraining corpus and few-shot world")


def backbone(p: PlanInputs, inst: StageInstance) -> Work:
    if not p.cfg.backbone.trains_here:
        return Work(note="records the weights' spec")
    train = p.cfg.backbone.train
    return Work(((IMAGE_TRAIN, train.steps * train.batch_size),), note="contrastive pretraining")


def features_fewshot(p: PlanInputs, inst: StageInstance) -> Work:
    name = inst.item["dataset"]
    sizes, entry = p.classification(name), p.cfg.datasets.classification[name]
    images = sizes.val + sizes.test + (len(sizes.train_labels) if entry.train_features else 0)
    return Work(((IMAGE_FORWARD, images),), _features(p, images),
                "val + test" + (" + train" if entry.train_features else "") + " images, one view each")


def support(p: PlanInputs, inst: StageInstance) -> Work:
    from pipeline_lib.features.stores import support_indices

    name, seed = inst.item["dataset"], int(inst.item["seed"])
    labels, entry = p.classification(name).train_labels, p.cfg.datasets.classification[name]
    forwards = stored = 0
    for shots in p.cfg.fewshot.shots:
        drawn = len(support_indices(labels, shots, seed))
        recipe = entry.augment.get(shots)
        views = recipe.epochs + 1 if recipe is not None else p.cfg.features.views
        forwards, stored = forwards + drawn * views, stored + drawn * (views + 1)
    return Work(((IMAGE_FORWARD, forwards),), _features(p, stored),
                f"{len(p.cfg.fewshot.shots)} shot counts' samples of {len(labels)} train images, all views")


def features_czsl(p: PlanInputs, inst: StageInstance) -> Work:
    czsl = p.czsl_images(inst.item["czsl_dataset"])
    if czsl is None:
        return Work(note="images counted once the data stage has run")
    images = sum(czsl.values())
    tokens = p.arch["tokens"] if p.cfg.features.patch_tokens else 0
    return Work(((IMAGE_FORWARD, images),), _features(p, images, 1 + tokens),
                "train + val + test images" + (f", {tokens} patch tokens each" if tokens else ""))


def features_text(p: PlanInputs, inst: StageInstance) -> Work:
    texts = p.texts(inst.item["text_dataset"])
    if texts is None:
        return Work(note="texts counted once the data stage has run")
    return Work((("text forwards", sum(texts.values())),), _features(p, sum(texts.values())))


def no_model_work(p: PlanInputs, inst: StageInstance) -> Work:
    return Work(note="reads published outputs")


def fewshot_run(p: PlanInputs, inst: StageInstance) -> Work:
    fs = p.cfg.fewshot
    parts = [("search trials", fs.search.n_trials * len(fs.subsets))]
    if fs.run_training:
        parts.append(("training steps", fs.training.steps))
    return Work(tuple(parts), note="on cached features")


def oti(p: PlanInputs, inst: StageInstance) -> Work:
    inv, name = p.cfg.inversion, inst.item["image_dataset"]
    sizes, entry = p.classification(name), p.cfg.datasets.image_retrieval[name]
    per_split = {"train": len(sizes.train_labels), "val": sizes.val, "test": sizes.test}
    queries = sum(per_split.values()) if entry.query_split == "all" else per_split[entry.query_split]
    return Work(((OTI_STEPS, int(min(queries, inv.max_queries or math.inf)) * inv.oti.steps),), note="OTI")


def ovi(p: PlanInputs, inst: StageInstance) -> Work:
    inv, texts = p.cfg.inversion, p.texts(inst.item["text_dataset"])
    if texts is None:
        return Work(note="counted once the texts exist")
    return Work(((OVI_STEPS, int(min(texts["query"], inv.max_queries or math.inf)) * inv.ovi.steps),), note="OVI")


def czsl(p: PlanInputs, inst: StageInstance) -> Work:
    from pipeline_lib.czsl.experiment import BANK_ROWS  # rows that reuse the +kl model instead of training one

    name = inst.item["czsl_dataset"]
    c = dataset_config(p.cfg.czsl, p.cfg.datasets.czsl[name].overrides, name)
    images = p.czsl_images(name)
    if images is None:
        return Work(note="counted once the data stage has run")
    trained = len([r for r in c.rows if r not in BANK_ROWS]) * len(c.seeds)
    if c.mode == "lora":
        return Work(((IMAGE_TRAIN, c.epochs * images["train"] * trained),), note=f"{trained} trainings")
    steps = c.epochs * math.ceil(images["train"] / c.batch_size) * trained
    return Work((("training steps", steps),), note=f"{trained} trainings on cached tokens")


ESTIMATORS: dict[str, Callable[[PlanInputs, StageInstance], Work]] = {
    "data": data,
    "backbone": backbone,
    "features_fewshot": features_fewshot,
    "support": support,
    "features_czsl": features_czsl,
    "features_text": features_text,
    "diagnose": no_model_work,
    "fewshot_bridge": no_model_work,
    "fewshot_run": fewshot_run,
    "fewshot_report": no_model_work,
    "oti": oti,
    "ovi": ovi,
    "czsl": czsl,
    "claims": no_model_work,
    "report": no_model_work,
}


def estimate(p: PlanInputs, inst: StageInstance) -> Work:
    return ESTIMATORS[inst.stage.name](p, inst)


def seconds(work: Work, rates: dict[str, float] | None) -> float | None:
    """Estimated seconds of the parts that have a rate (None when none has)."""
    timed = [amount / rates[kind] for kind, amount in work.parts if rates and kind in rates and rates[kind] > 0]
    return sum(timed) if timed else None


def as_row(inst: StageInstance, work: Work, rates: dict[str, float] | None) -> dict[str, Any]:
    return {"instance": inst.id, "work": {kind: amount for kind, amount in work.parts},
            "seconds": seconds(work, rates), "disk_bytes": work.disk_bytes, "note": work.note}
