"""params.yaml `datasets` section: every dataset of a run, by task, each named once and configured in one place.

The keys of `datasets.classification` are a matrix axis of the pipeline: each name gets its own few-shot feature,
bridge and run instances (`features_fewshot@pets`, `fewshot_run@pets-4-1`), versioned by its own entry only
(`datasets.classification.pets`), so adding a dataset computes just its instances and removing one touches nothing
else. The keys of `datasets.czsl` are the CZSL axis in the same way (`features_czsl@mit_states`,
`czsl@mit_states`). The shapes world the data stage generates is the entry whose `root` is null.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from pipeline_lib.engine.configbase import NamedPaths, Section
from pipeline_lib.features.config import AugmentConfig

#: Dataset names become stage-instance ids (`fewshot_run@oxford_pets-4-1`) and folder names, where `-` separates
#: matrix values.
NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class AugmentRecipe(AugmentConfig):
    """The offline augmentation of one shot count of a dataset (SeMoBridge spec 1.3's per-dataset configs): E
    augmented copies of every support image, each drawn with this recipe."""

    epochs: int = Field(ge=0)  # E: the support stage encodes E + 1 views, the runs use all of them


class ClassificationDataset(NamedPaths):
    """One classification dataset in CoOp's layout: `root/image_dir/<relpath>` images and `root/split_file`
    (format coop); ImageNet's class folders `root/image_dir/{train,val}/<wnid>/` with `root/classnames_file`
    (format imagenet; val = test); or FGVC-Aircraft's `variants.txt` and `images_variant_<split>.txt` lists
    (format fgvc_aircraft)."""

    # null = the shapes world the data stage generates (artifacts/data/fewshot/shapes); relative paths start at the
    # project folder, so a user points at e.g. /data/oxford_pets without touching code.
    root: str | None = None
    # coop: split json {"train"|"val"|"test": [[relpath, label, classname]]}
    format: Literal["coop", "imagenet", "fgvc_aircraft"] = "coop"
    split_file: str = "split_zhou_Shapes.json"  # format coop
    classnames_file: str = "classnames.txt"  # format imagenet: "<wnid> <class name>" lines
    image_dir: str = "images"  # folder under root that the split's relpaths are relative to
    prompts: str = "Shapes"  # CoOp dataset name whose prompt templates are used (pipeline_lib.features.prompts)
    templates: list[str] | None = None  # explicit templates instead of the `prompts` set, each with one "{}"
    cupl_file: str | None = None  # optional CuPL json {classname: [sentence, ...]}, appended to the templates
    # Encode every train image once (the gap diagnostics and image retrieval read them); false encodes only the
    # images the few-shot samples draw (the `support` stage): ImageNet at shots 1-16 x 3 seeds draws 93k of 1.28M.
    train_features: bool = True
    # shots -> recipe, for the shot counts whose official augmentation differs from features.augment with
    # fewshot.augment_epochs (e.g. DTD: 10 RRC + flip + colour-jitter copies at 1 and 2 shots)
    augment: dict[int, AugmentRecipe] = Field(default_factory=dict)
    final_model: Literal["best_val", "last_step"] | None = None  # None = fewshot.training.final_model

    @field_validator("templates")
    @classmethod
    def _templates_have_slot(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("templates=[]: expected at least one template, or null for the `prompts` set")
            bad = [t for t in v if t.count("{}") != 1]
            if bad:
                raise ValueError(f"templates {bad!r}: each template needs exactly one '{{}}' class slot")
        return v


class CzslDataset(NamedPaths):
    """One CZSL dataset in the standard layout: `root/compositional-split-natural/{train,val,test}_pairs.txt`,
    `root/metadata_compositional-split-natural.t7` and `root/images/` (MIT-States, UT-Zappos, C-GQA)."""

    root: str | None = None  # null = the shapes CZSL benchmark the data stage generates (artifacts/data/czsl/shapes)
    # assert the published sizes when the root folder is a standard release's (mit-states, ut-zappos, cgqa), so a
    # partial download fails loudly; off for a subset or a replica kept under the real name
    check_sizes: bool = True
    # this dataset's own values of `czsl` keys, e.g. the published per-benchmark lr, batch size, epochs and primitive
    # loss weights (spec 3.4); the other keys come from the `czsl` section (`czsl.config.dataset_config`)
    overrides: dict[str, Any] = Field(default_factory=dict)


def _check_names(kind: str, names: list[str]) -> None:
    bad = [name for name in names if not NAME.match(name)]
    if bad:
        raise ValueError(f"{kind} dataset names {bad}: use lower-case letters, digits and '_' (they name stage "
                         "instances and folders), starting with a letter")


class DatasetsConfig(Section):
    """The run's datasets by task; a name is a key (and an instance id), its entry says where and how to read it."""

    # {} = no classification stages (a CZSL suite)
    classification: dict[str, ClassificationDataset] = Field(
        default_factory=lambda: {"shapes": ClassificationDataset()})

    # {} = no CZSL stages (a few-shot or retrieval suite)
    czsl: dict[str, CzslDataset] = Field(default_factory=lambda: {"shapes": CzslDataset()})

    @field_validator("classification", "czsl")
    @classmethod
    def _names(cls, v: dict[str, NamedPaths], info: ValidationInfo) -> dict[str, NamedPaths]:
        _check_names(str(info.field_name), list(v))
        return v
