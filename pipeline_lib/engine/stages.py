"""THE stage registry: the single source of truth for the stage graph.

`dvc.yaml` is generated from it (`bridgeflow dvc-yaml`, and a test fails when the committed file differs), the
Prefect flow walks it, and `bridgeflow stage NAME` looks stages up here. A stage is data: its name, the dotted params
keys it reads, the stages it consumes, the outputs it writes, and the plain function that computes it
(`module:function`, imported only when the stage runs, so reading the registry stays cheap). The code that versions a
stage is derived from that function's import closure (`engine.closure`), never listed by hand.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_lib.engine.params import get_dotted
from pipeline_lib.engine.stage_keys import CZSL_TRAINING, EXTRACTION, OTI_KEYS, OVI_KEYS


@dataclass(frozen=True)
class Plot:
    """A CSV plot a stage writes, with the axes `dvc plots show` draws."""

    path: str
    x: str
    y: tuple[str, ...]
    title: str
    template: str = "linear"

    @property
    def name(self) -> str:
        """What `ctx.plot` calls it: the file's stem, or for a matrix stage's plot
        (`plots/czsl_curve/{czsl_dataset}.csv`: a file per instance in one folder, which `dvc plots` draws together)
        the folder's name."""
        path = Path(self.path)
        return path.parent.name if "{" in path.stem else path.stem


@dataclass(frozen=True)
class Shards:
    """How a stage splits into shard tasks (see pipeline_lib.engine.shards): Dask scale-out (`flows/scaleout.py`).

    Both are "package.module:function" names taking the stage's StageContext, imported only when shards run.
    """

    planner: str  # (ctx, files_per_shard) -> list[Shard]: the coordinator creates the store, lists pending work
    worker: str  # (ctx, shard) -> small JSON summary: computes one shard's blocks into that store, on any worker


@dataclass(frozen=True)
class Stage:
    """One node of the pipeline graph. Paths are repo-relative; `{var}` in a path is filled per matrix item."""

    name: str
    func: str  # "package.module:function" taking a StageContext and returning a small JSON summary
    description: str
    params: tuple[str, ...]  # dotted params keys versioning the stage (DVC's `params:`); `{var}` = its matrix item
    deps: tuple[str, ...] = ()  # upstream stage names; their outputs become this stage's DVC deps
    outs: tuple[str, ...] = ()  # outputs cached by DVC; the first one is a directory holding manifest.json
    metrics: tuple[str, ...] = ()  # small JSON metrics (git-tracked, `dvc metrics show`)
    plots: tuple[Plot, ...] = ()  # CSV plot data (git-tracked, `dvc plots show`)
    matrix: tuple[tuple[str, str], ...] = ()  # (item variable, params key holding its values: a list, or a dict's keys)
    # (variable, params key): upstream matrix instances this stage reads have that variable at that key's value
    # (e.g. diagnose reads the few-shot features of `backbone.diagnose.dataset` only, not every dataset's)
    pins: tuple[tuple[str, str], ...] = ()
    # deps read only when listed (the claims without any CZSL dataset): `flows.graph.unlisted_inputs` skips them
    optional: tuple[str, ...] = ()
    # (upstream variable, own variable): upstream instances read have that variable at this instance's value of its
    # own (`oti@pets` reads `features_fewshot@pets`)
    binds: tuple[tuple[str, str], ...] = ()
    # (upstream stage, folder inside its manifest folder): the one part of that upstream's output this stage reads
    # (`k{shots}` of a seed's support features); DVC and the engine track only that part, so the upstream adding a
    # part for another instance (a new shot count) leaves this one reusable
    reads: tuple[tuple[str, str], ...] = ()
    shards: Shards | None = None  # set for a stage whose blocks can be computed as shard tasks on a cluster

    @property
    def manifest_dir(self) -> str:
        """The directory output that carries the stage's manifest.json."""
        return self.outs[0]

    def all_outputs(self) -> tuple[str, ...]:
        return self.outs + self.metrics + tuple(p.path for p in self.plots)


@dataclass(frozen=True)
class StageInstance:
    """A stage with its matrix item filled in (the stage itself when it has no matrix)."""

    stage: Stage
    item: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """DVC's name for the instance: `name` or `name@v1-v2` for a matrix stage."""
        if not self.item:
            return self.stage.name
        return self.stage.name + "@" + "-".join(str(v) for v in self.item.values())

    def path(self, template: str) -> str:
        return template.format(**self.item)

    @property
    def params(self) -> tuple[str, ...]:
        """The dotted params keys of this instance (`datasets.classification.{dataset}` filled in)."""
        return tuple(self.path(key) for key in self.stage.params)

    @property
    def manifest_dir(self) -> str:
        return self.path(self.stage.manifest_dir)

    def outputs(self) -> tuple[str, ...]:
        return tuple(self.path(p) for p in self.stage.all_outputs())


#: Written by `bridgeflow check-params`, DVC's first stage; every stage without upstream stages depends on it, so
#: `dvc repro` / `dvc exp run` stop on a bad param before DVC removes any output. Its content never changes.
PARAMS_CHECK = "artifacts/params_check.txt"

STAGES: tuple[Stage, ...] = (
    Stage(
        name="data",
        func="pipeline_lib.data.stage:run_data",
        description="Generate the shapes world: pretraining corpus, few-shot, CZSL and retrieval datasets on disk.",
        params=("data",),
        outs=("artifacts/data",),
        metrics=("metrics/data.json",),
    ),
    Stage(
        name="backbone",
        func="pipeline_lib.backbone.stage:run_backbone",
        description="Pretrain the tiny CLIP on the shapes captions, or record a real open_clip backbone's spec.",
        params=("backbone.model", "backbone.pretrained", "backbone.force_quick_gelu", "backbone.train"),
        deps=("data",),
        outs=("artifacts/backbone",),
        metrics=("metrics/backbone.json",),
        plots=(Plot("plots/backbone_loss.csv", "step", ("loss",), "Tiny CLIP pretraining loss"),),
    ),
    Stage(
        name="features_fewshot",
        func="pipeline_lib.features.stage:run_features_fewshot",
        description="Extract one classification dataset's val, test (and train) image and class-prompt features.",
        params=(*EXTRACTION, "datasets.classification.{dataset}"),
        deps=("data", "backbone"),
        outs=("artifacts/features/fewshot/{dataset}",),
        matrix=(("dataset", "datasets.classification"),),
        shards=Shards("pipeline_lib.features.shards:plan_shards", "pipeline_lib.features.shards:extract_shard"),
    ),
    Stage(
        name="support",
        func="pipeline_lib.features.stage:run_support",
        description="Extract every augmented view of the train images each shot count's few-shot sample of one seed "
                    "draws (a folder per shot count).",
        params=(*EXTRACTION, "datasets.classification.{dataset}", "fewshot.shots"),
        deps=("data", "backbone"),
        outs=("artifacts/features/support/{dataset}/s{seed}",),
        matrix=(("dataset", "datasets.classification"), ("seed", "fewshot.seeds")),
        shards=Shards("pipeline_lib.features.shards:plan_shards", "pipeline_lib.features.shards:extract_shard"),
    ),
    Stage(
        name="features_czsl",
        func="pipeline_lib.features.stage:run_features_czsl",
        description="Extract one CZSL dataset's image features and patch tokens (zarr).",
        params=(*EXTRACTION, "features.patch_tokens", "datasets.czsl.{czsl_dataset}"),
        deps=("data", "backbone"),
        outs=("artifacts/features/czsl/{czsl_dataset}",),
        matrix=(("czsl_dataset", "datasets.czsl"),),
        shards=Shards("pipeline_lib.features.shards:plan_shards", "pipeline_lib.features.shards:extract_shard"),
    ),
    Stage(
        name="features_text",
        func="pipeline_lib.features.stage:run_features_text",
        description="Extract one text-retrieval dataset's query and gallery text features (zarr).",
        params=(*EXTRACTION, "datasets.text_retrieval.{text_dataset}"),
        deps=("data", "backbone"),
        outs=("artifacts/features/texts/{text_dataset}",),
        matrix=(("text_dataset", "datasets.text_retrieval"),),
    ),
    Stage(
        name="diagnose",
        func="pipeline_lib.diagnose.stage:run_diagnose",
        description="Measure the backbone's modality gap and intra-modal misalignment on the cached features.",
        params=("backbone.diagnose",),
        deps=("features_fewshot",),
        outs=("artifacts/diagnose",),
        pins=(("dataset", "backbone.diagnose.dataset"),),
        metrics=("metrics/gap.json",),
        plots=(
            Plot(
                "plots/gap_similarity.csv",
                "cosine",
                ("image_text", "image_image", "text_text"),
                "Modality gap: cosine similarity histograms",
            ),
        ),
    ),
    Stage(
        name="fewshot_bridge",
        func="pipeline_lib.fewshot.stage:run_fewshot_fit",
        description="Fit the closed-form bridge: truncated pseudo-inverse of the text projection and rescale constant.",
        params=("fewshot.atol",),
        deps=("features_fewshot",),
        outs=("artifacts/fewshot_bridge/{dataset}",),
        matrix=(("dataset", "datasets.classification"),),
    ),
    Stage(
        name="fewshot_run",
        func="pipeline_lib.fewshot.stage:run_fewshot_seed",
        description="One (shots, seed): sample the support set, search blends, train SeMoBridge-T, test all methods.",
        params=(
            "fewshot.augment_epochs",
            "fewshot.atol",
            "fewshot.logits",
            "fewshot.subsets",
            "fewshot.search",
            "fewshot.training",
            "fewshot.run_training",
            "datasets.classification.{dataset}",  # its per-dataset augmentation epochs and final model
        ),
        deps=("features_fewshot", "support", "fewshot_bridge"),
        reads=(("support", "k{shots}"),),
        outs=("artifacts/fewshot_runs/{dataset}/k{shots}-s{seed}",),
        matrix=(("dataset", "datasets.classification"), ("shots", "fewshot.shots"), ("seed", "fewshot.seeds")),
    ),
    Stage(
        name="fewshot_report",
        func="pipeline_lib.fewshot.stage:run_fewshot_report",
        description="Aggregate the few-shot runs: mean and population std over seeds, paired differences, plots.",
        # the whole list of datasets: removing one reruns the report under DVC too (whose deps still hold its runs)
        params=("fewshot.shots", "fewshot.seeds", "datasets.classification"),
        deps=("fewshot_bridge", "fewshot_run"),
        outs=("artifacts/fewshot_report",),
        metrics=("metrics/fewshot.json",),
        plots=(
            Plot("plots/fewshot_accuracy.csv", "shots", ("accuracy",), "Few-shot test accuracy vs shots"),
            Plot("plots/fewshot_train_curve.csv", "step", ("total", "val_acc"), "SeMoBridge-T loss and val accuracy"),
            Plot("plots/fewshot_bias_norms.csv", "class", ("norm",), "SeMoBridge-T class-bias norms", "bar_horizontal"),
        ),
    ),
    Stage(
        name="oti",
        func="pipeline_lib.inversion.stage:run_oti",
        description="OTI on one image-retrieval dataset's query images; OTI->image vs image->image at every step.",
        params=(*OTI_KEYS, "datasets.image_retrieval.{image_dataset}"),
        deps=("backbone", "features_fewshot"),
        outs=("artifacts/inversion/oti/{image_dataset}",),
        matrix=(("image_dataset", "datasets.image_retrieval"),),
        binds=(("dataset", "image_dataset"),),
        metrics=("metrics/inversion/oti/{image_dataset}.json",),
        plots=(
            Plot("plots/oti_map_vs_step/{image_dataset}.csv", "step", ("oti_to_image", "image_to_image"),
                 "Image retrieval mAP vs OTI step"),
            Plot("plots/inversion_similarity/{image_dataset}.csv", "cosine", ("image_image", "text_image", "oti_image"),
                 "Similarity distributions of OTI features"),
        ),
        shards=Shards("pipeline_lib.inversion.shards:plan_shards", "pipeline_lib.inversion.shards:invert_shard"),
    ),
    Stage(
        name="ovi",
        func="pipeline_lib.inversion.stage:run_ovi",
        description="OVI on one text-retrieval dataset's query texts; OVI->text vs text->text at every step.",
        params=(*OVI_KEYS, "datasets.text_retrieval.{text_dataset}"),
        deps=("backbone", "features_text"),
        outs=("artifacts/inversion/ovi/{text_dataset}",),
        matrix=(("text_dataset", "datasets.text_retrieval"),),
        metrics=("metrics/inversion/ovi/{text_dataset}.json",),
        plots=(Plot("plots/ovi_map_vs_step/{text_dataset}.csv", "step", ("ovi_to_text", "text_to_text"),
                    "Text retrieval mAP vs OVI step"),),
        shards=Shards("pipeline_lib.inversion.shards:plan_shards", "pipeline_lib.inversion.shards:invert_shard"),
    ),
    Stage(
        name="czsl",
        func="pipeline_lib.czsl.stage:run_czsl",
        description="SAM-CZSL ablation (CLS, +SA, +VAC, +KL, +bank, +dynamic bank) on one CZSL dataset, both worlds.",
        params=(*CZSL_TRAINING, "datasets.czsl.{czsl_dataset}"),
        deps=("data", "backbone", "features_czsl"),
        outs=("artifacts/czsl/{czsl_dataset}",),
        matrix=(("czsl_dataset", "datasets.czsl"),),
        metrics=("metrics/czsl/{czsl_dataset}.json",),
        plots=(
            Plot("plots/czsl_curve/{czsl_dataset}.csv", "unseen", ("seen",), "CZSL seen/unseen trade-off", "scatter"),
            Plot("plots/czsl_loss/{czsl_dataset}.csv", "step", ("loss",), "CZSL training loss"),
        ),
    ),
    Stage(
        name="claims",
        func="pipeline_lib.claims.stage:run_claims",
        description="Every paper claim as a paired comparison over seeds or queries: 95% interval and verdict.",
        params=("fewshot.shots", "fewshot.seeds", "backbone.model"),
        deps=("diagnose", "fewshot_run", "oti", "ovi", "czsl"),
        outs=("artifacts/claims",),
        pins=(("dataset", "backbone.diagnose.dataset"), ("czsl_dataset", "czsl.dataset"),
              ("image_dataset", "inversion.dataset"), ("text_dataset", "inversion.text_dataset")),
        optional=("oti", "ovi", "czsl"),
        metrics=("metrics/claims.json",),
        plots=(Plot("plots/claims.csv", "mean", ("claim",), "Claims: paired difference and 95% interval",
                    "bar_horizontal"),),
    ),
    Stage(
        name="report",
        func="pipeline_lib.report.page:run_report",
        description="HTML report with PNG plots: claims, modality gap, few-shot, inversion, CZSL, timings, cache hits.",
        params=(),
        deps=("claims", "diagnose", "fewshot_report", "oti", "ovi", "czsl"),
        outs=("reports",),
    ),
)


def path_pattern(template: str) -> str:
    """A registry path with each `{var}` as `*`: the glob that finds every instance's file."""
    return re.sub(r"\{\w+\}", "*", template)


def stage_names() -> list[str]:
    return [s.name for s in STAGES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    from pipeline_lib.engine.errors import UnknownStageError

    raise UnknownStageError(f"unknown stage {name!r} (known: {', '.join(stage_names())})")


def upstream_closure(names: list[str]) -> list[Stage]:
    """The named stages and everything they depend on, in registry (= topological) order."""
    wanted: set[str] = set()

    def visit(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for dep in get_stage(name).deps:
                visit(dep)

    for name in names:
        visit(name)
    return [s for s in STAGES if s.name in wanted]


def instances(stage: Stage, params: dict[str, Any]) -> list[StageInstance]:
    """Every matrix item of a stage under the given params (one instance for a plain stage).

    A matrix key holding a dict contributes its keys, as DVC's matrix does (`datasets.classification` -> names).
    """
    if not stage.matrix:
        return [StageInstance(stage)]
    variables = [var for var, _ in stage.matrix]
    values = [list(get_dotted(params, key)) for _, key in stage.matrix]
    return [StageInstance(stage, dict(zip(variables, combo, strict=True))) for combo in itertools.product(*values)]


def bound_variables(inst: StageInstance, params: dict[str, Any]) -> dict[str, Any]:
    """The item variables that select which upstream instances `inst` reads: its own item, its pins and binds."""
    pinned = {var: get_dotted(params, key) for var, key in inst.stage.pins}
    return {**pinned, **inst.item, **{var: inst.item[own] for var, own in inst.stage.binds}}


def upstream_instances(inst: StageInstance, params: dict[str, Any]) -> list[StageInstance]:
    """The upstream instances `inst` reads: of each stage in its deps, those that agree with it on every variable
    both name (`fewshot_run@pets-4-1` reads `features_fewshot@pets`; an unbound variable means every value, so the
    report reads all runs). Adding a dataset therefore leaves every other dataset's instances' inputs unchanged."""
    bound = bound_variables(inst, params)
    return [
        up
        for dep in inst.stage.deps
        for up in instances(get_stage(dep), params)
        if all(bound[var] == value for var, value in up.item.items() if var in bound)
    ]


def parse_instance_id(text: str, params: dict[str, Any]) -> StageInstance:
    """Find the instance named like DVC does (`fewshot_run@4-2`) or a plain stage name."""
    name = text.split("@", 1)[0]
    stage = get_stage(name)
    for inst in instances(stage, params):
        if inst.id == text or (not stage.matrix and text == name):
            return inst
    from pipeline_lib.engine.errors import UnknownStageError

    known = ", ".join(i.id for i in instances(stage, params))
    raise UnknownStageError(f"no instance {text!r} of stage {name!r} under these params (known: {known})")


def dvc_template(path: str) -> str:
    """Registry path template `{shots}` -> DVC's `${item.shots}`."""
    return re.sub(r"\{(\w+)\}", r"${item.\1}", path)
