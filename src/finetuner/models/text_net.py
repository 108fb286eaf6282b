"""Text embedding models: a Hugging Face transformer, a pooler and L2 normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetuner.models.folder import HEAD_FILE, load_weights, read_spec, save_weights, write_spec
from finetuner.models.head import projection_head
from finetuner.models.poolers import Pooler
from finetuner.models.spec import ModelSpec
from finetuner.models.text import TextOptions

# Texts of varied length and batch sizes that the ONNX check runs through both runtimes.
ONNX_CHECK_TEXTS = (
    ["a"],
    ["a short query", "a considerably longer document that needs many more tokens to encode"],
    ["x y z"] * 3 + ["one more sentence of middling length"],
)


class TextEmbedder(nn.Module):
    """token ids -> unit-length embeddings; the module that is trained and exported.

    head: the projection head of option output_dim, or None. frozen: the backbone is not
    trained (option freeze), and runs as in inference, without dropout.
    """

    def __init__(
        self,
        backbone: nn.Module,
        pooler: Pooler,
        head: nn.Module | None = None,
        frozen: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.head = head
        self.frozen = frozen
        if frozen:
            backbone.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        tokens = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, **extra
        ).last_hidden_state
        pooled = self.pooler(tokens, attention_mask)
        return F.normalize(pooled if self.head is None else self.head(pooled), dim=-1)


class TextModel:
    """A TextEmbedder with its tokenizer and catalogue spec: what the steps pass around."""

    def __init__(self, embedder: TextEmbedder, tokenizer, spec: ModelSpec):
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.spec = spec

    @property
    def input_names(self) -> list[str]:
        """The tokenizer's outputs that TextEmbedder.forward takes, in its argument order."""
        made = self.tokenizer.model_input_names
        return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in made]

    @classmethod
    def pretrained(cls, spec: ModelSpec) -> TextModel:
        from finetuner.models.weights import local_path

        return cls._from_folder(local_path(spec.weights), spec)

    @classmethod
    def load(cls, folder: str | Path) -> TextModel:
        """Load a folder written by `save` (a train output or an export's model/)."""
        model = cls._from_folder(Path(folder), read_spec(folder))
        if model.embedder.head is not None:
            load_weights(model.embedder.head, Path(folder) / HEAD_FILE)
        return model

    @classmethod
    def _from_folder(cls, folder: Path, spec: ModelSpec) -> TextModel:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        backbone = AutoModel.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        pooler = Pooler(spec.pooler, p=spec.pooler_p, eps=spec.pooler_eps)
        # Re-validated: KFP hands dict parameters over as JSON numbers, ints as floats.
        options = TextOptions(**spec.options)
        head = None
        if options.output_dim:
            head = projection_head(backbone.config.hidden_size, options.output_dim)
        embedder = TextEmbedder(backbone, pooler, head, frozen=options.freeze)
        return cls(embedder.eval(), tokenizer, spec)

    def save(self, folder: str | Path) -> Path:
        folder = write_spec(folder, self.spec)
        self.embedder.backbone.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        if self.embedder.head is not None:
            save_weights(self.embedder.head, folder / HEAD_FILE)
        return folder

    def tokenize(self, texts: list[str], return_tensors: str = "pt") -> dict:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.spec.max_length,
            return_tensors=return_tensors,
        )
        return {name: batch[name] for name in self.input_names}

    def embed(self, texts: list[str], device: str = "cpu", buckets: int = 1) -> torch.Tensor:
        """Embeddings with gradients, for training.

        Texts are padded only within `buckets` groups of similar length, each a forward
        pass of its own: the result and its gradients are those of one padded batch, for
        less work on padding.
        """
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=self.spec.max_length, padding=False
        )
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
        parts = []
        for group in np.array_split(order, min(buckets, len(texts))):
            features = self.tokenizer.pad(
                {name: [encoded[name][i] for i in group] for name in self.input_names},
                return_tensors="pt",
            )
            parts.append(self.embedder(**{k: v.to(device) for k, v in features.items()}))
        inverse = torch.from_numpy(np.argsort(order)).to(device)
        return torch.cat(parts)[inverse]

    def onnx_spec(self) -> dict:
        """What export needs to write and check this model as ONNX."""
        return {
            "module": self.embedder,
            "output": "sentence_embedding",
            "example": self.tokenize(ONNX_CHECK_TEXTS[1]),
            "dynamic": {name: {0: "batch", 1: "sequence"} for name in self.input_names},
            "checks": [self.tokenize(texts) for texts in ONNX_CHECK_TEXTS],
        }

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        """Embeddings of texts, float32, shape (len(texts), output_dim)."""
        self.embedder.eval().to(device)
        # Sorting by length keeps padding, and so the work, small.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenize([texts[i] for i in order[start : start + batch_size]])
            chunks.append(self.embedder(**{k: v.to(device) for k, v in batch.items()}).float())
        if not chunks:
            return np.zeros((0, self.spec.output_dim), dtype=np.float32)
        out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        out[order] = torch.cat(chunks).cpu().numpy()
        return out


def write_sentence_transformers(model, folder: Path) -> None:
    """A folder that `SentenceTransformer(folder)` loads: transformer, pooler, the projection
    head if any (a Dense module), Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (
        Dense,
        Normalize,
        Pooling,
        Transformer,
    )

    from finetuner.models.st_modules import GeMPooling

    model.save(folder)
    spec = model.spec
    transformer = Transformer(str(folder), max_seq_length=spec.max_length)
    dim = transformer.get_embedding_dimension()
    if spec.pooler == "GeM":
        pooling = GeMPooling(dim, p=spec.pooler_p, eps=spec.pooler_eps)
    else:
        pooling = Pooling(dim, pooling_mode=spec.pooler)
    modules = [transformer, pooling]
    head = model.embedder.head
    if head is not None:
        weight = head.weight.detach().clone()
        modules.append(
            Dense(dim, spec.output_dim, bias=False, activation_function=None, init_weight=weight)
        )
    modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(folder))


def onnx_inputs(spec: ModelSpec, folder: Path):
    """texts -> the feeds of the exported ONNX model: the tokenizer's outputs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def feeds(texts: list[str]) -> dict:
        batch = tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=spec.max_length,
            return_tensors="np",
        )
        return {n: batch[n].astype(np.int64) for n in batch}

    return feeds
