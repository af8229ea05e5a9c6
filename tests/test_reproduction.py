"""Published numbers as data: the CSV parses and matches the quoted text; measured rows compare, convert and render."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.sizes import EXPECTED_SIZES
from pipeline_lib.features.prompts import DATASET_PROMPTS
from pipeline_lib.reproduction.compare import SCHEMA, MeasuredRow, compare, render_html, render_text, within_spread
from pipeline_lib.reproduction.measured import RunIdentity, measured_rows, run_identity
from pipeline_lib.reproduction.published import (
    AGGREGATE_DATASETS,
    COLUMNS,
    DATASET_ALIASES,
    METHOD_ALIASES,
    METRICS,
    PAPERS,
    PERCENT_SCALE,
    PublishedDataError,
    PublishedTable,
    backbone_id,
    convert,
    dataset_id,
    load_published,
    read_published,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / ".." / "shared"
PUBLISHED_MD = SHARED / "reference" / "published_results.md"
SEMOBRIDGE_MD = SHARED / "specs" / "semobridge.md"
TINY_RUN = RunIdentity("bf-tiny-vit-32")


@pytest.fixture(scope="module")
def table() -> PublishedTable:
    return load_published()


def _read_or_skip(path: Path) -> str:
    if not path.is_file():
        pytest.skip(f"{path} is not beside the repository")
    return path.read_text(encoding="utf-8")


def _md_tables(text: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows of stripped cells, header first, the |---| line dropped."""
    tables: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        line = line.strip()
        if line.startswith("|"):
            cells = [c.strip().strip("*").strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _table_with_header(text: str, first: str) -> list[list[list[str]]]:
    return [t for t in _md_tables(text) if t[0][0] == first]


def _cell(text: str) -> tuple[float, float | None]:
    value, _, spread = text.partition("±")
    return float(value.strip().strip("*")), float(spread.strip().strip("*")) if spread else None


# --------------------------------------------------------------------------------------------------- the data file


def test_every_row_parses_with_known_units_and_plausible_values(table: PublishedTable) -> None:
    assert len(table) >= 190, f"published.csv has only {len(table)} rows"
    for row in table.rows:
        spec = METRICS[row.metric]
        assert row.unit in spec.units, row
        assert row.paper in PAPERS and row.paper_ref, row
        for number in (row.value, row.low, row.high):
            if number is not None:
                assert spec.low <= row.in_points(number) <= spec.high, row
        assert (row.value is None) == (row.low is not None and row.high is not None), row
        assert row.spread is None or (row.value is not None and row.spread >= 0), row
        assert dataset_id(row.dataset) == row.dataset, f"{row.dataset!r} is not one of our ids"
        if row.task == "fewshot":
            assert row.dataset in DATASET_PROMPTS or row.dataset in AGGREGATE_DATASETS, row
        if row.task == "czsl":
            assert row.dataset in EXPECTED_SIZES or row.dataset in AGGREGATE_DATASETS, row
    assert len({r.key for r in table.rows}) == len(table)


def test_czsl_rows_use_our_ablation_row_names(table: PublishedTable) -> None:
    ours = set(CzslConfig().rows)
    for row in table.rows:
        if row.paper == "sam_czsl" and row.method not in ("troika", "logiczsl", "cluspro"):
            assert set(row.method.split("-minus-")) <= ours, f"{row.method!r} is not one of {sorted(ours)}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"unit": "fraction", "metric": "rmg"}, "unit"),
        ({"value": "101"}, "outside"),
        ({"value": "50", "low": "1", "high": "2"}, "not both"),
        ({"value": "", "low": "3", "high": "2"}, "low=3.0 > high=2.0"),
        ({"spread": "-0.1"}, "spread"),
        ({"task": "classification"}, "task"),
        ({"dataset": "Caltech101"}, "write our id 'caltech-101'"),
        ({"value": "abc"}, "not a number"),
    ],
)
def test_bad_rows_are_rejected_with_the_rule(tmp_path: Path, change: dict[str, str], message: str) -> None:
    good = dict(
        paper="semobridge",
        task="fewshot",
        backbone="ViT-B/16",
        dataset="caltech-101",
        method="semobridge_t",
        setting="16",
        metric="accuracy",
        value="96.26",
        unit="points",
        spread="",
        low="",
        high="",
        quality="exact",
        source="test",
        note="",
    )
    path = tmp_path / "p.csv"
    path.write_text(",".join(COLUMNS) + "\n" + ",".join({**good, **change}[c] for c in COLUMNS) + "\n")
    with pytest.raises(PublishedDataError, match=re.escape(message)):
        read_published(path)


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    line = "semobridge,fewshot,ViT-B/16,dtd,semobridge_t,16,accuracy,73.01,points,,,,exact,test,"
    path = tmp_path / "p.csv"
    path.write_text(",".join(COLUMNS) + "\n" + line + "\n" + line + "\n")
    with pytest.raises(PublishedDataError, match="duplicate published key"):
        read_published(path)


# ------------------------------------------------------------------------------------- the data equals the quotes


def test_sam_czsl_tables_equal_published_results_md(table: PublishedTable) -> None:
    text = _read_or_skip(PUBLISHED_MD)
    (main,) = _table_with_header(text, "method")
    datasets = [DATASET_ALIASES[d] for d in main[0][1:]]
    for label, *cells in main[1:]:
        for dataset, cell in zip(datasets, cells, strict=True):
            hm, auc = (float(x) for x in cell.split("/"))
            for metric, quoted in (("hm", hm), ("auc", auc)):
                row = table.lookup("czsl", dataset, "ViT-L/14", METHOD_ALIASES[label], "closed", metric)
                assert row is not None and row.value == quoted, (label, dataset, metric, row)
    (ablation,) = _table_with_header(text, "configuration")
    assert [DATASET_ALIASES[d] for d in ablation[0][1:]] == datasets
    for label, *cells in ablation[1:]:
        for dataset, cell in zip(datasets, cells, strict=True):
            row = table.lookup("czsl", dataset, "ViT-L/14", METHOD_ALIASES[label], "closed", "auc")
            assert row is not None and row.value == float(cell), (label, dataset, row)


def test_sentences_of_published_results_md(table: PublishedTable) -> None:
    text = " ".join(_read_or_skip(PUBLISHED_MD).split())
    zs, imnet = re.search(r"CLIP zero-shot average \(([\d.]+); ImageNet ([\d.]+)\)", text).groups()
    assert table.lookup("fewshot", "coop11_mean", "ViT-B/16", "zero_shot", "0", "accuracy").value == float(zs)
    assert table.lookup("fewshot", "ImageNet", "ViT-B/16", "zero_shot", "0", "accuracy").value == float(imnet)
    lo, hi = re.search(r"average \+([\d.]+) to \+([\d.]+) points from 1 to 16 shots", text).groups()
    row = table.lookup(
        "fewshot", "coop11_mean", "ViT-B/16", "semobridge_t-minus-semobridge_all", "1-16", "accuracy_diff"
    )
    assert (row.low, row.high) == (float(lo), float(hi))
    toy = re.search(r"image→image retrieval reaches only about (\d+)% mAP", text).group(1)
    assert table.lookup(
        "image_retrieval", "dog_cat_aligned", "unspecified", "image_to_image", "-", "map"
    ).value == float(toy)
    lo, hi = re.search(r"improves mAP by about (\d+)–(\d+) points", text).groups()
    for task, method in (
        ("image_retrieval", "oti_to_image-minus-image_to_image"),
        ("text_retrieval", "ovi_to_text-minus-text_to_text"),
    ):
        row = table.lookup(task, "paper_mean", "several", method, "-", "map_diff")
        assert (row.low, row.high) == (float(lo), float(hi))
    oti, ovi = re.search(r"about ([\d.]+) s per image for OTI and ([\d.]+) s per text for OVI", text).groups()
    assert table.lookup(
        "image_retrieval", "-", "unspecified", "oti_to_image", "A100;batch=2048", "seconds_per_query"
    ).value == float(oti)
    assert table.lookup(
        "text_retrieval", "-", "unspecified", "ovi_to_text", "A100;batch=2048", "seconds_per_query"
    ).value == float(ovi)
    base, sa, vac = re.search(r"from ([\d.]+) \(baseline\) to ([\d.]+) \(\+SA\) to ([\d.]+) \(\+VAC\)", text).groups()
    for method, quoted in (("baseline", base), ("+sa", sa), ("+kl", vac)):
        assert table.lookup("czsl", "UT-Zappos", "ViT-L/14", method, "closed", "rmg").value == float(quoted)
    assert re.search(r"AUC from 14\.3 to ([\d.]+)", text).group(1) == "14.7"
    assert table.lookup("czsl", "C-GQA", "ViT-L/14", "baseline", "closed;patch_dropout=moderate", "auc").value == 14.7
    lo, hi = re.search(r"about \+([\d.]+) to \+([\d.]+) AUC over the seen-only bank", text).groups()
    row = table.lookup("czsl", "czsl3", "ViT-L/14", "+dynamic-minus-+bank_seen", "closed", "auc_diff")
    assert (row.low, row.high) == (float(lo), float(hi))


def test_semobridge_tables_equal_the_spec(table: PublishedTable) -> None:
    text = _read_or_skip(SEMOBRIDGE_MD)
    vit_b16, rn50 = _table_with_header(text, "method")
    for md, backbone in ((vit_b16, "ViT-B/16"), (rn50, "RN50")):
        shots = md[0][1:]
        for label, *cells in md[1:]:
            for k, cell in zip(shots, cells, strict=True):
                row = table.lookup("fewshot", "coop11_mean", backbone, METHOD_ALIASES[label], k, "accuracy")
                assert row is not None and row.value == _cell(cell)[0], (backbone, label, k, row)
    (imagenet,) = _table_with_header(text, "shots")
    for label, *cells in imagenet[1:]:
        for k, cell in zip(imagenet[0][1:], cells, strict=True):
            row = table.lookup("fewshot", "imagenet", "ViT-B/16", METHOD_ALIASES[label], k, "accuracy")
            assert row is not None and (row.value, row.spread) == _cell(cell), (label, k, row)
    (prompts,) = _table_with_header(text, "prompt set")
    for label, *cells in prompts[1:]:
        for k, cell in zip(prompts[0][1:], cells, strict=True):
            row = table.lookup("fewshot", "coop11_mean", "ViT-B/16", "semobridge_t", f"{k};texts={label}", "accuracy")
            assert row is not None and row.value == float(cell), (label, k, row)
    per_dataset = re.findall(r"^\s*- (\w+) ([\d.]+) / ([\d.]+)$", text, flags=re.M)
    assert len(per_dataset) == 10
    for name, t, tf in per_dataset:
        for method, quoted in (("semobridge_t", t), ("semobridge_all", tf)):
            assert table.lookup("fewshot", name, "ViT-B/16", method, "16", "accuracy").value == float(quoted), name
    one_shot = re.search(r"1-shot per dataset, -T: (.*?)\.\n", text, flags=re.S).group(1)
    quoted = re.findall(r"(\w+) ([\d.]+)(?: ± ([\d.]+))?", " ".join(one_shot.split()))
    assert len(quoted) == 10
    for name, value, spread in quoted:
        row = table.lookup("fewshot", name, "ViT-B/16", "semobridge_t", "1", "accuracy")
        assert (row.value, row.spread) == (float(value), float(spread) if spread else None), name


# ------------------------------------------------------------------------------------------------- names and units


def test_names_map_to_our_ids() -> None:
    assert backbone_id("ViT-B-16", "openai") == "ViT-B/16"
    assert backbone_id("ViT-L-14-quickgelu", "openai") == "ViT-L/14"
    assert backbone_id("RN50", "/weights/rn50.pt") == "RN50"
    assert backbone_id("ViT-B-16", "laion2b_s34b_b88k") == "ViT-B/16 (laion2b_s34b_b88k)"
    assert backbone_id("ViT-B-16", None) == "ViT-B/16 (random init)"
    assert backbone_id("bf-tiny-vit-32", None) == "bf-tiny-vit-32"
    for name, ours in (
        ("Caltech101", "caltech-101"),
        ("caltech101", "caltech-101"),
        ("Pets", "oxford_pets"),
        ("OxfordPets", "oxford_pets"),
        ("MIT_States", "mit-states"),
        ("C-GQA", "cgqa"),
        ("UT-Zappos", "ut-zappos"),
        ("Shapes", "shapes"),
        ("coop11_mean", "coop11_mean"),
    ):
        assert dataset_id(name) == ours, name


def test_unit_conversion() -> None:
    assert convert(0.5, "fraction", "points") == 50.0
    assert convert(73.98, "points", "fraction") == pytest.approx(0.7398)
    assert convert(3.0, "s", "s") == 3.0
    assert set(PERCENT_SCALE) == {"points", "fraction"}
    with pytest.raises(ValueError, match="'ratio' to 'points'"):
        convert(0.1, "ratio", "points")


# ------------------------------------------------------------------------------------------------------ comparing


def test_a_matching_row_is_converted_to_the_papers_unit(table: PublishedTable) -> None:
    measured = [
        MeasuredRow("czsl", "ut-zappos", "ViT-L/14", "+dynamic", "closed", "auc", 0.4875, spread=0.01, n=5),
        MeasuredRow("czsl", "ut-zappos", "ViT-L/14", "+dynamic", "open", "auc", 0.2),  # no published open world
    ]
    df = compare(measured, table)
    assert df.schema == SCHEMA
    assert df.height == 1
    row = df.row(0, named=True)
    assert row["unit"] == "points" and row["measured"] == pytest.approx(48.75)
    assert row["measured_spread"] == pytest.approx(1.0) and row["measured_n"] == 5
    assert row["published"] == 50.0 and row["difference"] == pytest.approx(-1.25)
    assert row["within_spread"] is None  # the paper gives no ±
    assert row["source"].startswith("published_results.md SAM-CZSL main results")
    assert row["paper"] == PAPERS["sam_czsl"]


def test_within_spread_at_the_boundary(table: PublishedTable) -> None:
    imagenet16 = table.lookup("fewshot", "imagenet", "ViT-B/16", "semobridge_t", "16", "accuracy")
    assert (imagenet16.value, imagenet16.spread) == (73.98, 0.05)
    assert within_spread(74.03, imagenet16) is True  # 74.03 - 73.98 is 0.05000000000000426 in binary
    assert within_spread(73.93, imagenet16) is True
    assert within_spread(74.0301, imagenet16) is False
    assert within_spread(73.9299, imagenet16) is False
    claim = table.lookup(
        "fewshot", "coop11_mean", "ViT-B/16", "semobridge_t-minus-semobridge_all", "1-16", "accuracy_diff"
    )
    assert [within_spread(x, claim) for x in (1.8, 4.1, 1.7999, 4.1001)] == [True, True, False, False]
    no_spread = table.lookup("fewshot", "imagenet", "ViT-B/16", "semobridge_t", "8", "accuracy")
    assert within_spread(73.07, no_spread) is None
    df = compare([MeasuredRow("fewshot", "ImageNet", "ViT-B/16", "semobridge_t", "16", "accuracy", 74.03)], table)
    assert df["within_spread"].to_list() == [True]


def test_duplicate_measured_keys_are_rejected(table: PublishedTable) -> None:
    row = MeasuredRow("fewshot", "dtd", "ViT-B/16", "semobridge_t", "16", "accuracy", 70.0)
    with pytest.raises(ValueError, match="given twice"):
        compare([row, row], table)


def test_no_match_says_so_and_lists_what_exists(table: PublishedTable) -> None:
    measured = measured_rows(TINY_RUN, fewshot=FEWSHOT, czsl=[CZSL], retrieval=RETRIEVAL)
    assert measured, "the metrics fixtures gave no measured rows"
    df = compare(measured, table)
    assert df.is_empty() and df.schema == SCHEMA
    lines = render_text(measured, table)
    text = "\n".join(lines)
    assert " ".join(text.split()).startswith(
        "No published numbers exist for the datasets/backbone of this run (bf-tiny-vit-32: "
    )
    assert "shapes-captions" in text
    assert "ViT-B/16: caltech-101, coop11_mean" in text and "ViT-L/14: cgqa" in text
    assert max(map(len, lines)) <= 100
    fragment = render_html(measured, table)
    assert fragment.startswith('<p class="reproduction-empty">No published numbers exist') and "<table" not in fragment


def test_text_fits_100_columns_and_html_has_every_row(table: PublishedTable) -> None:
    measured = [r for r in table.rows if r.value is not None][:60] + [r for r in table.rows if r.value is None]
    rows = [
        MeasuredRow(
            r.task,
            r.dataset,
            r.backbone,
            r.method,
            r.setting,
            r.metric,
            r.value if r.value is not None else r.low,
            unit=r.unit,
        )
        for r in measured
    ]
    lines = render_text(rows, table)
    assert max(map(len, lines)) <= 100
    assert any("73.98 ± 0.05" in line for line in lines)
    fragment = render_html(rows, table)
    assert fragment.count("<tr>") == len(rows) + 1
    assert "+dynamic-minus-+bank_seen" in fragment and 'class="within-yes"' in fragment
    with pytest.raises(ValueError, match="at least"):
        render_text(rows, table, width=60)


# ----------------------------------------------------------------------------------- our metrics -> measured rows

FEWSHOT = {"datasets": {"imnet": {
    "prompts": "ImageNet",
    "bridge": {"atol": 0.3, "sv_median": 0.8, "sv_max": 1.9, "n_dropped": 24, "n_singular_values": 128},
    "test_acc": {
        "zero_shot": {"1": {"mean": 60.1, "n": 5, "std": 0.0}, "16": {"mean": 60.1, "n": 5, "std": 0.0}},
        "semobridge_t": {"1": {"mean": 61.0, "n": 5, "std": 1.1}, "16": {"mean": 74.0, "n": 5, "std": 0.05}},
    },
}}}
CZSL = {
    "dataset": "shapes",
    "seeds": 5,
    "rows": {"+dynamic": {"closed": {"auc": 0.5, "hm": 0.62}, "open": {"auc": 0.1}, "rmg": 0.84}},
}
#: (dataset id, retrieval table) of an OTI instance and an OVI instance
RETRIEVAL = [
    ("imagenet", {"image": {
        "image_to_image": {"map": 0.38, "n_queries": 900},
        "oti_to_image": {"map": 0.40, "n_queries": 900},
        "oti_to_image_selected": {"map": 0.41},
        "map_gain": 0.02,
    }}),
    ("shapes-captions", {"text": {
        "text_to_text": {"map": 0.60, "n_queries": 64},
        "ovi_to_text": {"map": 0.58, "n_queries": 64},
        "map_gain": -0.02,
    }}),
]


def test_metrics_files_map_to_measured_rows() -> None:
    run = run_identity({"backbone": {"model": "ViT-L-14", "pretrained": "openai"}})
    assert run == RunIdentity("ViT-L/14")
    czsl = [{**CZSL, "dataset": "UT-Zappos"}, {**CZSL, "dataset": "mit_states"}]  # one summary per CZSL dataset
    rows = {r.key: r for r in measured_rows(run, fewshot=FEWSHOT, czsl=czsl, retrieval=RETRIEVAL)}
    zs = rows[("fewshot", "imagenet", "ViT-L/14", "zero_shot", "0", "accuracy")]
    assert (zs.value, zs.unit, zs.n) == (60.1, "points", 5)
    t16 = rows[("fewshot", "imagenet", "ViT-L/14", "semobridge_t", "16", "accuracy")]
    assert (t16.value, t16.spread) == (74.0, 0.05)
    assert rows[("fewshot", "-", "ViT-L/14", "bridge", "atol=0.3", "n_dropped")].value == 24
    auc = rows[("czsl", "ut-zappos", "ViT-L/14", "+dynamic", "closed", "auc")]
    assert (auc.value, auc.unit, auc.n) == (0.5, "fraction", 5)
    assert ("czsl", "ut-zappos", "ViT-L/14", "+dynamic", "open", "auc") in rows
    assert rows[("czsl", "ut-zappos", "ViT-L/14", "+dynamic", "closed", "rmg")].unit == "ratio"
    assert ("czsl", "mit-states", "ViT-L/14", "+dynamic", "closed", "auc") in rows
    assert rows[("image_retrieval", "imagenet", "ViT-L/14", "oti_to_image", "-", "map")].n == 900
    gain = rows[("text_retrieval", "shapes-captions", "ViT-L/14", "ovi_to_text-minus-text_to_text", "-", "map_diff")]
    assert gain.value == -0.02
    assert not any("selected" in key[3] for key in rows)
    df = compare(rows.values())
    matched = {(r["dataset"], r["method"], r["metric"]): r for r in df.iter_rows(named=True)}
    assert matched[("ut-zappos", "+dynamic", "auc")]["measured"] == pytest.approx(50.0)
    assert matched[("ut-zappos", "+dynamic", "auc")]["difference"] == pytest.approx(0.0)
    assert matched[("ut-zappos", "+dynamic", "hm")]["difference"] == pytest.approx(0.0)
    assert matched[("mit-states", "+dynamic", "auc")]["difference"] == pytest.approx(50.0 - 24.0)  # paper: 24.0


def test_short_and_long_lines_are_rejected(tmp_path: Path) -> None:
    good = "semobridge,fewshot,ViT-B/16,dtd,semobridge_t,16,accuracy,73.01,points,,,,exact,test,"
    for line in (good.rsplit(",", 2)[0], good + ",extra"):
        path = tmp_path / "p.csv"
        path.write_text(",".join(COLUMNS) + "\n" + line + "\n")
        with pytest.raises(PublishedDataError, match="expected exactly 15 cells"):
            read_published(path)
