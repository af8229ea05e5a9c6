"""Caption templates, paraphrase groups, class prompts and the CZSL name cleanup."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from pipeline_lib.data import captions as cap
from pipeline_lib.data.config import DataConfig

CFG = DataConfig()
LABELS = {"shape": "star", "colour": "orange", "pattern": "striped", "size": "large"}


def _mentions_all(text: str, labels: dict[str, str]) -> bool:
    words = set(re.findall(r"[a-z\-]+", text))
    return (
        labels["shape"] in words
        and labels["colour"] in words
        and any(w in text for w in cap.SIZE_WORDS[labels["size"]])
        and any(w in text for w in cap.PATTERN_ADJECTIVES[labels["pattern"]] + cap.PATTERN_PHRASES[labels["pattern"]])
    )


def test_every_template_mentions_every_factor_for_every_label_combination() -> None:
    assert len(cap.CAPTION_TEMPLATES) >= 5
    rng = np.random.default_rng(0)
    for shape, colour, pattern, size in itertools.product(CFG.shapes, CFG.colours, CFG.patterns, CFG.sizes):
        labels = {"shape": shape, "colour": colour, "pattern": pattern, "size": size}
        for template in cap.CAPTION_TEMPLATES:
            text = cap.fill(template, cap._words(labels, rng))
            assert _mentions_all(text, labels), text
            assert "{" not in text and "  " not in text


def test_captions_use_the_right_article_and_vary_with_the_rng() -> None:
    rng = np.random.default_rng(0)
    texts = {cap.caption(LABELS, rng) for _ in range(200)}
    assert len(texts) > 10
    assert not any(re.search(r"\ba orange\b", t) for t in texts)
    assert any("an orange" in t for t in texts)
    same = [cap.captions([LABELS] * 5, np.random.default_rng(3)) for _ in range(2)]
    assert same[0] == same[1]


def test_partial_captions_always_name_the_shape() -> None:
    rng = np.random.default_rng(1)
    texts = [cap.caption(LABELS, rng, partial_prob=1.0) for _ in range(50)]
    assert all("star" in t for t in texts)
    assert "a photo of a star" in texts


def test_captions_fit_the_tiny_text_context() -> None:
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.tokenizer.SimpleTokenizer()
    longest = 0
    for shape, colour, pattern, size in itertools.product(CFG.shapes, CFG.colours, CFG.patterns, CFG.sizes):
        for text in cap.all_captions({"shape": shape, "colour": colour, "pattern": pattern, "size": size}):
            longest = max(longest, len(tokenizer.encode(text)))
    assert longest <= 14  # + start and end tokens = the 16-token context of the default text tower


def test_paraphrases_are_distinct_and_errors_name_the_limit() -> None:
    group = cap.paraphrases(LABELS, 5, np.random.default_rng(0))
    assert len(set(group)) == 5 and all(_mentions_all(t, LABELS) for t in group)
    with pytest.raises(ValueError, match="distinct ones exist"):
        cap.paraphrases(LABELS, 10_000, np.random.default_rng(0))
    with pytest.raises(KeyError, match="lack 'size'"):
        cap.caption({"shape": "star", "colour": "red", "pattern": "solid"}, np.random.default_rng(0))


def test_retrieval_paraphrases_vary_beyond_the_templates() -> None:
    """Reordered forms and distractor mentions (other colour, other shape) appear; the meaning stays first."""
    vocab = {"colour": CFG.colours, "shape": CFG.shapes}
    rng = np.random.default_rng(0)
    texts = [t for _ in range(40) for t in cap.paraphrases(LABELS, 5, rng, vocab, 0.5, 0.6)]
    mentions = [t for t in texts if " next to a small " in t or " beside a" in t]
    reordered = [t for t in texts if t.startswith(("the ", LABELS["shape"] + ",")) or ": a " in t]
    assert 0.4 < len(mentions) / len(texts) < 0.8 and 0.3 < len(reordered) / len(texts) < 0.7
    for text in mentions:  # the distractor is never the meaning's own colour
        clause = text.split(" next to a small ")[-1] if " next to a small " in text else text.split(" beside a")[-1]
        assert LABELS["colour"] not in clause.split()
    with pytest.raises(ValueError, match="vocabulary"):
        cap.paraphrases(LABELS, 2, rng, None, 0.0, 0.5)


def test_class_and_factor_prompts() -> None:
    prompts = cap.class_prompts(["circle", "star"])
    assert prompts[0][0] == "a photo of a circle." and len(prompts[1]) == len(cap.CLASS_TEMPLATES)
    vocab = {"shape": CFG.shapes, "colour": CFG.colours, "pattern": CFG.patterns, "size": CFG.sizes}
    red = cap.factor_prompts("colour", "red", vocab)
    assert len(red) == len(CFG.shapes) * len(CFG.patterns) * len(CFG.sizes)
    assert all(" red " in p for p in red) and len(set(red)) == len(red)
    with pytest.raises(ValueError, match="factor='texture'"):
        cap.factor_prompts("texture", "x", vocab)


def test_czsl_name_cleanup_follows_the_reference_rule() -> None:
    assert cap.czsl_clean_name("Shoes.Flats") == "shoes flats"
    assert cap.czsl_clean_name("Faux.Fur") == "faux fur"
    assert cap.czsl_clean_name("traffic_light") == "traffic_light"
