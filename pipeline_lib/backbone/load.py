"""Build and load open_clip backbones: the tiny shapes-world CLIPs and real architectures with tags or local weights.

One `Backbone` bundles what every later stage needs from a CLIP: the model, its own eval transform, its tokenizer and a
fingerprint of its weights (so caches key on the weights actually used, not on a name).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from PIL import Image

from pipeline_lib.backbone.tiny import register_tiny_models
from pipeline_lib.engine.errors import UserInputError
from pipeline_lib.engine.io import write_json

logger = logging.getLogger(__name__)

#: File names inside the backbone stage's output folder.
SPEC_FILE = "backbone.json"
WEIGHTS_FILE = "model.pt"
#: Start of the warning open_clip logs (on the root logger) when it builds a model without pretrained weights.
RANDOM_INIT_WARNING = "No pretrained weights loaded for model"


@dataclass
class Backbone:
    """An open_clip CLIP ready for feature extraction (eval mode, fp32, on its device)."""

    model: open_clip.CLIP
    preprocess: Callable[[Image.Image], torch.Tensor]  # PIL -> (3, H, W), from the model's own preprocess config
    tokenizer: Callable[[list[str]], torch.Tensor]  # list[str] -> (B, context_length) int64
    name: str
    pretrained: str | None
    fingerprint: str  # sha256 of the weights (state_dict_fingerprint)
    image_size: int
    context_length: int
    quick_gelu: bool = False
    model_config: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids on the model's device: (B, context_length)."""
        return self.tokenizer(list(texts)).to(self.device)


class UnknownModelError(UserInputError, ValueError):
    """The model name is neither an open_clip architecture nor a tiny shapes-world model."""


class UnknownPretrainedError(UserInputError, ValueError):
    """`pretrained` is neither a tag open_clip knows for this model nor an existing weights file."""


def state_dict_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in sorted name order: stable across devices and files."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Fingerprint of a model's weights (see state_dict_fingerprint)."""
    return state_dict_fingerprint(model.state_dict())


def check_model_name(name: str) -> None:
    """Raise UnknownModelError naming close matches when open_clip cannot build `name`."""
    register_tiny_models()
    if name.startswith(("hf-hub:", "local-dir:")):
        return  # open_clip resolves schema names itself (hf-hub only when the user asked for it)
    if name.replace("/", "-") in open_clip.list_models():
        return
    close = difflib.get_close_matches(name, open_clip.list_models(), n=5, cutoff=0.5)
    raise UnknownModelError(
        f"backbone.model={name!r} is not an open_clip architecture; closest known names: {close or 'none'} "
        f"(see open_clip.list_models())"
    )


def resolve_pretrained(name: str, pretrained: str | None) -> tuple[str, str | None]:
    """Classify `pretrained` as ("none", None), ("tag", tag) or ("file", path), failing before anything downloads."""
    if pretrained is None:
        return "none", None
    if open_clip.is_pretrained_cfg(name, pretrained):
        return "tag", pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return "file", str(path)
    tags = open_clip.list_pretrained_tags_by_model(name)
    if any(sep in pretrained for sep in ("/", "\\")) or path.suffix:
        raise FileNotFoundError(
            f"backbone.pretrained={pretrained!r}: no such weights file (expected an existing .pt/.bin/.safetensors "
            f"file, or one of the tags for {name}: {tags or 'none'})"
        )
    raise UnknownPretrainedError(
        f"backbone.pretrained={pretrained!r} is not a known tag for {name!r} (known tags: {tags or 'none'}; see "
        f"open_clip.list_pretrained()) and not an existing file"
    )


def resolve_quick_gelu(name: str, pretrained: str | None, force: bool | str = "auto") -> bool:
    """Whether the model must use QuickGELU: forced, or (auto) when the tag's weights were trained with it.

    open_clip 3.3 builds e.g. `ViT-B-16` with nn.GELU and only warns when the OpenAI weights expect QuickGELU, which
    silently degrades features; here the tag decides. Names ending in -quickgelu already carry it in their config.
    """
    if force != "auto":
        return bool(force)
    if pretrained is not None and open_clip.is_pretrained_cfg(name, pretrained):
        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    return False


def open_clip_model_config(name: str, quick_gelu: bool = False) -> dict[str, Any]:
    """The architecture config open_clip builds `name` from (with the QuickGELU choice applied)."""
    register_tiny_models()
    config = open_clip.get_model_config(name)
    if config is None:
        raise UnknownModelError(f"open_clip has no config for {name!r}")
    if quick_gelu:
        config["quick_gelu"] = True
    return config


def _image_size(model: open_clip.CLIP) -> int:
    size = getattr(model.visual, "image_size", None)
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    if size is None:
        size = open_clip.get_model_preprocess_cfg(model)["size"]
        size = size[0] if isinstance(size, (tuple, list)) else size
    return int(size)


#: Seed of a real architecture built without weights (tests, planning probes): the stages that load the published
#: backbone rebuild the very same random weights, and its fingerprint matches.
RANDOM_INIT_SEED = 0


def create_backbone(
    name: str,
    pretrained: str | None = None,
    force_quick_gelu: bool | str = "auto",
    device: torch.device | str = "cpu",
    init_seed: int = RANDOM_INIT_SEED,
) -> Backbone:
    """Build `name` with the weights `pretrained` names: None (random init), an open_clip tag, or a local file.

    All checks run before open_clip is asked for anything, so a typo never triggers a download; only a valid tag
    downloads (into open_clip's usual cache). Weights that are not loaded are drawn from `init_seed` (the global RNG
    is left as it was).
    """
    check_model_name(name)
    kind, source = resolve_pretrained(name, pretrained)
    quick_gelu = resolve_quick_gelu(name, pretrained, force_quick_gelu)
    if kind == "tag":
        logger.info("loading open_clip %s with tag %r (downloads on first use)", name, source)
    elif kind == "file":
        logger.info("loading open_clip %s weights from %s", name, source)
    with torch.random.fork_rng(devices=[]):  # random init is seeded: every process builds the same model
        torch.manual_seed(init_seed)
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=source, force_quick_gelu=quick_gelu, device=torch.device(device), precision="fp32"
        )
    model.eval()
    return Backbone(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        name=name,
        pretrained=pretrained,
        fingerprint=model_fingerprint(model),
        image_size=_image_size(model),
        context_length=int(model.context_length),
        quick_gelu=quick_gelu,
        model_config=open_clip_model_config(name, quick_gelu) if not name.startswith(("hf-hub:", "local-dir:")) else {},
    )


def backbone_spec(backbone: Backbone, weights_file: str | None) -> dict[str, Any]:
    """The JSON spec the backbone stage publishes: enough to rebuild and verify the exact model."""
    model = backbone.model
    return {
        "model": backbone.name,
        "pretrained": backbone.pretrained,
        "quick_gelu": backbone.quick_gelu,
        "fingerprint": backbone.fingerprint,
        "weights": weights_file,
        "image_size": backbone.image_size,
        "context_length": backbone.context_length,
        "embed_dim": int(model.text_projection.shape[1]) if model.text_projection is not None else None,
        "text_width": int(model.transformer.width),
        "open_clip_version": open_clip.__version__,
        "open_clip_config": backbone.model_config,
    }


def save_published_backbone(backbone: Backbone, backbone_dir: Path, save_weights: bool) -> dict[str, Any]:
    """Write backbone.json (and model.pt when `save_weights`) into `backbone_dir`; returns the spec."""
    backbone_dir.mkdir(parents=True, exist_ok=True)
    weights_file = WEIGHTS_FILE if save_weights else None
    if save_weights:
        state = {k: v.detach().to("cpu") for k, v in backbone.model.state_dict().items()}
        torch.save(state, backbone_dir / WEIGHTS_FILE)
    spec = backbone_spec(backbone, weights_file)
    write_json(backbone_dir / SPEC_FILE, spec, sort_keys=True)
    return spec


def read_backbone_spec(backbone_dir: Path) -> dict[str, Any]:
    """Parse the published backbone.json with an error naming the file when it is missing or broken."""
    path = Path(backbone_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the backbone stage first")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    missing = {"model", "pretrained", "quick_gelu", "fingerprint", "weights"} - set(spec)
    if missing:
        raise ValueError(f"{path} lacks keys {sorted(missing)}")
    return spec


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(RANDOM_INIT_WARNING)


@contextmanager
def trained_weights_follow() -> Iterator[None]:
    """Silence open_clip's "initialized randomly" warning while building a model whose trained weights are loaded next
    (open_clip logs it through the root logger; only that record is dropped, and only inside the block)."""
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def load_published_backbone(backbone_dir: Path, device: torch.device | str = "cpu") -> Backbone:
    """Rebuild the backbone the backbone stage published and verify its weight fingerprint.

    Trained tiny models load from model.pt; real backbones load again from their tag or local file (only the spec is
    published for them), so a changed file or a different tag download fails loudly instead of mixing weights.
    """
    backbone_dir = Path(backbone_dir)
    spec = read_backbone_spec(backbone_dir)
    if spec["weights"] is None:
        backbone = create_backbone(spec["model"], spec["pretrained"], spec["quick_gelu"], device)
    else:
        weights = backbone_dir / spec["weights"]
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} named in {backbone_dir / SPEC_FILE} is missing")
        with trained_weights_follow():
            backbone = create_backbone(spec["model"], None, spec["quick_gelu"], device)
        recorded_config = spec.get("open_clip_config")
        if recorded_config and recorded_config != backbone.model_config:
            raise ValueError(
                f"{backbone_dir / SPEC_FILE} was built from a different open_clip config for {spec['model']!r} than "
                f"the one registered now; rerun the backbone stage"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        backbone.model.load_state_dict(state, strict=True)
        backbone.model.eval()
        backbone.pretrained = spec["pretrained"]
        backbone.fingerprint = model_fingerprint(backbone.model)
        logger.info("loaded trained weights %s (fingerprint %s)", weights, backbone.fingerprint[:12])
    if backbone.fingerprint != spec["fingerprint"]:
        raise ValueError(
            f"weights of {spec['model']!r} ({spec['pretrained']!r}) have fingerprint {backbone.fingerprint[:12]}... "
            f"but {backbone_dir / SPEC_FILE} recorded {spec['fingerprint'][:12]}...: the weights changed since the "
            f"backbone stage ran; rerun it"
        )
    return backbone
