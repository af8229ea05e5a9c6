"""What the czsl stage reads: the CZSL dataset in each world (with open-world feasibility) and the split tensors."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline_lib.czsl.config import CzslConfig
from pipeline_lib.czsl.data import CzslDataset, load_czsl_dataset
from pipeline_lib.czsl.feasibility import backbone_word_embedder, dataset_feasibility
from pipeline_lib.czsl.train import SplitData
from pipeline_lib.czsl.worlds import WorldEval, pair_tensor
from pipeline_lib.engine.store import read_array

log = logging.getLogger(__name__)


def load_worlds(dataset_root: Path, cfg: CzslConfig, clip: nn.Module,
                tokenizer: Callable[[list[str]], torch.Tensor], check_sizes: bool = True) -> dict[str, WorldEval]:
    """The closed world (always: checkpoint selection uses its val AUC) and, when configured, the open world with its
    feasibility scores (word vectors from cfg.ow_word_vectors, else the backbone's token embeddings)."""
    worlds: dict[str, WorldEval] = {}
    ds_cw = load_czsl_dataset(dataset_root, "closed", check_sizes=check_sizes)
    worlds["closed"] = WorldEval("closed", ds_cw, pair_tensor(ds_cw, ds_cw.pairs))
    if "open" in cfg.worlds:
        ds_ow = load_czsl_dataset(dataset_root, "open", check_sizes=check_sizes)
        feas = dataset_feasibility(
            ds_ow.attrs, ds_ow.objs, ds_ow.train_pairs,
            word_vectors=Path(cfg.ow_word_vectors) if cfg.ow_word_vectors else None,
            fallback=backbone_word_embedder(clip, tokenizer),
        )
        worlds["open"] = WorldEval("open", ds_ow, pair_tensor(ds_ow, ds_ow.pairs), feas)
    if "closed" not in cfg.worlds:
        log.info("closed world is always evaluated: checkpoint selection uses the closed-world val AUC")
    return worlds


def load_splits(store: Path, ds: CzslDataset, mode: str) -> dict[str, SplitData]:
    """Labels from the loader; tokens from the features store (frozen mode) or image paths (LoRA mode).

    The store's rows must follow the loader's split order: its attr/obj arrays are checked against the loader's.
    Token 0 is replaced by the store's global image embedding (see `TokenSource`).
    """
    out = {}
    for split in ("train", "val", "test"):
        df = ds.split(split)
        attr = torch.from_numpy(df["attr_idx"].to_numpy().copy())
        obj = torch.from_numpy(df["obj_idx"].to_numpy().copy())
        label = torch.from_numpy(df["pair_idx"].to_numpy().copy())
        tokens = paths = None
        if mode == "frozen":
            s_attr, s_obj = read_array(store, f"{split}/attr"), read_array(store, f"{split}/obj")
            if s_attr.shape[0] != len(attr) or not (np.array_equal(s_attr, attr.numpy())
                                                     and np.array_equal(s_obj, obj.numpy())):
                raise ValueError(f"{store}: {split} rows do not match the CZSL loader's {split} split "
                                 f"({s_attr.shape[0]} vs {len(attr)} rows); rerun the features stage")
            try:
                tokens = torch.from_numpy(read_array(store, f"{split}/tokens")).float()  # (N, 1 + L, D)
            except KeyError as err:
                raise KeyError(f"{store} has no {split}/tokens; frozen-mode CZSL needs features.patch_tokens=true") \
                    from err
            tokens[:, 0] = torch.from_numpy(read_array(store, f"{split}/image")).float()  # (N, D) global embedding
        else:
            paths = df["path"].to_list()
        out[split] = SplitData(attr=attr, obj=obj, label=label, tokens=tokens, paths=paths)
    return out
