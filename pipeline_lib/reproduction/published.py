"""Every number the three papers (and the specs quoting them) publish that a run could be compared with, as data.

The numbers live in `published.csv` beside this module, one row per number, in the paper's own unit. Columns:

- paper: short id, expanded by PAPERS (arXiv id / venue).
- task: fewshot | image_retrieval | text_retrieval | czsl.
- backbone: the paper's name (ViT-B/16, RN50, ViT-L/14, RN50x64); "several" or "unspecified" where the paper pools
  or does not say. `backbone_id()` turns our open_clip model name into this form.
- dataset: our dataset ids (see DATASET_ALIASES for the paper's names). Aggregates: `coop11_mean` (plain mean over the
  11 CoOp datasets), `paper_mean` (mean over the paper's own datasets), `czsl3` (the claim spans UT-Zappos,
  MIT-States and C-GQA), `dog_cat_aligned` (Cross the Gap's toy subset); `-` = not tied to a dataset.
- method: our method ids (few-shot: zero_shot, semobridge_all (training-free), semobridge_t; CZSL ablation rows:
  baseline, +sa, +vac, +kl, +bank_seen, +dynamic (= SAM-CZSL's full model); retrieval: image_to_image, oti_to_image,
  text_to_text, ovi_to_text). "A-minus-B" is a paired difference (metrics *_diff). Methods this pipeline does not
  run keep a plain name (troika, logiczsl, cluspro, csp, ldc, coop, ...).
- setting: few-shot: the shot count ("0" for zero-shot, "mean_shots" for the mean over 1-16 shots, "1-16" for a claim
  over all shot counts); CZSL: the world (closed | open); "-" when there is none. A ";key=value" suffix names what
  differs from the paper's headline configuration (e.g. "16;lambda_it=0.7", "1;texts=cupl").
- metric / unit: see METRICS; units are points (percent), fraction (0..1), ratio (dimensionless), count, s.
- value, spread: the number and its published ± (empty when none is given). A range claim ("about 2-3 points") has no
  value and gives low / high instead.
- quality: exact (quoted from the paper or the authors' result files), approx ("about", "~"), unverified (marked
  [verify] / [unverified] / "≈" in the specs, or a third-party extraction).
- source: the section or table it comes from, as the reference files name it; note: anything else worth knowing.

Left out on purpose (inputs, not results): hyper-parameters and step counts (OTI 150 / OVI 1000 steps, λ defaults),
dataset sizes and class counts (the CZSL ones are checked by `pipeline_lib.czsl.sizes`), CuPL sentence counts.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pipeline_lib.czsl.sizes import EXPECTED_SIZES
from pipeline_lib.features.prompts import ALIASES as COOP_ALIASES
from pipeline_lib.features.prompts import DATASET_PROMPTS

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
TINY_PREFIX = "bf-tiny-"  # the tiny shapes-world models (pipeline_lib.backbone.tiny), never in a paper

Task = Literal["fewshot", "image_retrieval", "text_retrieval", "czsl"]
TASKS: tuple[str, ...] = ("fewshot", "image_retrieval", "text_retrieval", "czsl")
QUALITIES: tuple[str, ...] = ("exact", "approx", "unverified")
COLUMNS: tuple[str, ...] = (
    "paper",
    "task",
    "backbone",
    "dataset",
    "method",
    "setting",
    "metric",
    "value",
    "unit",
    "spread",
    "low",
    "high",
    "quality",
    "source",
    "note",
)

PAPERS: dict[str, str] = {
    "semobridge": "SeMoBridge, arXiv 2509.26036 (ICLR 2026)",
    "cross_the_gap": "Cross the Gap (OTI/OVI), arXiv 2502.04263 (ICLR 2025)",
    "sam_czsl": "SAM-CZSL, CVPR 2026 (no public code)",
    "csp": "CSP, as quoted in specs/czsl.md section 2.4 (marked [verify])",
    "troika": "Troika (CVPR'24), as quoted in specs/czsl.md section 2.4 (marked [verify])",
}

#: Units a number can be in. Percent-like metrics convert between points (0..100) and fraction (0..1) by these scales;
#: every other unit converts only to itself.
UNITS: tuple[str, ...] = ("points", "fraction", "ratio", "count", "s")
PERCENT_SCALE: dict[str, float] = {"points": 100.0, "fraction": 1.0}


@dataclass(frozen=True)
class MetricSpec:
    """What a metric id means and which values are plausible (the bounds are in points for percent-like metrics)."""

    units: tuple[str, ...]  # units the metric may be quoted in
    low: float  # smallest plausible value
    high: float  # largest plausible value
    integer: bool = False  # counts must be whole numbers


_PCT = ("points", "fraction")
METRICS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec(_PCT, 0.0, 100.0),  # top-1 accuracy
    "map": MetricSpec(_PCT, 0.0, 100.0),  # mAP over the full ranking
    "auc": MetricSpec(_PCT, 0.0, 100.0),  # CZSL seen/unseen curve area
    "hm": MetricSpec(_PCT, 0.0, 100.0),  # CZSL best harmonic mean
    "seen": MetricSpec(_PCT, 0.0, 100.0),  # CZSL best seen accuracy
    "unseen": MetricSpec(_PCT, 0.0, 100.0),  # CZSL best unseen accuracy
    "accuracy_diff": MetricSpec(_PCT, -100.0, 100.0),  # paired difference A-minus-B
    "map_diff": MetricSpec(_PCT, -100.0, 100.0),
    "auc_diff": MetricSpec(_PCT, -100.0, 100.0),
    "rmg": MetricSpec(("ratio",), 0.0, math.inf),  # relative modality gap
    "ow_threshold": MetricSpec(("ratio",), -1.0, 1.0),  # open-world feasibility threshold (a cosine)
    "sv_median": MetricSpec(("ratio",), 0.0, math.inf),  # singular values of the text projection
    "sv_max": MetricSpec(("ratio",), 0.0, math.inf),
    "n_dropped": MetricSpec(("count",), 0.0, math.inf, integer=True),  # singular values below atol
    "n_singular_values": MetricSpec(("count",), 0.0, math.inf, integer=True),
    "train_seconds": MetricSpec(("s",), 0.0, math.inf),  # training time per run
    "seconds_per_query": MetricSpec(("s",), 0.0, math.inf),  # inversion cost per query
}

#: Aggregate and placeholder dataset ids (see the module docstring).
AGGREGATE_DATASETS: tuple[str, ...] = ("coop11_mean", "paper_mean", "czsl3", "dog_cat_aligned", "unspecified", "-")

#: The papers' short dataset names -> our ids. CoOp class names (Caltech101, OxfordPets, ...) come from
#: `pipeline_lib.features.prompts.ALIASES`; other spellings are matched case-, '-', '_' and space-insensitively.
DATASET_ALIASES: dict[str, str] = {
    "ImageNet": "imagenet",
    "ImageNet-Sketch": "imagenet-sketch",
    "Caltech": "caltech-101",
    "Pets": "oxford_pets",
    "Cars": "stanford_cars",
    "Flowers": "oxford_flowers",
    "Food": "food-101",
    "FGVC": "fgvc_aircraft",
    "SUN": "sun397",
    "DTD": "dtd",
    "EuroSAT": "eurosat",
    "UCF": "ucf101",
    "UT-Zappos": "ut-zappos",
    "MIT-States": "mit-states",
    "C-GQA": "cgqa",
}

#: The papers' method labels -> our method ids.
METHOD_ALIASES: dict[str, str] = {
    "CLIP zero-shot": "zero_shot",
    "SeMoBridge (training-free)": "semobridge_all",
    "training-free": "semobridge_all",
    "SeMoBridge-T": "semobridge_t",
    "-T": "semobridge_t",
    "SAM-CZSL": "+dynamic",
    "Troika (CVPR'24)": "troika",
    "LogiCzsl (CVPR'25)": "logiczsl",
    "ClusPro (ICLR'25)": "cluspro",
    "baseline": "baseline",
    "+ sparse alignment (SA)": "+sa",
    "+ VAC base loss": "+vac",
    "+ KL (SA distils into VAC)": "+kl",
    "+ memory bank, seen only": "+bank_seen",
    "+ dynamic update, seen and unseen": "+dynamic",
}


def _fold(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def _dataset_table() -> dict[str, str]:
    known = [*DATASET_PROMPTS, *EXPECTED_SIZES]
    table = {_fold(k): k for k in known}
    for alias, target in (*COOP_ALIASES.items(), *DATASET_ALIASES.items()):
        table[_fold(alias)] = target
    return table


_DATASETS = _dataset_table()


def dataset_id(name: str) -> str:
    """Our dataset id for a paper's, CoOp's or a folder's spelling ('Caltech101', 'caltech101' -> 'caltech-101',
    'MIT_States' -> 'mit-states', 'Pets' -> 'oxford_pets'); aggregates and unknown names come back lower-cased."""
    if name in AGGREGATE_DATASETS:
        return name
    return _DATASETS.get(_fold(name), name.strip().lower())


def _is_local_weights(pretrained: str) -> bool:
    return any(sep in pretrained for sep in ("/", "\\")) or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
    )


def backbone_id(model: str, pretrained: str | None) -> str:
    """The paper's backbone name for an open_clip model and weights ('ViT-B-16', 'openai' -> 'ViT-B/16').

    Every published number uses OpenAI CLIP weights, so only pretrained='openai' or a local weights file (how OpenAI
    weights reach an offline machine; the caller vouches for what it holds) gives the bare name. Other tags, and None
    (random weights) for a real architecture, append the weights in brackets, which no published row matches. The
    tiny models trained here (bf-tiny-*) keep their own name.
    """
    if model.startswith(TINY_PREFIX):
        return model
    name = model.removesuffix("-quickgelu")
    parts = name.split("-")
    if len(parts) == 3 and parts[0] == "ViT" and parts[2].isdigit():
        name = f"ViT-{parts[1]}/{parts[2]}"
    if pretrained == "openai" or (pretrained is not None and _is_local_weights(pretrained)):
        return name
    return f"{name} ({pretrained or 'random init'})"


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """`value` in `from_unit` expressed in `to_unit` (points <-> fraction by x100 / /100; other units only to
    themselves). Spreads and differences convert the same way (a pure scale)."""
    if from_unit == to_unit:
        return value
    if from_unit in PERCENT_SCALE and to_unit in PERCENT_SCALE:
        return value * PERCENT_SCALE[to_unit] / PERCENT_SCALE[from_unit]
    raise ValueError(f"cannot convert {value!r} from unit {from_unit!r} to {to_unit!r}; only points <-> fraction")


Key = tuple[str, str, str, str, str, str]  # (task, dataset, backbone, method, setting, metric)


@dataclass(frozen=True)
class PublishedRow:
    """One published number (or range), in the paper's unit."""

    paper: str  # key of PAPERS
    task: str  # one of TASKS
    backbone: str  # the paper's backbone name
    dataset: str  # our dataset id
    method: str  # our method id
    setting: str  # shots / world / "-", with optional ";key=value" qualifiers
    metric: str  # key of METRICS
    value: float | None  # None for a range claim
    unit: str  # the paper's unit
    spread: float | None  # the published ± (None when none is given)
    low: float | None  # range claims only
    high: float | None
    quality: str  # one of QUALITIES
    source: str  # where it is quoted
    note: str = ""

    @property
    def key(self) -> Key:
        return (self.task, self.dataset, self.backbone, self.method, self.setting, self.metric)

    @property
    def paper_ref(self) -> str:
        return PAPERS[self.paper]

    @property
    def is_range(self) -> bool:
        return self.value is None

    def in_points(self, value: float) -> float:
        """A number in this row's unit on the metric's plausibility scale (points for percent-like metrics)."""
        return convert(value, self.unit, "points") if self.unit in PERCENT_SCALE else value


class PublishedDataError(ValueError):
    """published.csv breaks one of its rules (names the line, the column, the value and the rule)."""


def _number(text: str, where: str, column: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise PublishedDataError(f"{where}: {column}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise PublishedDataError(f"{where}: {column}={text!r} must be finite")
    return value


def _check_choice(value: str, choices: tuple[str, ...] | dict, where: str, column: str) -> str:
    if value not in choices:
        raise PublishedDataError(f"{where}: {column}={value!r}; expected one of {list(choices)}")
    return value


def parse_row(raw: dict[str, str], where: str) -> PublishedRow:
    """One CSV record -> a validated PublishedRow (raises PublishedDataError naming `where`)."""
    for col in ("paper", "task", "backbone", "dataset", "method", "setting", "metric", "unit", "quality", "source"):
        if not (raw.get(col) or "").strip():
            raise PublishedDataError(f"{where}: column {col!r} is empty")
    paper = _check_choice(raw["paper"], PAPERS, where, "paper")
    task = _check_choice(raw["task"], TASKS, where, "task")
    metric = _check_choice(raw["metric"], METRICS, where, "metric")
    spec = METRICS[metric]
    unit = _check_choice(raw["unit"], spec.units, where, f"unit (of metric {metric!r})")
    quality = _check_choice(raw["quality"], QUALITIES, where, "quality")
    value, spread = _number(raw["value"], where, "value"), _number(raw["spread"], where, "spread")
    low, high = _number(raw["low"], where, "low"), _number(raw["high"], where, "high")
    if value is None and (low is None or high is None):
        raise PublishedDataError(f"{where}: give a value, or low and high for a range claim")
    if value is not None and (low is not None or high is not None):
        raise PublishedDataError(f"{where}: value={value} with low/high; a row is a number or a range, not both")
    if low is not None and high is not None and low > high:
        raise PublishedDataError(f"{where}: low={low} > high={high}")
    if spread is not None and (value is None or spread < 0):
        raise PublishedDataError(f"{where}: spread={spread} must be >= 0 and belongs to a value, not a range")
    row = PublishedRow(
        paper=paper,
        task=task,
        backbone=raw["backbone"],
        dataset=dataset_id(raw["dataset"]),
        method=raw["method"],
        setting=raw["setting"],
        metric=metric,
        value=value,
        unit=unit,
        spread=spread,
        low=low,
        high=high,
        quality=quality,
        source=raw["source"],
        note=raw.get("note") or "",
    )
    for name, number in (("value", value), ("low", low), ("high", high)):
        if number is None:
            continue
        scaled = row.in_points(number)
        if not spec.low <= scaled <= spec.high:
            raise PublishedDataError(
                f"{where}: {name}={number} {unit} is outside [{spec.low}, {spec.high}] for metric {metric!r}"
            )
        if spec.integer and number != int(number):
            raise PublishedDataError(f"{where}: {name}={number} must be a whole number for metric {metric!r}")
    if raw["dataset"] != row.dataset:
        raise PublishedDataError(f"{where}: dataset={raw['dataset']!r}; write our id {row.dataset!r}")
    return row


@dataclass(frozen=True)
class PublishedTable:
    """All published rows, looked up by (task, dataset, backbone, method, setting, metric)."""

    rows: tuple[PublishedRow, ...]
    _index: dict[Key, PublishedRow] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[Key, PublishedRow] = {}
        for row in self.rows:
            if row.key in index:
                raise PublishedDataError(
                    f"duplicate published key {row.key} (sources: {index[row.key].source!r} and "
                    f"{row.source!r}); merge them into one row"
                )
            index[row.key] = row
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(
        self, task: str, dataset: str, backbone: str, method: str, setting: str, metric: str
    ) -> PublishedRow | None:
        """The published row for this key, or None. `dataset` may be any spelling dataset_id() knows; `backbone`
        must be the paper's name (use backbone_id())."""
        return self._index.get((task, dataset_id(dataset), backbone, method, setting, metric))

    def pairs(self) -> list[tuple[str, str]]:
        """Every (dataset, backbone) pair with at least one published number, sorted."""
        return sorted({(r.dataset, r.backbone) for r in self.rows})


def read_published(path: Path) -> PublishedTable:
    """Parse and validate a published-numbers CSV (see the module docstring for its columns)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise PublishedDataError(f"{path}: columns {reader.fieldnames}; expected exactly {list(COLUMNS)}")
        rows = []
        for raw in reader:
            where = f"{path.name}:{reader.line_num}"
            if None in raw or None in raw.values():
                raise PublishedDataError(f"{where}: expected exactly {len(COLUMNS)} cells, one per column")
            rows.append(parse_row(raw, where))
    return PublishedTable(tuple(rows))


@lru_cache(maxsize=1)
def load_published() -> PublishedTable:
    """The packaged published numbers (parsed once per process)."""
    return read_published(PUBLISHED_CSV)
