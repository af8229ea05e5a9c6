"""Paper suites end to end on replicas of the real datasets' layouts, through `bridgeflow run` and DVC, with a randomly
initialised real architecture: the SeMoBridge profile's 11 datasets (ImageNet folders, FGVC-Aircraft lists, nine CoOp
split files), the SAM-CZSL profile's three CZSL benchmarks (MIT-States, UT-Zappos, C-GQA, LoRA mode) and the
Cross-the-Gap profile's 11 image-retrieval datasets and two caption files (Karpathy's COCO and Flickr30k). Wiring and
caching are checked, never accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_project
from replicas import (
    CZSL,
    KARPATHY_IMAGES,
    write_cross_the_gap_datasets,
    write_sam_czsl_datasets,
    write_semobridge_datasets,
)

from pipeline_lib.engine.config import effective_params, load_config
from pipeline_lib.engine.stages import upstream_closure
from pipeline_lib.engine.summary import reproduction_lines

pytestmark = pytest.mark.slow  # Prefect runs over 47 and 8 stage instances, then DVC

BIN = Path(sys.executable).parent
#: The suite at smoke size: a small real architecture without weights, one sample, a handful of steps.
SMOKE = ("backbone.model=ViT-S-32", "backbone.pretrained=null", "fewshot.shots=[1]", "fewshot.seeds=[1]",
         "fewshot.search.n_trials=3", "fewshot.training.steps=3", "fewshot.training.warmup_steps=1",
         "features.batch_size=16")


def sh(cwd: Path, *args: str) -> str:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "CI": "true", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


#: The CZSL suite at smoke size: one seed, one epoch, one stream and bank setting.
CZSL_SMOKE = ("backbone.model=ViT-S-32", "backbone.pretrained=null", "czsl.seeds=[0]", "czsl.stream_seeds=[0]",
              "czsl.bank_alpha_grid=[1.0]", "czsl.bank_beta_grid=[5.0]", "czsl.bank_gate_grid=[1.0]",
              "czsl.bank_temperature_grid=[0.1]", "czsl.lora_rank=2", "features.batch_size=16")


def suite_project(tmp_path_factory: pytest.TempPathFactory, profile: str, overrides: tuple[str, ...]) -> Path:
    """A copy of the project whose params.yaml is the profile's, at smoke size."""
    root = copy_project(tmp_path_factory.mktemp(profile) / "project", profile=None)
    params = effective_params(load_config(REPO, profile, overrides))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def dvc_takes_over(root: Path, stages: tuple[str, ...], forced: str) -> None:
    """DVC takes the graph the flow ran: it records what the flow published (stage by stage in pipeline order, so each
    stage's .gitignore entries exist before the folders that hold them are hashed as the next stage's deps), finds
    nothing to do, and runs one instance of it itself."""
    for command in (("git", "init", "-q"), ("dvc", "init", "-q"), ("dvc", "repro", "check_params")):
        sh(root, *command)
    for upstream in upstream_closure(list(stages)):
        sh(root, "dvc", "commit", "-f", upstream.name)
    assert "Running stage" not in sh(root, "dvc", "repro", *stages)
    out = sh(root, "dvc", "repro", "-s", "-f", forced)
    # DVC removed its outputs first; the runner republishes them from the finished scratch copy
    assert f"Running stage '{forced}'" in out and "republished" in out, out
    assert "changed" not in sh(root, "dvc", "status", *stages)


@pytest.fixture(scope="module")
def semobridge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = suite_project(tmp_path_factory, "semobridge", SMOKE)
    write_semobridge_datasets(root / "data")
    return root


#: The retrieval suite at smoke size: two queries per dataset, two optimisation steps each way.
GAP_SMOKE = ("backbone.model=ViT-S-32", "backbone.pretrained=null", "inversion.max_queries=2",
             "inversion.oti.steps=2", "inversion.oti.snapshot_steps=[1,2]", "inversion.ovi.steps=2",
             "inversion.ovi.snapshot_steps=[1,2]", "inversion.plot_steps=[1]", "features.batch_size=16",
             "inversion.ovi.num_patches=2")  # the profile's "reference" P has no random ViT-S/32 entry


@pytest.fixture(scope="module")
def cross_the_gap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = suite_project(tmp_path_factory, "cross_the_gap", GAP_SMOKE)
    write_cross_the_gap_datasets(root / "data")
    return root


@pytest.fixture(scope="module")
def sam_czsl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = suite_project(tmp_path_factory, "sam_czsl", CZSL_SMOKE)
    write_sam_czsl_datasets(root / "data")
    params = yaml.safe_load((root / "params.yaml").read_text())
    for entry in params["datasets"]["czsl"].values():  # the replicas are not the published sizes; tiny batches
        entry.update(check_sizes=False, overrides={**entry["overrides"], "epochs": 1, "batch_size": 4})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_semobridge_suite_runs_on_the_replicas_with_prefect_then_dvc(semobridge: Path, prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow

    names = list(load_config(semobridge).datasets.classification)
    assert len(names) == 11 and "shapes" not in names  # the profile's datasets replace params.yaml's
    rows = pipeline_flow(root=str(semobridge), stages=["fewshot_report"])
    status = {r["stage"]: r["status"] for r in rows}
    expected = {f"{stage}@{name}{item}" for name in names
                for stage, item in (("features_fewshot", ""), ("support", "-1"), ("fewshot_bridge", ""),
                                    ("fewshot_run", "-1-1"))}
    assert expected | {"data", "backbone", "fewshot_report"} == set(status)
    assert all(s.startswith("ran") for s in status.values()), status
    metrics = json.loads((semobridge / "metrics/fewshot.json").read_text())["test_acc"]
    assert set(metrics) == set(names)
    fewshot = json.loads((semobridge / "artifacts/features/fewshot/imagenet/manifest.json").read_text())
    assert set(fewshot["summary"]["fewshot"]) >= {"test"} and "val" not in fewshot["summary"]["fewshot"]  # val = test
    assert "train" not in fewshot["summary"]["fewshot"]  # train_features: false
    dtd = json.loads((semobridge / "artifacts/features/support/dtd/s1/manifest.json").read_text())
    assert dtd["summary"]["support"]["k1"]["train"]["forwards"] == 2 * 11  # DTD's 1-shot recipe: 10 copies per image
    text = "\n".join(reproduction_lines(semobridge))
    assert "imagenet" in text and "fgvc_aircraft" in text  # produced (nothing matches a random-init backbone)

    dvc_takes_over(semobridge, ("fewshot_report",), "fewshot_run@imagenet-1-1")


def test_sam_czsl_suite_runs_on_the_replicas_with_prefect_then_dvc(sam_czsl: Path, prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow

    cfg = load_config(sam_czsl)
    names = list(cfg.datasets.czsl)
    assert names == ["ut_zappos", "mit_states", "cgqa"] and not cfg.datasets.classification
    assert cfg.czsl.mode == "lora" and cfg.backbone.model == "ViT-S-32"
    rows = pipeline_flow(root=str(sam_czsl), stages=["czsl"])
    status = {r["stage"]: r["status"] for r in rows}
    expected = {f"{stage}@{name}" for name in names for stage in ("features_czsl", "czsl")}
    assert expected | {"data", "backbone"} == set(status)
    assert all(s.startswith("ran") for s in status.values()), status
    for name, folder in zip(names, ("ut-zappos", "mit-states", "cgqa"), strict=True):
        metrics = json.loads((sam_czsl / f"metrics/czsl/{name}.json").read_text())
        assert set(metrics) == {"baseline", "+sa", "+vac", "+kl", "+bank_seen", "+dynamic"}
        manifest = json.loads((sam_czsl / f"artifacts/czsl/{name}/manifest.json").read_text())
        attrs, objs, _ = CZSL[folder]
        assert manifest["summary"]["dataset"] == name and manifest["summary"]["mode"] == "lora"
        store = json.loads((sam_czsl / f"artifacts/features/czsl/{name}/manifest.json").read_text())
        assert store["summary"]["czsl"]["attrs"] == len(attrs) and store["summary"]["czsl"]["objs"] == len(objs)
    text = "\n".join(reproduction_lines(sam_czsl))
    assert "ut-zappos" in text and "mit-states" in text and "cgqa" in text  # measured rows, nothing matched

    dvc_takes_over(sam_czsl, ("czsl",), "czsl@cgqa")


def test_cross_the_gap_suite_runs_on_the_replicas_with_prefect_then_dvc(cross_the_gap: Path,
                                                                        prefect_server: None) -> None:
    from flows.pipeline import pipeline_flow

    cfg = load_config(cross_the_gap)
    images, texts = list(cfg.datasets.image_retrieval), list(cfg.datasets.text_retrieval)
    assert len(images) == 15 and len(texts) == 12 and "shapes" not in images
    assert {"cub", "sop", "roxford5k", "rparis6k"} <= set(images)
    rows = pipeline_flow(root=str(cross_the_gap), stages=["oti", "ovi"])
    status = {r["stage"]: r["status"] for r in rows}
    expected = {f"{s}@{name}" for name in images for s in ("features_fewshot", "oti")}
    expected |= {f"{s}@{name}" for name in texts for s in ("features_text", "ovi")}
    assert expected | {"data", "backbone"} == set(status)
    assert all(s.startswith("ran") for s in status.values()), status
    headline = {"image_to_image", "oti_to_image", "oti_to_image_selected", "selected_step"}
    for name in images:
        metrics = json.loads((cross_the_gap / f"metrics/inversion/oti/{name}.json").read_text())
        revisited = {"revisited"} if name in ("roxford5k", "rparis6k") else set()
        assert set(metrics["image"]) == headline | revisited, name
    for name in ("roxford5k", "rparis6k"):  # the protocol's numbers, per method, over the test queries
        full = json.loads((cross_the_gap / f"artifacts/inversion/oti/{name}/retrieval.json").read_text())
        assert {"map_easy", "map_medium", "map_hard", "mp@10_medium"} <= set(full["image"]["revisited"]["oti_to_image"])
    sizes = {"coco": (KARPATHY_IMAGES, 4 * KARPATHY_IMAGES), "flickr30k": (KARPATHY_IMAGES, 4 * KARPATHY_IMAGES),
             "nocaps": (3, 27), "imdb": (2, 12), "newsgroups": (3, 6), **{n: (2, 4) for n in texts if "nano" in n}}
    for name in texts:  # e.g. each image of a caption set: its first caption queries its others
        store = json.loads((cross_the_gap / f"artifacts/features/texts/{name}/manifest.json").read_text())
        rows = store["summary"]["retrieval_text"]
        assert (rows["query"]["rows"], rows["gallery"]["rows"]) == sizes[name], name
        ovi = json.loads((cross_the_gap / f"artifacts/inversion/ovi/{name}/manifest.json").read_text())
        assert ovi["summary"]["ovi"]["queries"] == 2  # inversion.max_queries
    text = "\n".join(reproduction_lines(cross_the_gap))
    assert "coco" in text and "flickr30k" in text and "oxford_pets" in text  # measured rows, nothing matched

    dvc_takes_over(cross_the_gap, ("oti", "ovi"), "ovi@coco")
