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
    (format imagenet; val = test); FGVC-Aircraft's `variants.txt` and `images_variant_<split>.txt` lists
    (format fgvc_aircraft); CUB-200-2011's `images.txt` lists (format cub); Stanford Online Products'
    `Ebay_{train,test}.txt` (format sop); or revisited Oxford / Paris, `gnd_<name>.pkl` with `jpg/` (format
    revisited: train = the database, test = the queries; image retrieval only)."""

    # null = the shapes world the data stage generates (artifacts/data/fewshot/shapes); relative paths start at the
    # project folder, so a user points at e.g. /data/oxford_pets without touching code.
    root: str | None = None
    # coop: split json {"train"|"val"|"test": [[relpath, label, classname]]}
    format: Literal["coop", "imagenet", "fgvc_aircraft", "cub", "sop", "revisited"] = "coop"
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


#: A split of a classification entry's feature store, or "all" of them (train, val, test in that order).
Split = Literal["train", "val", "test", "all"]


class ImageRetrievalDataset(Section):
    """One image-retrieval benchmark: two splits of the `datasets.classification` entry of the same name, whose few-shot
    store holds their image features. Relevant = same class (Cross-the-Gap's DASSL protocol: test images query the
    train images; spec 3.1), or the revisited protocol's ground truth for a `revisited` entry (database = train,
    queries = test). When both splits are the same (CUB all/all, SOP test/test) each query's own image is removed from
    its ranking."""

    query_split: Split = "test"
    gallery_split: Split = "train"


class TextRetrievalDataset(NamedPaths):
    """One text-retrieval benchmark: query texts, gallery texts and what makes a gallery text relevant (spec 3.1).

    `table`: a parquet with columns text, group, split ("query" | "gallery"), relevant = same group. `karpathy`:
    Karpathy's caption file (`dataset_coco.json`, `dataset_flickr30k.json`): of each image in `split`, the first
    caption is a query and the others are its gallery texts (relevant = same image). `coco_captions`: a COCO-style
    caption file (NoCaps' `nocaps_val_4500_captions.json`), same first-caption rule. `newsgroups`: the 20news-bydate
    folder, one description per newsgroup queries the `split` documents. `imdb`: the aclImdb folder, "a positive /
    negative review of a movie." query all 50k reviews. `nanobeir`: one NanoBEIR set's folder (corpus, queries,
    qrels parquet files), relevant = its qrels. Long gallery texts are truncated to the text encoder's context; the
    paper summarised them with an LLM first, and NanoBEIR's `summaries` reads those summaries."""

    # a file (table, karpathy, coco_captions) or folder (newsgroups, imdb, nanobeir); null = the data stage's shapes
    # paraphrases (artifacts/data/retrieval/texts.parquet)
    path: str | None = None
    format: Literal["table", "karpathy", "coco_captions", "newsgroups", "imdb", "nanobeir"] = "table"
    split: str = "test"  # karpathy: the images whose captions are used (COCO: test; Flickr30k: val in the paper);
    # newsgroups: the bydate split whose documents form the gallery
    # newsgroups: a json {newsgroup: description} (relative to the dataset folder) replacing the built-in queries
    descriptions: str | None = None
    # nanobeir: a pickle {corpus _id: summary} (relative to the dataset folder) replacing the corpus texts, e.g. the
    # paper's Llama-3.2-1B summaries (its `summarized_text.pkl` of the set), so the gallery is the paper's
    summaries: str | None = None


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
            splits = (entry.query_split, entry.gallery_split)
            if ("train" in splits or "all" in splits) and not source.train_features:
                raise ValueError(f"image_retrieval.{name} reads train images, which classification.{name} does not "
                                 "extract (set its train_features: true)")
            if source.format == "revisited" and splits != ("test", "train"):
                raise ValueError(f"image_retrieval.{name}: a revisited dataset's queries are its test split and its "
                                 f"database its train split; got query_split={splits[0]!r}, "
                                 f"gallery_split={splits[1]!r}")
        return self
