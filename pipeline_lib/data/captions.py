"""Text for the shapes world: pretraining captions, paraphrase groups, class prompts and the CZSL name cleanup.

Captions are drawn per training step from an image's labels, so the text tower sees several phrasings of every
meaning. Every template mentions all four captioned factors (shape, colour, pattern, size): a caption that left one
out would teach the model that factor does not matter. Templates stay short (at most 14 BPE tokens with the longest
words), because the tiny text tower's context is 16 tokens including start and end.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np

# Synonyms per factor value. Shape and colour words are the label itself (the class names the prompts use); size and
# pattern have paraphrases, so the same meaning has several surface forms.
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little"),
    "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
PATTERN_ADJECTIVES: dict[str, tuple[str, ...]] = {
    "solid": ("solid", "plain"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
}
PATTERN_PHRASES: dict[str, tuple[str, ...]] = {
    "solid": ("with no pattern", "in a plain fill"),
    "striped": ("with stripes", "with dark stripes"),
    "dotted": ("with dots", "with polka dots"),
}

# Pretraining caption templates. Slots: {size} {colour} {pattern} (adjective) {pattern_phrase} {shape}.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a photo of a {size} {colour} {pattern} {shape}",
    "a {size} {colour} {shape} {pattern_phrase}",
    "a {colour} {pattern} {shape}, {size}",
    "a {size} {pattern} {shape} coloured {colour}",
    "a {colour} {shape} that is {size} and {pattern}",
    "a picture of a {size} {shape}, {colour} and {pattern}",
    "{size} {colour} {shape} {pattern_phrase}",
)

# Shorter captions (shape plus at most one other factor), for callers that want some captions to match the plain
# class prompts ("a photo of a {}.") more closely. Used only when `caption(..., partial_prob > 0)`.
PARTIAL_TEMPLATES: tuple[str, ...] = (
    "a photo of a {shape}",
    "a photo of a {colour} {shape}",
    "a {pattern} {shape}",
    "a {size} {shape}",
)

# Few-shot class prompts (class = shape), CoOp style: the custom template first, then an ensemble built from the
# phrasings the pretraining captions use (a tiny text tower knows no other words).
CLASS_TEMPLATE = "a photo of a {}."
CLASS_TEMPLATES: tuple[str, ...] = (
    CLASS_TEMPLATE,
    "a photo of the large {}.",
    "a photo of the medium {}.",
    "a picture of a {}.",
    "an image of a {}.",
)

_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _fix_articles(text: str) -> str:
    """Turn "a orange" into "an orange" (every word in the vocabulary follows the vowel-letter rule)."""
    return _ARTICLE.sub("an ", text)


def _choose(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _words(labels: Mapping[str, str], rng: np.random.Generator) -> dict[str, str]:
    """One surface form per slot for these labels."""
    for factor in ("shape", "colour", "pattern", "size"):
        if factor not in labels:
            raise KeyError(f"caption labels {dict(labels)!r} lack {factor!r}; expected shape, colour, pattern, size")
    if labels["size"] not in SIZE_WORDS or labels["pattern"] not in PATTERN_ADJECTIVES:
        raise KeyError(
            f"no words for size={labels['size']!r} or pattern={labels['pattern']!r}; "
            f"known sizes {list(SIZE_WORDS)}, patterns {list(PATTERN_ADJECTIVES)}"
        )
    return {
        "shape": labels["shape"],
        "colour": labels["colour"],
        "size": _choose(rng, SIZE_WORDS[labels["size"]]),
        "pattern": _choose(rng, PATTERN_ADJECTIVES[labels["pattern"]]),
        "pattern_phrase": _choose(rng, PATTERN_PHRASES[labels["pattern"]]),
    }


def fill(template: str, words: Mapping[str, str]) -> str:
    """Fill one template with chosen words and fix the articles."""
    return _fix_articles(template.format(**words))


def caption(labels: Mapping[str, str], rng: np.random.Generator, partial_prob: float = 0.0) -> str:
    """One caption for an image's labels (shape, colour, pattern, size): random template, random synonyms."""
    templates = PARTIAL_TEMPLATES if partial_prob > 0 and rng.random() < partial_prob else CAPTION_TEMPLATES
    return fill(_choose(rng, templates), _words(labels, rng))


def captions(rows: Sequence[Mapping[str, str]], rng: np.random.Generator, partial_prob: float = 0.0) -> list[str]:
    """One caption per row of labels (e.g. the rows of a pretraining batch), drawn in row order."""
    return [caption(row, rng, partial_prob) for row in rows]


def all_captions(labels: Mapping[str, str]) -> list[str]:
    """Every distinct full caption of one meaning (all templates x all synonyms), in a fixed order."""
    shape, colour = labels["shape"], labels["colour"]
    out: dict[str, None] = {}
    for template, size, pattern, phrase in itertools.product(
        CAPTION_TEMPLATES,
        SIZE_WORDS[labels["size"]],
        PATTERN_ADJECTIVES[labels["pattern"]],
        PATTERN_PHRASES[labels["pattern"]],
    ):
        words = {"shape": shape, "colour": colour, "size": size, "pattern": pattern, "pattern_phrase": phrase}
        out[fill(template, words)] = None
    return list(out)


# Text-retrieval paraphrases differ in more than the template: other word orders and relational forms, and mentions of
# a distractor (another colour, or another colour and shape) that a bag-of-words reading confuses with the meaning.
# The mentions are appended, so a caption cut at the 16-token context loses the mention, never a captioned factor.
REORDERED_TEMPLATES: tuple[str, ...] = (
    "the {shape} is {colour}, {size} and {pattern}",
    "{pattern} and {colour}: a {size} {shape}",
    "{shape}, {colour}, {size}, {pattern}",
)
DISTRACTOR_CLAUSES: tuple[str, ...] = (" next to a small {other_colour} blob", " beside a {other_colour} {other_shape}")


def paraphrases(
    labels: Mapping[str, str],
    n: int,
    rng: np.random.Generator,
    vocab: Mapping[str, Sequence[str]] | None = None,
    reorder_prob: float = 0.0,
    distractor_prob: float = 0.0,
) -> list[str]:
    """n distinct captions of the same meaning (a text-retrieval paraphrase group).

    Each is a full pretraining caption, or with `reorder_prob` a reordered/relational form, followed with
    `distractor_prob` by a distractor mention drawn from the other values in `vocab` ({"colour": [...],
    "shape": [...]}).
    """
    pool = all_captions(labels)
    if n > len(pool):
        raise ValueError(f"asked for {n} paraphrases of {dict(labels)!r} but only {len(pool)} distinct ones exist")
    if reorder_prob == 0 and distractor_prob == 0:
        return [pool[int(i)] for i in rng.choice(len(pool), size=n, replace=False)]
    if vocab is None:
        raise ValueError("distractor mentions need the vocabulary of colours and shapes to draw the distractor from")
    other_colours = [c for c in vocab["colour"] if c != labels["colour"]] or [labels["colour"]]
    other_shapes = [s for s in vocab["shape"] if s != labels["shape"]] or [labels["shape"]]
    out: list[str] = []
    while len(out) < n:
        if rng.random() < reorder_prob:
            text = fill(_choose(rng, REORDERED_TEMPLATES), _words(labels, rng))
        else:
            text = _choose(rng, pool)
        if rng.random() < distractor_prob:
            clause = _choose(rng, DISTRACTOR_CLAUSES)
            text += _fix_articles(clause.format(other_colour=_choose(rng, other_colours),
                                                other_shape=_choose(rng, other_shapes)))
        if text not in out:
            out.append(text)
    return out


def class_prompts(classnames: Sequence[str], templates: Sequence[str] = CLASS_TEMPLATES) -> list[list[str]]:
    """Prompts per class: [[template.format(c) for template] for c], CoOp style."""
    return [[template.format(name) for template in templates] for name in classnames]


def factor_prompts(factor: str, value: str, vocab: Mapping[str, Sequence[str]]) -> list[str]:
    """Zero-shot prompts for one factor value, marginalising the other factors.

    The first caption template is filled with `value` for `factor` and every combination of the other factors'
    values from `vocab` ({"shape": [...], "colour": [...], "pattern": [...], "size": [...]}), using each value's first
    word. Averaging their embeddings gives a classifier for `factor` that no other factor biases.
    """
    factors = ("shape", "colour", "pattern", "size")
    if factor not in factors:
        raise ValueError(f"factor={factor!r}: expected one of {list(factors)}")
    others = [f for f in factors if f != factor]
    prompts = []
    for combo in itertools.product(*(vocab[f] for f in others)):
        labels = dict(zip(others, combo, strict=True)) | {factor: value}
        words = {
            "shape": labels["shape"],
            "colour": labels["colour"],
            "size": SIZE_WORDS[labels["size"]][0],
            "pattern": PATTERN_ADJECTIVES[labels["pattern"]][0],
            "pattern_phrase": PATTERN_PHRASES[labels["pattern"]][0],
        }
        prompts.append(fill(CAPTION_TEMPLATES[0], words))
    return prompts


def czsl_clean_name(name: str) -> str:
    """CZSL prompt text cleanup (czsl spec 1.2 step 6): '.' -> ' ', lower-case; underscores are kept."""
    return name.replace(".", " ").lower()
