"""Tiny replicas of the real text-retrieval releases, in their exact on-disk layouts and with their real file, folder
and column names, so the loaders in `pipeline_lib.datasets.text_formats` are tested against what users download."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

#: NoCaps validation images (file name, domain) and what their captions describe
NOCAPS_IMAGES = (("0013ea2087020901.jpg", "in-domain", "a red double decker bus"),
                 ("00223e4f7dc1d34c.jpg", "near-domain", "a brown horse"),
                 ("004e21eb2e686f40.jpg", "out-domain", "a jellyfish"))
NOCAPS_CAPTIONS = 10  # per image, as in the real release
#: real newsgroup names; two posts of each per bydate split
NEWSGROUPS = ("comp.graphics", "rec.autos", "sci.space")
DOCS_PER_GROUP = 2
#: aclImdb review ids per split/sentiment folder (10 sorts after 2 numerically, not as text)
IMDB_IDS = (0, 2, 10)


def write_nocaps(root: Path) -> Path:
    """`nocaps/nocaps_val_4500_captions.json`: info, licenses, images [{id, file_name, ...}], annotations
    [{image_id, id, caption}]; annotations interleave images as COCO's caption files do."""
    images = [{"id": i, "file_name": name, "open_images_id": name.removesuffix(".jpg"), "height": 768, "width": 1024,
               "coco_url": f"https://s3.amazonaws.com/nocaps/val/{name}", "license": 0, "domain": domain,
               "date_captured": "2018-11-06 11:04:33"} for i, (name, domain, _) in enumerate(NOCAPS_IMAGES)]
    captions = [[f"  {subject.capitalize()} seen up close.\n"]  # real captions carry stray whitespace
                + [f"There is {subject} in picture number {k}. " for k in range(1, NOCAPS_CAPTIONS)]
                for _, _, subject in NOCAPS_IMAGES]
    annotations = [{"image_id": i, "id": k * len(images) + i, "caption": captions[i][k]}
                   for k in range(NOCAPS_CAPTIONS) for i in range(len(images))]
    data = {"licenses": [{"url": "https://creativecommons.org/licenses/by/2.0/", "id": 0, "name": "CC BY 2.0"}],
            "info": {"url": "https://nocaps.org", "date_created": "2018/11/06", "version": "0.1",
                     "description": "nocaps validation dataset", "contributor": "nocaps team", "year": 2018},
            "images": images, "annotations": annotations}
    path = root / "nocaps" / "nocaps_val_4500_captions.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def newsgroup_post(group: str, doc: int, body: str) -> str:
    """A bydate post: its header block (From, Subject, Organization, Lines), an empty line, then the body."""
    return (f"From: user{doc}@cs.example.edu (J\xe9r\xf4me User)\nSubject: Re: question about {group}\n"
            f"Organization: Example University\nLines: {body.count(chr(10)) + 1}\n\n{body}\n")


def write_newsgroups(root: Path) -> Path:
    """`20news-bydate/20news-bydate-{train,test}/<newsgroup>/<doc id>`, latin-1 files without extension."""
    base = root / "20news-bydate"
    doc = 38000
    for split in ("train", "test"):
        for group in NEWSGROUPS:
            folder = base / f"20news-bydate-{split}" / group
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(DOCS_PER_GROUP):
                doc += 1
                body = f"In article <{doc}@example.edu> someone writes:\n>   quoted line\n\nMy {split} post {k} " \
                       f"on {group}, caf\xe9 style.\n\n--\nsignature"
                (folder / str(doc)).write_bytes(newsgroup_post(group, doc, body).encode("latin-1"))
    return base


def write_imdb(root: Path) -> Path:
    """`aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt` (utf-8, `<br />` line breaks), plus `train/unsup/`,
    `imdb.vocab` and `README` that the loader must not read."""
    base = root / "aclImdb"
    for split in ("train", "test"):
        for sentiment, ratings in (("pos", (9, 7, 10)), ("neg", (1, 4, 2))):
            folder = base / split / sentiment
            folder.mkdir(parents=True, exist_ok=True)
            for review, rating in zip(IMDB_IDS, ratings, strict=True):
                text = f"{split} {sentiment} review {review}: rated {rating}/10.<br /><br />Worth noting \u2013 cast."
                (folder / f"{review}_{rating}.txt").write_text(text, encoding="utf-8")
    (base / "train" / "unsup").mkdir(parents=True)
    (base / "train" / "unsup" / "0_0.txt").write_text("unsup review that must be ignored", encoding="utf-8")
    (base / "imdb.vocab").write_text("the\nand\na\n", encoding="utf-8")
    (base / "README").write_text("Large Movie Review Dataset v1.0\n", encoding="utf-8")
    return base


def write_nanobeir(root: Path, name: str = "NanoSciFact") -> Path:
    """`<name>/{corpus,queries,qrels}/train-00000-of-00001.parquet` as on the hub: corpus and queries (_id, text),
    qrels (query-id, corpus-id), all strings; query "3" has no qrel, query "1" two."""
    base = root / name
    tables = {
        "corpus": {"_id": ["4983", "5836", "7912", "18670"],
                   "text": ["Alterations of the architecture of cerebral white matter.",
                            "Myelodysplastic syndromes are a heterogeneous group of disorders.",
                            "Vitamin D deficiency is associated with bone loss.",
                            "Microbial communities differ between body sites."]},
        "queries": {"_id": ["1", "3", "5"],
                    "text": ["0-dimensional biomaterials show inductive properties.",
                             "1,000 genomes project enables mapping of genetic sequence variation.",
                             "1/2000 in UK have abnormal PrP positivity."]},
        "qrels": {"query-id": ["1", "1", "5"], "corpus-id": ["7912", "4983", "18670"]},
    }
    for folder, columns in tables.items():
        (base / folder).mkdir(parents=True, exist_ok=True)
        pl.DataFrame(columns).write_parquet(base / folder / "train-00000-of-00001.parquet")
    (base / "README.md").write_text("---\nlicense: cc-by-4.0\n---\n", encoding="utf-8")
    return base
