"""The `synthesize_and_finetune` pipeline: catalogue-lookup -> claim-output -> synthesize-pairs ->
preprocess -> train (MarginMSELoss) -> evaluate -> export, for queries and a corpus
without labels."""

from kfp import dsl

from finetuner.cluster import gpu_step, s3_step
from finetuner.components.catalogue_lookup import catalogue_lookup
from finetuner.components.claim import claim_step
from finetuner.components.evaluate import evaluate
from finetuner.components.export import export
from finetuner.components.preprocess import preprocess
from finetuner.components.synthesize import synthesize_pairs
from finetuner.components.train import train
from finetuner.defaults import CLUSTER_DEFAULTS as C
from finetuner.defaults import PIPELINE_DEFAULTS as D
from finetuner.losses import MARGIN_MSE
from finetuner.steps import CHOICES
from finetuner.synthesis import DATA_SYNTHESIS_EN, DEFAULT_NUM_RELATIONS


@dsl.pipeline(
    name="synthesize-and-finetune",
    description="Synthesize MarginMSE training data from unlabelled queries and a corpus, "
    "then fine-tune an embedding model on it.",
)
def synthesize_and_finetune(
    query_data: str,
    corpus_data: str,
    output_uri: str,
    model: str = D["model"],
    relation_miner: str = DATA_SYNTHESIS_EN.relation_miner,
    cross_encoder: str = DATA_SYNTHESIS_EN.cross_encoder,
    relation_miner_weights: str = "",
    cross_encoder_weights: str = "",
    num_relations: int = DEFAULT_NUM_RELATIONS,
    data_options: dict = D["data_options"],
    val_split: float = D["val_split"],
    epochs: int = D["epochs"],
    batch_size: int = D["batch_size"],
    learning_rate: float = D["learning_rate"],
    pooler: str = D["pooler"],
    max_length: int = D["max_length"],
    model_options: dict = D["model_options"],
    weights: str = D["weights"],
    checkpoint_every: int = D["checkpoint_every"],
    eval_k: int = D["eval_k"],
    seed: int = D["seed"],
    force_claim: bool = D["force_claim"],
    claim_id: str = D["claim_id"],
    s3_secret_name: str = C["s3_secret_name"],
    gpu_type: str = C["gpu_type"],
    gpu_count: int = C["gpu_count"],
    node_selector: dict = C["node_selector"],
    tolerations: list = C["tolerations"],
    train_cpu: str = C["train_cpu"],
    train_memory: str = C["train_memory"],
):
    """Synthesize training data from queries and a corpus, and fine-tune on it.

    Args:
        query_data: The queries, one text per row (s3:// or a path): a one-column CSV, or
            JSONL or Parquet with a 'text' column.
        corpus_data: The documents, one text per row, in the same formats.
        output_uri: Where the model is exported (s3://bucket/prefix/ or a folder); the
            synthesized rows are kept beside it, in synthesized/margins.parquet.
        model: Catalogue name of the text model to fine-tune.
        relation_miner: Catalogue name of the text model that mines each query's
            candidates.
        cross_encoder: Catalogue name of the cross-encoder that scores them.
        relation_miner_weights: A model folder for the relation miner; empty for the
            mirror, a package or upstream.
        cross_encoder_weights: A cross-encoder folder; empty for the mirror or upstream.
        num_relations: Candidates per query: one positive and num_relations - 1 hard
            negatives.
        data_options: How the query and corpus files are read: format, dialect, encoding,
            size, max_bad_rows, max_field_chars.
        val_split: Fraction of the queries held out for evaluation.
        epochs: Passes over the synthesized rows.
        batch_size: Rows per step.
        learning_rate: Peak AdamW learning rate, reached after a linear warm-up.
        pooler: How token embeddings become one vector: mean, cls, max or GeM.
        max_length: Tokens kept of each text, in synthesis and training.
        model_options: The model's own options (see `finetuner list-model-options MODEL`).
        weights: Pretrained weights of the model to fine-tune: a model folder in the
            mirror's layout; empty for the mirror, a package or upstream.
        checkpoint_every: Steps between training checkpoints under output_uri/checkpoints/.
        eval_k: The cut-off k of the retrieval metrics.
        force_claim: Take output_uri over from the run that claimed it (see claim_id), once
            you have checked that that run is no longer running.
        claim_id: The id under which the run claims output_uri, so that no other run writes
            there; empty: the KFP run's id (`finetuner run` sets its own).
        seed: Seed of the synthesis, split, shuffling and initialisation.
        s3_secret_name: The Kubernetes Secret with the S3 credentials (AWS_ACCESS_KEY_ID,
            AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_DEFAULT_REGION) of every step.
        gpu_type: The train step's accelerator resource.
        gpu_count: GPUs of the train step; above 1 it trains data-parallel.
        node_selector: Node labels the train step must run on.
        tolerations: Taints the train step tolerates, as Kubernetes toleration objects.
        train_cpu: CPU request of the train step.
        train_memory: Memory request of the train step.
    """
    lookup = catalogue_lookup(
        model=model,
        pooler=pooler,
        pooler_p=D["pooler_p"],
        pooler_eps=D["pooler_eps"],
        max_length=max_length,
        loss=MARGIN_MSE,
        model_options=model_options,
        weights=weights,
        model_artifact="",
    )
    # A second run with this output stops here, before any data is read.
    claimed = claim_step(output_uri, claim_id, force_claim, after=lookup)
    synthesized = synthesize_pairs(
        query_data=query_data,
        corpus_data=corpus_data,
        relation_miner=relation_miner,
        cross_encoder=cross_encoder,
        relation_miner_weights=relation_miner_weights,
        cross_encoder_weights=cross_encoder_weights,
        num_relations=num_relations,
        max_length=max_length,
        data_options=data_options,
        seed=seed,
        output_uri=output_uri,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
    )
    synthesized.set_caching_options(False)
    data = preprocess(
        model_spec=lookup.output,
        train_data=synthesized.outputs["Output"],
        eval_data="",
        val_split=val_split,
        seed=seed,
        data_options={},
    )
    trained = train(
        model_spec=lookup.output,
        train_dataset=data.outputs["train_dataset"],
        eval_dataset=data.outputs["eval_dataset"],
        loss=MARGIN_MSE,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        sampler="random",
        num_items_per_class=D["num_items_per_class"],
        output_uri=output_uri,
        checkpoint_every=checkpoint_every,
        eval_k=eval_k,
        num_gpus=gpu_count,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
        # The other choices of the train step keep finetune's defaults here.
        **{name: D[name] for name in CHOICES if name != "eval_k"},
    )
    trained.set_caching_options(False)
    gpu_step(trained, gpu_type, gpu_count, node_selector, tolerations, train_cpu, train_memory)
    evaluated = evaluate(
        model_spec=lookup.output,
        model=trained.outputs["model"],
        eval_dataset=data.outputs["eval_dataset"],
        k=eval_k,
    )
    exported = export(
        model=trained.outputs["model"],
        metrics=evaluated.outputs["Output"],
        output_uri=output_uri,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
    )
    exported.set_caching_options(False)
    for task in (lookup, claimed, synthesized, data, trained, evaluated, exported):
        s3_step(task, s3_secret_name)
