"""The real text-retrieval benchmarks of Cross the Gap (ICLR 2025) read from their release layouts on disk: NoCaps/COCO
captions, 20 Newsgroups (bydate), IMDB (aclImdb) and NanoBEIR. Each loader returns query and gallery texts with the
groups (or qrels) that say which gallery texts are relevant to a query, and fails with a `DatasetError` naming the
file and what was expected rather than yielding a silently wrong benchmark."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline_lib.data.errors import DatasetError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalTexts:
    """A benchmark's two sides; gallery texts of a query's group are relevant, unless `relevant` (qrels) is given."""

    query: list[str]
    gallery: list[str]
    query_groups: list[str]  # [n_query]
    gallery_groups: list[str]  # [n_gallery]
    relevant: list[list[int]] | None = None  # [n_query][k] sorted gallery indices; None = same group

    def __post_init__(self) -> None:
        if len(self.query) != len(self.query_groups) or len(self.gallery) != len(self.gallery_groups):
            raise ValueError("every text needs exactly one group")
        if self.relevant is not None and len(self.relevant) != len(self.query):
            raise ValueError("`relevant` needs one list per query")


NEWSGROUP_DESCRIPTIONS: dict[str, str] = {
    "alt.atheism": "A discussion about atheism, arguments against the existence of God and criticism of religion.",
    "comp.graphics": "A discussion about computer graphics, image file formats and rendering software.",
    "comp.os.ms-windows.misc": "A discussion about the Microsoft Windows operating system, its drivers and setup.",
    "comp.sys.ibm.pc.hardware": "A discussion about IBM PC compatible hardware such as hard drives, controllers and "
                                "motherboards.",
    "comp.sys.mac.hardware": "A discussion about Apple Macintosh computers, their hardware and peripherals.",
    "comp.windows.x": "A discussion about the X Window System, X servers, widgets and Motif programming.",
    "misc.forsale": "An advertisement offering an item for sale, with its price and condition.",
    "rec.autos": "A discussion about cars, car models, engines and driving.",
    "rec.motorcycles": "A discussion about motorcycles, riding and motorcycle gear.",
    "rec.sport.baseball": "A discussion about baseball, its teams, players and games.",
    "rec.sport.hockey": "A discussion about ice hockey, the NHL, its teams and players.",
    "sci.crypt": "A discussion about cryptography, encryption, privacy and government key escrow.",
    "sci.electronics": "A discussion about electronics, circuits and electronic components.",
    "sci.med": "A discussion about medicine, diseases, symptoms and treatments.",
    "sci.space": "A discussion about space exploration, NASA, satellites and astronomy.",
    "soc.religion.christian": "A discussion about Christianity, the Bible and Christian faith.",
    "talk.politics.guns": "A political discussion about guns, firearm laws and gun control.",
    "talk.politics.mideast": "A political discussion about the Middle East, Israel and its neighbours.",
    "talk.politics.misc": "A political discussion about government, taxes and public policy.",
    "talk.religion.misc": "A discussion about religion, religious beliefs, cults and morality.",
}
"""One query per newsgroup, written for this project. The paper's own descriptions are in the authors' code, which
this project does not copy: to reproduce their protocol, put them in a json and name it in the entry's
`descriptions`."""

IMDB_QUERIES = {"pos": "a positive review of a movie.", "neg": "a negative review of a movie."}
_IMDB_NAME = re.compile(r"(\d+)_(\d+)\.txt")  # <review id>_<rating 1-10>.txt
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def load_coco_captions(path: Path) -> RetrievalTexts:
    """A COCO-style caption file (NoCaps `nocaps_val_4500_captions.json`, COCO `captions_val2014.json`): of each image,
    its first caption queries its other captions; group = the image's file name."""
    data = _read_json(path)
    try:
        names = {im["id"]: str(im["file_name"]) for im in data["images"]}  # images order kept
        captions: dict[Any, list[str]] = {image: [] for image in names}
        for ann in data["annotations"]:  # COCO interleaves images here; annotation order within an image is kept
            if ann["image_id"] not in captions:
                raise DatasetError(f"{path}: annotation {ann.get('id')!r} names image_id {ann['image_id']!r}, "
                                   "which is not in `images`")
            if text := ann["caption"].strip():
                captions[ann["image_id"]].append(text)
    except (KeyError, TypeError, AttributeError) as e:
        raise DatasetError(f"{path}: malformed caption file ({type(e).__name__}: {e}); expected top-level `images` "
                           "[{id, file_name}] and `annotations` [{image_id, id, caption}]") from e
    query: list[str] = []
    gallery: list[str] = []
    gallery_groups: list[str] = []
    for image, name in names.items():
        caps = captions[image]
        if len(caps) < 2:
            raise DatasetError(f"{path}: image {name!r} has {len(caps)} non-empty caption(s); expected at least 2 "
                               "(its first caption queries the others)")
        query.append(caps[0])
        gallery += caps[1:]
        gallery_groups += [name] * (len(caps) - 1)
    return _checked(RetrievalTexts(query, gallery, list(names.values()), gallery_groups), path)


def load_newsgroups(path: Path, split: str, descriptions: dict[str, str] | None = None) -> RetrievalTexts:
    """20 Newsgroups "bydate" (`<path>/20news-bydate-<split>/<newsgroup>/<doc id>`): one description per newsgroup
    queries that group's header-less posts. `descriptions` default to NEWSGROUP_DESCRIPTIONS (this project's own)."""
    folder = path / f"20news-bydate-{split}"
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found; expected the bydate release's 20news-bydate-{split}/ folder (split "
                           f"'test' or 'train') under {path}")
    groups = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not groups:
        raise DatasetError(f"{folder} holds no newsgroup folder; expected one per newsgroup, e.g. sci.space/")
    known = NEWSGROUP_DESCRIPTIONS if descriptions is None else descriptions
    missing = [g for g in groups if g not in known]
    if missing:
        source = "NEWSGROUP_DESCRIPTIONS" if descriptions is None else "the given descriptions"
        raise DatasetError(f"{folder}: no description for newsgroup folder(s) {missing}; expected one query "
                           f"description per newsgroup folder ({source} cover {sorted(known)})")
    gallery: list[str] = []
    gallery_groups: list[str] = []
    empty = 0
    for group in groups:
        for doc in sorted((folder / group).iterdir(), key=lambda p: _numeric(p.name)):
            if not doc.is_file():
                continue
            if body := _body(doc.read_text(encoding="latin-1")):
                gallery.append(body)
                gallery_groups.append(group)
            else:
                empty += 1
    if empty:
        logger.info("%s: skipped %d document(s) with an empty body", folder, empty)
    return _checked(RetrievalTexts([known[g] for g in groups], gallery, groups, gallery_groups), folder)


def load_imdb(path: Path) -> RetrievalTexts:
    """aclImdb (`<path>/{train,test}/{pos,neg}/<id>_<rating>.txt`, `unsup/` not read): two sentiment queries against
    all 50k labelled reviews, ordered by (split, sentiment, id) so that runs agree."""
    gallery: list[str] = []
    gallery_groups: list[str] = []
    for split in ("test", "train"):
        for sentiment in ("neg", "pos"):
            folder = path / split / sentiment
            if not folder.is_dir():
                raise DatasetError(f"{folder} not found; expected aclImdb's {split}/{sentiment}/ folder of "
                                   "<id>_<rating>.txt reviews")
            for review in sorted(folder.glob("*.txt"), key=_imdb_id):
                try:
                    text = review.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{review}: not utf-8 text ({e})") from e
                gallery.append(_BR.sub(" ", text).strip())
                gallery_groups.append(sentiment)
    return _checked(RetrievalTexts(list(IMDB_QUERIES.values()), gallery, list(IMDB_QUERIES), gallery_groups), path)


def load_nanobeir(path: Path, summaries: dict[str, str] | None = None) -> RetrievalTexts:
    """One NanoBEIR set as on the Hugging Face hub (`<path>/{corpus,queries,qrels}/*.parquet`): the queries with qrels
    against the whole corpus, relevance from qrels (the groups are ids, for reference only). `summaries` ({corpus
    _id: text}, the paper's LLM summaries) replace the corpus texts, every document's."""
    corpus = _parquets(path / "corpus", ("_id", "text"))
    queries = _parquets(path / "queries", ("_id", "text"))
    qrels = _parquets(path / "qrels", ("query-id", "corpus-id"))
    if "score" in qrels.columns:
        qrels = qrels.filter(pl.col("score") > 0)
    doc_ids = [str(d) for d in corpus["_id"].to_list()]
    docs = [str(t or "") for t in corpus["text"].to_list()]
    if "title" in corpus.columns:  # BEIR's optional title column, often empty
        titles = corpus["title"].to_list()
        docs = [f"{title}. {text}" if title else text for title, text in zip(titles, docs, strict=True)]
    if summaries is not None:
        missing = [d for d in doc_ids if d not in summaries]
        if missing:
            raise DatasetError(f"{path / 'corpus'}: {len(missing)} document(s) without a summary, first {missing[:5]}; "
                               "expected the summaries of this set's whole corpus")
        docs = [str(summaries[d]) for d in doc_ids]
    index = {d: i for i, d in enumerate(doc_ids)}
    if len(index) != len(doc_ids):
        raise DatasetError(f"{path / 'corpus'}: duplicate _id values; expected one row per document")
    query_ids = [str(q) for q in queries["_id"].to_list()]
    relevant: dict[str, set[int]] = {}
    pairs = zip(qrels["query-id"].cast(pl.Utf8).to_list(), qrels["corpus-id"].cast(pl.Utf8).to_list(), strict=True)
    for q, d in pairs:
        if d not in index:
            raise DatasetError(f"{path / 'qrels'}: qrel ({q!r}, {d!r}) names a corpus-id not in {path / 'corpus'}")
        relevant.setdefault(q, set()).add(index[d])
    unknown = sorted(set(relevant) - set(query_ids))
    if unknown:
        raise DatasetError(f"{path / 'qrels'}: query-id(s) {unknown[:5]} not in {path / 'queries'}")
    keep = [i for i, q in enumerate(query_ids) if q in relevant]
    if dropped := len(query_ids) - len(keep):
        logger.info("%s: dropped %d query(ies) without a qrel", path / "queries", dropped)
    query_texts = [str(t or "") for t in queries["text"].to_list()]
    return _checked(RetrievalTexts([query_texts[i] for i in keep], docs, [query_ids[i] for i in keep], doc_ids,
                                   [sorted(relevant[query_ids[i]]) for i in keep]), path)


def _checked(texts: RetrievalTexts, source: Path) -> RetrievalTexts:
    """`texts` when both sides are non-empty and every query has a relevant gallery text (recall needs one)."""
    if not texts.query or not texts.gallery:
        raise DatasetError(f"{source}: {len(texts.query)} queries and {len(texts.gallery)} gallery texts; expected "
                           "at least one of each")
    if texts.relevant is None:
        present = set(texts.gallery_groups)
        lonely = [g for g in texts.query_groups if g not in present]
    else:
        lonely = [g for g, r in zip(texts.query_groups, texts.relevant, strict=True) if not r]
    if lonely:
        raise DatasetError(f"{source}: query group(s) {lonely[:5]} have no relevant gallery text; expected one or more")
    return texts


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path} not found; expected a COCO-style caption json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid json ({e})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level is {type(data).__name__}; expected an object with images, annotations")
    return data


def _parquets(folder: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    """All `*.parquet` of a NanoBEIR sub-folder, concatenated in file-name order."""
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise DatasetError(f"{folder}: no *.parquet file; expected e.g. {folder.name}/train-00000-of-00001.parquet")
    try:
        df = pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed")
    except (pl.exceptions.PolarsError, OSError) as e:
        raise DatasetError(f"{folder}: unreadable parquet ({e})") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{folder}: parquet lacks column(s) {missing}; expected {list(columns)}")
    return df


def _body(post: str) -> str:
    """A post without its header block (the lines before the first empty one), whitespace collapsed."""
    lines = post.splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if not line.strip()), len(lines))
    return " ".join(" ".join(lines[start:]).split())


def _numeric(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (-1, name)


def _imdb_id(review: Path) -> int:
    match = _IMDB_NAME.fullmatch(review.name)
    if not match:
        raise DatasetError(f"{review}: unexpected file name; expected <id>_<rating>.txt")
    return int(match.group(1))
