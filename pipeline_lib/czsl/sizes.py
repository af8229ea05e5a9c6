"""Published sizes of the standard CZSL benchmarks (spec 1.3), checked when a dataset is first loaded."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExpectedSizes:
    """Published sizes of a benchmark (spec 1.3); checked on first load so a wrong download fails loudly."""

    n_attrs: int
    n_objs: int
    train_pairs: int
    train_images: int
    val_pairs: tuple[int, int]  # (seen, unseen)
    val_images: int
    test_pairs: tuple[int, int]  # (seen, unseen)
    test_images: int
    val_pairs_unordered: bool = False  # C-GQA: the published val seen/unseen counts are swapped (czsl issue #36)


# Spec 1.3. Dataset names are the folder names of the standard release.
EXPECTED_SIZES: dict[str, ExpectedSizes] = {
    "mit-states": ExpectedSizes(115, 245, 1262, 30338, (300, 300), 10420, (400, 400), 12995),
    "ut-zappos": ExpectedSizes(16, 12, 83, 22998, (15, 15), 3214, (18, 18), 2914),
    "cgqa": ExpectedSizes(413, 674, 5592, 26920, (1252, 1040), 7280, (888, 923), 5098, val_pairs_unordered=True),
}
