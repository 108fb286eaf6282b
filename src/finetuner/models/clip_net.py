"""The CLIP family's networks and model object (declared in clip.py): two towers (text
and vision) trained together on text-image pairs.

Built with open_clip. Each tower is an nn.Module of its own that returns unit-length
embeddings, and saves to and loads from a folder without the other, for inference.

Weights:
- `None`: the real architecture with random weights; needs no network.
- a local path: a file (or a folder holding `model.safetensors`) with a state_dict in
  open_clip's layout, such as `save_clip` writes or a mirror of open_clip's own checkpoint.
  For the multilingual model a folder also supplies the XLM-R tokenizer files.
- `"upstream"`: open_clip downloads the checkpoint of the entry's pretrained tag.

The multilingual entry's text tower is a Hugging Face XLM-RoBERTa. Its architecture is
built here from a known config, so no hub access is needed to build it; its SentencePiece
tokenizer is not shipped by any package and must come from the weights folder.
"""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP, _build_text_tower, _build_vision_tower
from safetensors.torch import load_file, save_file
from torch import nn

from finetuner.errors import FinetunerError
from finetuner.io.staging import stage_dir
from finetuner.models.clip import TOWERS
from finetuner.models.cnn_net import load_image
from finetuner.models.folder import read_spec, write_spec
from finetuner.models.spec import ModelSpec

# Finetuner name -> (open_clip architecture, open_clip pretrained tag)
CLIP_MODELS: dict[str, tuple[str, str]] = {
    "clip-base-en": ("ViT-B-32", "openai"),
    "clip-large-en": ("ViT-L-14", "openai"),
    "clip-base-multi": ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k"),
}
SIZES = ("full", "tiny")
UPSTREAM = "upstream"
WEIGHTS_FILE = "model.safetensors"
CLIP_CONFIG_FILE = "clip.json"
TOWER_CONFIG_FILE = "tower.json"
TOWER_WEIGHTS_FILE = "tower.safetensors"
FORMAT_VERSION = 1

# xlm-roberta-base's config.json, so the text tower builds without the hub.
XLM_ROBERTA_BASE = dict(
    model_type="xlm-roberta",
    vocab_size=250002,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
TINY_XLM_ROBERTA = dict(
    XLM_ROBERTA_BASE,
    vocab_size=1000,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=128,
    max_position_embeddings=80,
)


def check_name(name: str) -> tuple[str, str]:
    if name not in CLIP_MODELS:
        raise FinetunerError(
            f"unknown CLIP model '{name}'; valid names are: {', '.join(CLIP_MODELS)}"
        )
    return CLIP_MODELS[name]


def upstream_cached(name: str) -> bool:
    """Whether open_clip's download of the entry's checkpoint is in the local hub cache."""
    from huggingface_hub import try_to_load_from_cache

    arch, tag = check_name(name)
    repo = open_clip.get_pretrained_cfg(arch, tag)["hf_hub"].strip("/")
    files = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    return any(isinstance(try_to_load_from_cache(repo, file), str) for file in files)


def check_options(name: str, pooler: str | None = None) -> None:
    """CLIP towers pool as their pretraining did; other poolers (GeM, mean, ...) are refused."""
    check_name(name)
    if pooler not in (None, "", "default"):
        raise FinetunerError(
            f"{name} does not support pooler {pooler}: CLIP towers use their own pooling; "
            "leave the pooler unset or 'default'"
        )


def model_config(name: str, size: str = "full") -> dict:
    """The open_clip model config of a catalogue entry: embed_dim, vision_cfg, text_cfg,
    quick_gelu, plus `hf_config` (a transformers config dict) for an HF text tower.

    `size="tiny"` keeps the architecture family (patch size, pooling, activations, text
    tower type, tokenizer vocabulary of the OpenAI-BPE models) but few, narrow layers."""
    arch, tag = check_name(name)
    if size not in SIZES:
        raise FinetunerError(f"unknown size '{size}' for {name}; valid sizes are: {SIZES}")
    cfg = copy.deepcopy(open_clip.get_model_config(arch))
    # OpenAI's weights were trained with QuickGELU: the architecture must match them.
    cfg["quick_gelu"] = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    text = cfg["text_cfg"]
    if text.get("hf_model_name"):
        cfg["hf_config"] = dict(XLM_ROBERTA_BASE if size == "full" else TINY_XLM_ROBERTA)
    if size == "tiny":
        cfg["embed_dim"] = 32
        vision = cfg["vision_cfg"]
        vision.update(width=64, layers=2, head_width=32, image_size=2 * vision["patch_size"])
        if not text.get("hf_model_name"):
            text.update(width=64, heads=2, layers=2)
    return cfg


@contextmanager
def _text_cfg(cfg: dict):
    """The open_clip text_cfg of `cfg`, valid while the context lasts.

    open_clip reads an HF text tower's config with AutoConfig.from_pretrained(name): it is
    handed a local folder holding the known config instead of the hub id."""
    text_cfg = dict(cfg["text_cfg"])
    if "hf_config" not in cfg:
        yield text_cfg
        return
    with stage_dir("clip-config") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(cfg["hf_config"]))
        yield dict(text_cfg, hf_model_name=str(folder), hf_model_pretrained=False)


def _build_text(cfg: dict) -> nn.Module:
    with _text_cfg(cfg) as text_cfg:
        return _build_text_tower(cfg["embed_dim"], text_cfg, cfg["quick_gelu"])


def _build_open_clip(cfg: dict) -> CustomTextCLIP:
    """open_clip's CLIP with the text tower as one module (`.text`), built offline."""
    args = {k: v for k, v in cfg.items() if k not in ("hf_config", "text_cfg", "custom_text")}
    with _text_cfg(cfg) as text_cfg:
        return CustomTextCLIP(**args, text_cfg=text_cfg)


def _preprocess(cfg: dict, tag_cfg: dict):
    return open_clip.image_transform(
        cfg["vision_cfg"]["image_size"],
        is_train=False,
        mean=tag_cfg.get("mean"),
        std=tag_cfg.get("std"),
        resize_mode=tag_cfg.get("resize_mode"),
        interpolation=tag_cfg.get("interpolation"),
    )


def _tokenizer(cfg: dict, arch: str, folder: Path | None):
    """The OpenAI BPE tokenizer (shipped with open_clip), or an HF tokenizer from `folder`."""
    if "hf_config" not in cfg:
        return open_clip.get_tokenizer(arch)
    if folder is not None and (
        (folder / "tokenizer.json").is_file() or (folder / "sentencepiece.bpe.model").is_file()
    ):
        return open_clip.tokenizer.HFTokenizer(str(folder))
    return None


class ClipTextTower(nn.Module):
    """token ids (B, L) -> unit-length embeddings (B, D)."""

    def __init__(self, text: nn.Module, config: dict, tokenizer=None):
        super().__init__()
        self.text = text
        self.config = config  # what load_tower needs to rebuild it
        self.tokenizer = tokenizer

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(token_ids), dim=-1)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return _tokenize(self.tokenizer, self.config["name"], texts)


def _tokenize(tokenizer, name: str, texts: list[str]) -> torch.Tensor:
    if tokenizer is None:
        raise FinetunerError(
            f"no tokenizer for {name}: its XLM-RoBERTa tokenizer ships with no package; load "
            "the model from a weights folder that holds tokenizer.json (or sentencepiece.bpe.model)"
        )
    return tokenizer(list(texts))


class ClipVisionTower(nn.Module):
    """pixel values (B, 3, H, W), already preprocessed -> unit-length embeddings (B, D)."""

    def __init__(self, visual: nn.Module, config: dict, preprocess=None):
        super().__init__()
        self.visual = visual
        self.config = config
        self.preprocess = preprocess

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(pixel_values), dim=-1)


class ClipModel:
    """An open_clip model with its two towers, tokenizer and image transform.

    The towers share their modules with `model`, so training them (and `logit_scale`)
    trains the model; `parameters()` covers both towers and `logit_scale`."""

    def __init__(self, name: str, size: str, cfg: dict, model: CustomTextCLIP, folder=None):
        arch, tag = CLIP_MODELS[name]
        self.name, self.size, self.cfg, self.model = name, size, cfg, model
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
        base = {
            "name": name,
            "size": size,
            "embed_dim": cfg["embed_dim"],
            "quick_gelu": cfg["quick_gelu"],
        }
        self.tokenizer = _tokenizer(cfg, arch, folder)
        self.preprocess = _preprocess(cfg, tag_cfg)
        text_config = dict(base, tower="text", text_cfg=cfg["text_cfg"])
        if "hf_config" in cfg:
            text_config["hf_config"] = cfg["hf_config"]
        self.text_tower = ClipTextTower(model.text, text_config, self.tokenizer)
        self.vision_tower = ClipVisionTower(
            model.visual,
            dict(base, tower="vision", vision_cfg=cfg["vision_cfg"], preprocess=tag_cfg),
            self.preprocess,
        )

    @property
    def logit_scale(self) -> nn.Parameter:
        """The learnable log temperature; the loss takes `scale()`."""
        return self.model.logit_scale

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 as in CLIP's training."""
        return self.model.logit_scale.exp().clamp(max=100)

    def parameters(self):
        return self.model.parameters()

    @property
    def image_size(self) -> int:
        return self.cfg["vision_cfg"]["image_size"]

    @property
    def context_length(self) -> int:
        return self.cfg["text_cfg"].get("context_length", 77)

    @cached_property
    def output_dim(self) -> int:
        """Measured: the width of the text tower's embeddings for a dummy input."""
        return _measure(self.text_tower, self.vision_tower)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text_tower.tokenize(texts)


def _dummy_text(tower: ClipTextTower, batch: int = 1) -> torch.Tensor:
    length = tower.config["text_cfg"].get("context_length", 77)
    return torch.full((batch, length), 5, dtype=torch.long)


@torch.inference_mode()
def _measure(text: ClipTextTower, vision: ClipVisionTower) -> int:
    """The text tower's width, measured on one dummy text (cheap even for ViT-L-14), checked
    against the image tower's projection."""
    was = text.training
    text_dim = text.eval()(_dummy_text(text)).shape[-1]
    text.train(was)
    vision_dim = getattr(vision.visual, "output_dim", text_dim)
    if text_dim != vision_dim:
        raise FinetunerError(f"towers disagree: text {text_dim}-d, vision {vision_dim}-d")
    return int(text_dim)


def _weights_file(weights: str | Path) -> tuple[Path, Path | None]:
    path = Path(weights)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise FinetunerError(f"no {WEIGHTS_FILE} in CLIP weights folder {path}")
        return path / WEIGHTS_FILE, path
    if path.is_file():
        return path, None
    raise FinetunerError(
        f"CLIP weights '{weights}' are neither a file nor a folder; give a local path, "
        f"None (random init) or '{UPSTREAM}'"
    )


def build_clip(name: str, weights: str | Path | None = None, size: str = "full") -> ClipModel:
    """Build catalogue entry `name`: random weights (None), a local state_dict (a file, or a
    folder with model.safetensors and, for clip-base-multi, its tokenizer), or `"upstream"`."""
    arch, tag = check_name(name)
    cfg = model_config(name, size)
    if weights is not None and str(weights) == UPSTREAM:
        if size != "full":
            raise FinetunerError(f"upstream weights of {name} exist only for size 'full'")
        # open_clip downloads the checkpoint of the tag (needs the network or its cache)
        model = open_clip.create_model(
            arch, pretrained=tag, force_custom_text=True, force_quick_gelu=cfg["quick_gelu"]
        )
        clip = ClipModel(name, size, cfg, model)
        if clip.tokenizer is None:  # the HF tokenizer, from the hub like the weights
            clip.tokenizer = clip.text_tower.tokenizer = open_clip.get_tokenizer(arch)
        return clip
    model = _build_open_clip(cfg)
    folder = None
    if weights is not None:
        file, folder = _weights_file(weights)
        try:
            open_clip.load_checkpoint(model, str(file), strict=True)
        except (RuntimeError, KeyError, AttributeError, ValueError) as exc:
            raise FinetunerError(
                f"weights {file} do not fit {name} (size {size}): {str(exc)[:500]}"
            ) from exc
    return ClipModel(name, size, cfg, model, folder)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def _save_tokenizer(tokenizer, folder: Path) -> None:
    if isinstance(tokenizer, open_clip.tokenizer.HFTokenizer):
        tokenizer.tokenizer.save_pretrained(folder)


def save_clip(clip: ClipModel, folder: str | Path) -> Path:
    """Write the whole model (both towers and logit_scale) as a folder build_clip loads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_state(clip.model), folder / WEIGHTS_FILE)
    config = {"format": FORMAT_VERSION, "name": clip.name, "size": clip.size}
    (folder / CLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    _save_tokenizer(clip.tokenizer, folder)
    return folder


def load_clip(folder: str | Path) -> ClipModel:
    """Load a folder written by save_clip."""
    config = json.loads((Path(folder) / CLIP_CONFIG_FILE).read_text())
    return build_clip(config["name"], weights=folder, size=config["size"])


def save_tower(tower: ClipTextTower | ClipVisionTower, folder: str | Path) -> Path:
    """Write one tower (config JSON + safetensors, plus an HF tokenizer) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    module = tower.text if isinstance(tower, ClipTextTower) else tower.visual
    save_file(_state(module), folder / TOWER_WEIGHTS_FILE)
    config = dict(tower.config, format=FORMAT_VERSION)
    (folder / TOWER_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    if isinstance(tower, ClipTextTower):
        _save_tokenizer(tower.tokenizer, folder)
    return folder


def load_tower(folder: str | Path) -> ClipTextTower | ClipVisionTower:
    """Load a tower written by save_tower, on its own, in eval mode."""
    folder = Path(folder)
    config = tower_config(folder)
    state = load_file(folder / TOWER_WEIGHTS_FILE)
    if config["tower"] == "text":
        module = _build_text(config)
        module.load_state_dict(state, strict=True)
        arch = CLIP_MODELS[config["name"]][0]
        tower = ClipTextTower(module, config, _tokenizer(config, arch, folder))
    else:
        module = _build_vision_tower(
            config["embed_dim"], config["vision_cfg"], config["quick_gelu"]
        )
        module.load_state_dict(state, strict=True)
        tower = ClipVisionTower(module, config, _preprocess(config, config["preprocess"]))
    return tower.eval()


def tower_config(folder: str | Path) -> dict:
    config_file = Path(folder) / TOWER_CONFIG_FILE
    if not config_file.is_file():
        raise FinetunerError(f"{folder} holds no CLIP tower: {TOWER_CONFIG_FILE} is missing")
    config = json.loads(config_file.read_text())
    config.pop("format", None)
    return config


def tower_tokenizer(folder: str | Path):
    """The tokenizer of a saved text tower, without loading its weights."""
    config = tower_config(folder)
    tokenizer = _tokenizer(config, CLIP_MODELS[config["name"]][0], Path(folder))
    return lambda texts: _tokenize(tokenizer, config["name"], texts)


def tower_transform(folder: str | Path):
    """The image transform of a saved vision tower, without loading its weights."""
    config = tower_config(folder)
    return _preprocess(config, config["preprocess"])


def clip_loss() -> nn.Module:
    """open_clip's symmetric InfoNCE: loss(image_emb, text_emb, clip.scale())."""
    return open_clip.ClipLoss()


# ---------------------------------------------------------------- the pipeline's model
# Queries are texts and documents are image URIs. The text tower embeds the queries and the
# vision tower the documents; each is exported on its own (`clip-text`, `clip-vision`), as
# Finetuner did, and loads without the other for inference.

# Texts and batch sizes that the ONNX check of the text tower runs through both runtimes.
ONNX_CHECK_TEXTS = (["a"], ["a photo of a dress", "trousers"], ["a bag"] * 3)


class _Tower:
    """One CLIP tower with its preprocessing: `embed` for training, `encode` for inference."""

    def __init__(self, tower, name: str):
        self.tower = tower
        self.name = name

    def inputs(self, items: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, items: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        return self.tower(self.inputs(items).to(device))

    @torch.inference_mode()
    def encode(self, items: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        self.tower.eval().to(device)
        out = [
            self.embed(items[i : i + batch_size], device).float().cpu()
            for i in range(0, len(items), batch_size)
        ]
        dim = self.tower.config["embed_dim"]
        return torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)

    def save(self, folder: str | Path) -> Path:
        return save_tower(self.tower, folder)

    def _onnx_spec(self, input_name: str, output: str, example, checks: list) -> dict:
        # Text has a fixed context length, images a fixed size: only the batch is dynamic.
        return {
            "module": self.tower,
            "output": output,
            "example": {input_name: example},
            "dynamic": {input_name: {0: "batch"}},
            "checks": [{input_name: inputs} for inputs in checks],
        }


class TextTower(_Tower):
    def inputs(self, texts: list[str]) -> torch.Tensor:
        return self.tower.tokenize(list(texts))

    def onnx_spec(self) -> dict:
        checks = [self.inputs(texts) for texts in ONNX_CHECK_TEXTS]
        return self._onnx_spec("token_ids", "text_embedding", checks[1], checks)


class ImageTower(_Tower):
    def inputs(self, uris: list[str]) -> torch.Tensor:
        return torch.stack([self.prepare_one(uri) for uri in uris])

    def prepare_one(self, uri: str) -> torch.Tensor:
        """One image's pixels, in a DataLoader worker (see finetuner.data.batches)."""
        return self.tower.preprocess(load_image(uri))

    def embed_prepared(self, pixels: torch.Tensor, device: str = "cpu") -> torch.Tensor:
        return self.tower(pixels.to(device))

    def pixels(self, n: int) -> torch.Tensor:
        size = self.tower.config["vision_cfg"]["image_size"]
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(n))

    def onnx_spec(self) -> dict:
        checks = [self.pixels(n) for n in (1, 3)]
        return self._onnx_spec("pixel_values", "image_embedding", self.pixels(2), checks)


def load_tower_model(folder: str | Path) -> TextTower | ImageTower:
    """A tower exported on its own (an export's clip-text/ or clip-vision/ folder)."""
    tower = load_tower(folder)
    if isinstance(tower, ClipTextTower):
        return TextTower(tower, TOWERS[0])
    return ImageTower(tower, TOWERS[1])


class TextImageModel:
    """A CLIP model for the pipeline: both towers and the learnable temperature."""

    def __init__(self, model: ClipModel, spec: ModelSpec):
        self.clip = model
        # The measured width: a mirror may hold a smaller configuration than the catalogue's.
        self.spec = spec.model_copy(update={"output_dim": model.output_dim})
        self.embedder = model.model  # both towers and logit_scale: what the optimiser trains
        self.text = TextTower(model.text_tower, TOWERS[0])
        self.image = ImageTower(model.vision_tower, TOWERS[1])

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> TextImageModel:
        if spec.weights.startswith("open_clip:"):
            return cls(build_clip(spec.name, UPSTREAM), spec)
        from finetuner.models.weights import local_path

        return cls(_load_clip(local_path(spec.weights), spec.name), spec)

    @classmethod
    def load(cls, folder: str | Path) -> TextImageModel:
        spec = read_spec(folder)
        return cls(_load_clip(Path(folder), spec.name), spec)

    def save(self, folder: str | Path) -> Path:
        write_spec(folder, self.spec)
        return save_clip(self.clip, folder)

    def scale(self) -> torch.Tensor:
        return self.clip.scale()

    def sides(self) -> tuple[TextTower, ImageTower]:
        return self.text, self.image

    def towers(self) -> dict[str, TextTower | ImageTower]:
        return {self.text.name: self.text, self.image.name: self.image}

    def onnx_spec(self) -> None:
        return None  # each tower is exported on its own

    def encode(self, items: list[str], batch_size: int = 64):
        raise FinetunerError(
            "a CLIP model encodes with one tower: load it with "
            f"get_model(artifact, select_model=...) and one of {', '.join(TOWERS)}."
        )


def _load_clip(folder: Path, name: str) -> ClipModel:
    """A save_clip folder (a mirror's or a train step's) that must hold catalogue entry
    `name`, at whatever size it was saved."""
    import json

    config_file = folder / CLIP_CONFIG_FILE
    if not config_file.is_file():
        raise FinetunerError(f"{folder} holds no CLIP model: {CLIP_CONFIG_FILE} is missing.")
    saved = json.loads(config_file.read_text())["name"]
    if saved != name:
        raise FinetunerError(f"{folder} holds weights of {saved}, not of {name}.")
    return load_clip(folder)


def upstream_source(entry) -> tuple[str, bool]:
    """open_clip's checkpoint of the entry, and whether it is in the local cache."""
    return f"open_clip:{entry.name}", upstream_cached(entry.name)


def write_mirror(entry, source: str, folder: Path) -> None:
    """A mirror's clip folder: clip.json, model.safetensors and any tokenizer files."""
    save_clip(build_clip(entry.name, UPSTREAM), folder)
