"""params.yaml `datasets` section: every dataset of a run, by task, each named once and configured in one place.

The keys of `datasets.classification` are a matrix axis of the pipeline: each name gets its own few-shot feature,
bridge and run instances (`features_fewshot@pets`, `fewshot_run@pets-4-1`), versioned by its own entry only
(`datasets.classification.pets`), so adding a dataset computes just its instances and removing one touches nothing
else. The keys of `datasets.czsl` are the CZSL axis in the same way (`features_czsl@mit_states`,
`czsl@mit_states`), and so are `datasets.image_retrieval` (`oti@pets`) and `datasets.text_retrieval`
(`features_text@coco`, `ovi@coco`). The shapes world the data stage generates is the entry whose `root` (or `path`)
is null.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

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


Split = Literal["train", "val", "test"]


class ImageRetrievalDataset(Section):
    """One image-retrieval benchmark: two splits of the `datasets.classification` entry of the same name, whose few-shot
    store holds their image features (Cross-the-Gap's DASSL protocol: test images query the train images, relevant =
    same class; spec 3.1)."""

    query_split: Split = "test"
    gallery_split: Split = "train"

    @model_validator(mode="after")
    def _distinct_splits(self) -> ImageRetrievalDataset:
        if self.query_split == self.gallery_split:
            raise ValueError(f"query_split = gallery_split = {self.query_split!r}: same-split retrieval (CUB all/all, "
                             "SOP test/test) needs each query's own item removed from its ranking, which is not "
                             "implemented; use two different splits")
        return self


class TextRetrievalDataset(NamedPaths):
    """One text-retrieval benchmark: query texts, gallery texts and the group that makes a gallery text relevant.

    `table`: a parquet with columns text, group, split ("query" | "gallery"). `karpathy`: Karpathy's caption file
    (`dataset_coco.json`, `dataset_flickr30k.json`): of each image in `split`, the first caption is a query and the
    others are its gallery texts (relevant = same image; spec 3.1)."""

    path: str | None = None  # null = the data stage's shapes paraphrases (artifacts/data/retrieval/texts.parquet)
    format: Literal["table", "karpathy"] = "table"
    split: str = "test"  # karpathy: the images whose captions are used (COCO: test; Flickr30k: val in the paper)


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

    # {} = no OTI stages; each name is also a key of `classification` (its feature store has both splits)
    image_retrieval: dict[str, ImageRetrievalDataset] = Field(
        default_factory=lambda: {"shapes": ImageRetrievalDataset()})

    # {} = no text-retrieval features and no OVI stages
    text_retrieval: dict[str, TextRetrievalDataset] = Field(
        default_factory=lambda: {"shapes": TextRetrievalDataset()})

    @field_validator("classification", "czsl", "image_retrieval", "text_retrieval")
    @classmethod
    def _names(cls, v: dict[str, Section], info: ValidationInfo) -> dict[str, Section]:
        _check_names(str(info.field_name), list(v))
        return v

    @model_validator(mode="after")
    def _image_retrieval_reads_classification(self) -> DatasetsConfig:
        for name, entry in self.image_retrieval.items():
            source = self.classification.get(name)
            if source is None:
                raise ValueError(f"image_retrieval.{name}: no datasets.classification entry {name!r} (its feature "
                                 f"store holds the query and gallery images; listed: {', '.join(self.classification)})")
            if "train" in (entry.query_split, entry.gallery_split) and not source.train_features:
                raise ValueError(f"image_retrieval.{name} reads train images, which classification.{name} does not "
                                 "extract (set its train_features: true)")
        return self
