"""The czsl stage: ablation rows end to end (frozen and LoRA modes), outputs of `run_czsl`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import REPO, stage_context
from czsl_model_fixtures import make_bench

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.data import load_czsl_dataset
from pipeline_lib.czsl.experiment import Backend, run_experiment
from pipeline_lib.czsl.model import get_variant, list_variants
from pipeline_lib.czsl.stage import STORE, run_czsl
from pipeline_lib.czsl.train import SplitData, build_model
from pipeline_lib.czsl.worlds import WorldEval, pair_tensor
from pipeline_lib.engine.config import Config, load_config

SMOKE = load_config(REPO, "smoke").czsl.model_dump()  # the smoke profile's czsl section, as a user runs it


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return make_bench(tmp_path_factory.mktemp("czsl"))


def test_experiment_frozen_smoke_closed_and_open(bench):
    from pipeline_lib.czsl.feasibility import backbone_word_embedder, dataset_feasibility

    ow = load_czsl_dataset(bench.root, "open")
    feas = dataset_feasibility(ow.attrs, ow.objs, ow.train_pairs,
                               fallback=backbone_word_embedder(bench.clip, bench.tok))
    worlds = {"closed": WorldEval("closed", bench.ds, pair_tensor(bench.ds, bench.ds.pairs)),
              "open": WorldEval("open", ow, pair_tensor(ow, ow.pairs), feas)}
    cfg = CzslConfig(**{**SMOKE, "stream_seeds": [0, 1]})
    res = run_experiment(cfg, Backend(bench.clip, bench.tok), worlds, bench.splits, torch.device("cpu")).results
    assert list(res["rows"]) == list_variants()
    for name, row in res["rows"].items():
        for w in ("closed", "open"):
            assert 0.0 <= row[w]["auc"] <= 1.0 and 0.0 <= row[w]["hm"] <= 1.0, (name, w)
        assert row["gap"]["rmg"] > 0
    assert res["rows"]["+kl"]["open"]["threshold"] is not None and res["rows"]["+kl"]["closed"]["threshold"] is None
    dyn = res["bank"]["+dynamic_closed"]
    assert [r["seed"] for r in dyn["per_seed"]] == [0, 1]
    assert sum(dyn["per_seed"][0]["events"].values()) == len(bench.splits["test"])
    assert res["bank"]["+bank_seen_closed"]["per_seed"][0]["events"]["insert"] == 0  # static: never updated


def _write_store(path: Path, bench, clip) -> None:
    from pipeline_lib.czsl.train import encoder_tokens

    root = zarr.open_group(str(path), mode="w")
    for s in ("train", "val", "test"):
        df = bench.ds.split(s)
        images = torch.stack([torch.from_numpy(np.asarray(__import__("PIL.Image").Image.open(p).convert("RGB"),
                                                          dtype=np.float32) / 255).permute(2, 0, 1)
                              for p in df["path"].to_list()])
        with torch.no_grad():
            tok = encoder_tokens(clip, images)
        g = root.create_group(s)
        g.create_array("tokens", data=tok.numpy())
        g.create_array("image", data=clip.encode_image(images).detach().numpy())
        for col, name in (("attr_idx", "attr"), ("obj_idx", "obj"), ("world_pair_idx", "pair")):
            g.create_array(name, data=df[col].to_numpy())


def test_run_czsl_stage_writes_outputs(bench, tmp_path):
    from pipeline_lib.backbone.load import create_backbone, save_published_backbone

    cfg = CzslConfig(**{**SMOKE, "worlds": ["closed"]})
    ctx = stage_context(tmp_path / "repo", "czsl", Config(czsl=cfg), tmp_path / "work", czsl_dataset="shapes")
    bb = create_backbone("bf-tiny-vit-32")
    save_published_backbone(bb, ctx.input("backbone"), save_weights=True)
    data = ctx.input("data") / "czsl" / "shapes"
    data.parent.mkdir(parents=True)
    data.symlink_to(bench.root)
    ctx.input("features_czsl").mkdir(parents=True)
    _write_store(ctx.input("features_czsl") / STORE, bench, bb.model)

    summary = run_czsl(ctx)
    assert summary["worlds"] == ["closed"] and list(summary["rows"]) == list_variants()
    metrics = json.loads(ctx.metrics().read_text())
    assert metrics["+dynamic"]["closed"] == {k: summary["rows"]["+dynamic"]["closed"][k] for k in
                                             ("auc", "hm", "seen", "unseen")}  # the standard table, no more
    with open(ctx.plot("czsl_loss")) as f:
        loss = list(csv.DictReader(f))
    assert {r["variant"] for r in loss} == {"baseline", "+sa", "+vac", "+kl"}
    with open(ctx.plot("czsl_curve")) as f:
        assert {r["row"] for r in csv.DictReader(f)} == set(list_variants())
    assert summary["seeds"] == len(cfg.seeds) == 2
    results = json.loads((ctx.output() / "results.json").read_text())
    per_seed = results["per_seed"]
    assert results["global_token"] == ("class token" if bb.model.visual.pool_type == "tok" else "patch mean")
    assert list(per_seed) == ["0", "1"] and per_seed["0"]["baseline"]["closed"]["auc"] >= 0
    mean = np.mean([per_seed[s]["+sa"]["closed"]["auc"] for s in per_seed])
    assert metrics["+sa"]["closed"]["auc"] == round(float(mean), 4)
    seed0 = ctx.output() / "seed0"
    assert (seed0 / "results.json").is_file() and (seed0 / "head_kl.pt").is_file()
    assert set(np.load(seed0 / "test_scores.npz")) == {f"{r.strip('+')}_closed" for r in list_variants()}

    # a killed run resumes: finished seeds are read back, the missing one is trained again, results unchanged
    stamp = (seed0 / "head_kl.pt").stat().st_mtime_ns
    shutil.rmtree(ctx.output() / "seed1")
    assert run_czsl(ctx)["rows"] == summary["rows"]
    assert (seed0 / "head_kl.pt").stat().st_mtime_ns == stamp and (ctx.output() / "seed1" / "results.json").is_file()


def test_lora_mode_smoke(bench):
    cfg = CzslConfig(**{**SMOKE, "mode": "lora", "epochs": 1, "worlds": ["closed"]})
    worlds = {"closed": WorldEval("closed", bench.ds, pair_tensor(bench.ds, bench.ds.pairs))}
    splits = {s: SplitData(attr=d.attr, obj=d.obj, label=d.label, paths=d.paths) for s, d in bench.splits.items()}

    def preprocess(img):
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)

    res = run_experiment(cfg, Backend(bench.clip, bench.tok, preprocess), worlds, splits, torch.device("cpu")).results
    row = res["rows"]["+kl"]
    lora_params = 3 * 4 * 2 * 2 * 96  # blocks x targets x (A, B) x rank x width
    head = build_model(cfg, get_variant("+kl"), bench.clip, bench.tok, bench.ds.attrs, bench.ds.objs, 128,
                       torch.device("cpu"))
    assert row["trainable_params"] == sum(p.numel() for p in head.parameters()) + lora_params
    assert 0.0 <= row["closed"]["auc"] <= 1.0
    assert all(p.requires_grad is False for p in bench.clip.parameters())  # the shared backbone is untouched
