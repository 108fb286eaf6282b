"""The `finetune` pipeline: catalogue-lookup -> claim-output -> preprocess -> train -> evaluate
-> export -> promote."""

from kfp import dsl

from finetuner.cluster import gpu_step, s3_step
from finetuner.components.catalogue_lookup import catalogue_lookup
from finetuner.components.claim import claim_step
from finetuner.components.evaluate import evaluate
from finetuner.components.export import export
from finetuner.components.preprocess import preprocess
from finetuner.components.promote import promote as promote_step
from finetuner.components.train import train
from finetuner.defaults import CLUSTER_DEFAULTS as C
from finetuner.defaults import PIPELINE_DEFAULTS as D


@dsl.pipeline(
    name="finetune",
    description="Fine-tune an embedding model from the catalogue on (query, document) pairs.",
)
def finetune(
    train_data: str,
    output_uri: str,
    model: str = D["model"],
    eval_data: str = D["eval_data"],
    val_split: float = D["val_split"],
    loss: str = D["loss"],
    epochs: int = D["epochs"],
    batch_size: int = D["batch_size"],
    learning_rate: float = D["learning_rate"],
    pooler: str = D["pooler"],
    pooler_p: float = D["pooler_p"],
    pooler_eps: float = D["pooler_eps"],
    max_length: int = D["max_length"],
    model_options: dict = D["model_options"],
    weights: str = D["weights"],
    model_artifact: str = D["model_artifact"],
    data_options: dict = D["data_options"],
    sampler: str = D["sampler"],
    num_items_per_class: int = D["num_items_per_class"],
    checkpoint_every: int = D["checkpoint_every"],
    loss_options: dict = D["loss_options"],
    miner: str = D["miner"],
    miner_options: dict = D["miner_options"],
    optimizer: str = D["optimizer"],
    optimizer_options: dict = D["optimizer_options"],
    layerwise_decay: float = D["layerwise_decay"],
    scheduler: str = D["scheduler"],
    scheduler_options: dict = D["scheduler_options"],
    num_warmup_steps: int = D["num_warmup_steps"],
    scheduler_step: str = D["scheduler_step"],
    wiseft_alpha: float = D["wiseft_alpha"],
    loss_optimizer: str = D["loss_optimizer"],
    loss_optimizer_options: dict = D["loss_optimizer_options"],
    loss_learning_rate: float = D["loss_learning_rate"],
    evaluate_every_epoch: bool = D["evaluate_every_epoch"],
    best_model_metric: str = D["best_model_metric"],
    best_model_mode: str = D["best_model_mode"],
    early_stopping_patience: int = D["early_stopping_patience"],
    early_stopping_options: dict = D["early_stopping_options"],
    eval_k: int = D["eval_k"],
    seed: int = D["seed"],
    force_claim: bool = D["force_claim"],
    claim_id: str = D["claim_id"],
    promote: bool = C["promote"],
    promotion_metric: str = C["promotion_metric"],
    promotion_min_delta: float = C["promotion_min_delta"],
    s3_secret_name: str = C["s3_secret_name"],
    gpu_type: str = C["gpu_type"],
    gpu_count: int = C["gpu_count"],
    node_selector: dict = C["node_selector"],
    tolerations: list = C["tolerations"],
    train_cpu: str = C["train_cpu"],
    train_memory: str = C["train_memory"],
):
    """Fine-tune an embedding model from the catalogue on (query, document) pairs.

    Args:
        train_data: Training data, s3:// or a path: CSV of query,document pairs (text,image
            for CLIP), item,label rows or text1,text2,score rows; or JSONL or Parquet with
            those column names.
        output_uri: Where the model is exported (s3://bucket/prefix/ or a folder); {run_id}
            in it becomes the run's id, e.g. s3://bucket/models/minilm/{run_id} for a
            schedule, whose runs each need a new folder.
        model: Catalogue name of the backbone (see `finetuner describe-models`).
        eval_data: CSV of held-out pairs; empty to hold out val_split of train_data.
        val_split: Fraction of the queries held out for evaluation when eval_data is empty.
        loss: Training loss. Pairs: MultipleNegativesRankingLoss (default) or
            TripletMarginLoss; CLIP: CLIPLoss; labeled data: TripletMarginLoss; scored data:
            CoSENTLoss or CosineSimilarityLoss.
        epochs: Passes over the training pairs.
        batch_size: Pairs per step; the other pairs of a batch are the negatives.
        learning_rate: Peak AdamW learning rate, reached after a linear warm-up.
        pooler: How token embeddings become one vector: mean, cls, max or GeM.
        pooler_p: GeM's exponent p (1 is mean pooling); used when pooler is GeM.
        pooler_eps: GeM's eps, the floor of |x| before the power.
        max_length: Tokens kept of each text.
        model_options: The model's own options, e.g. {"input_size": 128} for mlp (see
            `finetuner list-model-options MODEL`).
        data_options: How the data is read: format, dialect, encoding, is_labeled, size,
            max_bad_rows (bad rows skipped before the run fails; default 0) and
            max_field_chars, e.g. {"is_labeled": true, "max_bad_rows": 10}.
        sampler: Batches: auto, random, class (labeled data) or no_duplicates.
        num_items_per_class: Items of each label in a batch, for the class sampler.
        loss_options: The loss's options, e.g. {"margin": 0.1}.
        miner: A pytorch-metric-learning miner for its losses, e.g. TripletMarginMiner.
        miner_options: The miner's options, e.g. {"type_of_triplets": "semihard"}.
        optimizer: Any torch.optim optimizer, e.g. AdamW, SGD.
        optimizer_options: The optimizer's options, e.g. {"momentum": 0.9}.
        layerwise_decay: Learning rate x this per transformer layer below the top; 1: none.
        scheduler: linear, cosine, cosine_with_restarts, polynomial, constant or
            constant_with_warmup.
        scheduler_options: The scheduler's options, e.g. {"num_cycles": 2}.
        num_warmup_steps: Warm-up steps of the schedule; -1: warmup_ratio of the batch steps.
        scheduler_step: Step the schedule after every batch, or every epoch.
        wiseft_alpha: WiSE-FT: the model ends as alpha x fine-tuned + (1 - alpha) x
            pretrained weights; 1: fine-tuned only.
        loss_optimizer: Optimizer of a loss's own weights (ArcFace's class centres); empty:
            the same kind as optimizer.
        loss_optimizer_options: The loss optimizer's options, e.g. {"momentum": 0.9}.
        loss_learning_rate: Learning rate of a loss's own weights (ArcFace's class centres).
        evaluate_every_epoch: Compute the retrieval metrics on the eval data after every
            epoch (logged per epoch; needed to monitor them).
        best_model_metric: Keep the model of the epoch that is best by this metric, e.g.
            ndcg@10 or train_loss; empty: keep the last epoch's model.
        best_model_mode: max, min, or auto (min for losses, max for the rest).
        early_stopping_patience: Stop after this many epochs without improvement of the
            monitored metric; 0: never stop early.
        early_stopping_options: monitor (default: best_model_metric, else ndcg@eval_k),
            mode, min_delta and baseline, e.g. {"min_delta": 0.001}.
        checkpoint_every: Steps between training checkpoints (also one at each epoch's
            end), kept under output_uri/checkpoints/ until the model is trained: a
            restarted or rerun train step resumes from the newest.
        weights: Pretrained weights to start from: a model folder (s3:// or a path) in the
            model mirror's layout; empty for the mirror, a package or upstream.
        model_artifact: A previous run's export (its output_uri) to continue training from,
            with the same model and model options; empty: start from the pretrained weights.
        eval_k: The cut-off k of the retrieval metrics (ndcg@k, mrr@k, ...).
        force_claim: Take output_uri over from the run that claimed it (see claim_id), once
            you have checked that that run is no longer running.
        claim_id: The id under which the run claims output_uri, so that no other run writes
            there; empty: the KFP run's id (`finetuner run` sets its own).
        seed: Seed of the split, shuffling and initialisation.
        promote: Promotion gate: copy the export to latest/ beside it (the folder above
            output_uri) when promotion_metric beats the model promoted there.
        promotion_metric: The metric the gate compares, e.g. ndcg, mrr@10, spearman; auto:
            ndcg@eval_k, or spearman for scored data.
        promotion_min_delta: The least improvement of promotion_metric that promotes.
        s3_secret_name: Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
            AWS_ENDPOINT_URL and AWS_DEFAULT_REGION for every step that reads or writes S3.
        gpu_type: Accelerator resource of the train step, e.g. nvidia.com/gpu.
        gpu_count: GPUs of the train step; above 1 it trains data-parallel, one process
            per GPU through torchrun (batch_size is per GPU).
        node_selector: Node labels the train step must run on, e.g.
            {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}.
        tolerations: Taints the train step tolerates, as Kubernetes toleration objects, e.g.
            [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}].
        train_cpu: CPU request of the train step, e.g. 4 or 3500m.
        train_memory: Memory request of the train step, e.g. 32Gi.
    """
    lookup = catalogue_lookup(
        model=model,
        pooler=pooler,
        pooler_p=pooler_p,
        pooler_eps=pooler_eps,
        max_length=max_length,
        loss=loss,
        model_options=model_options,
        weights=weights,
        model_artifact=model_artifact,
    )
    # A second run with this output stops here, before any data is read.
    claimed = claim_step(output_uri, claim_id, force_claim, after=lookup)
    data = preprocess(
        model_spec=lookup.output,
        train_data=train_data,
        eval_data=eval_data,
        val_split=val_split,
        seed=seed,
        data_options=data_options,
    ).after(claimed)
    trained = train(
        model_spec=lookup.output,
        train_dataset=data.outputs["train_dataset"],
        eval_dataset=data.outputs["eval_dataset"],
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        sampler=sampler,
        num_items_per_class=num_items_per_class,
        output_uri=output_uri,
        checkpoint_every=checkpoint_every,
        loss_options=loss_options,
        miner=miner,
        miner_options=miner_options,
        optimizer=optimizer,
        optimizer_options=optimizer_options,
        layerwise_decay=layerwise_decay,
        scheduler=scheduler,
        scheduler_options=scheduler_options,
        num_warmup_steps=num_warmup_steps,
        scheduler_step=scheduler_step,
        wiseft_alpha=wiseft_alpha,
        loss_optimizer=loss_optimizer,
        loss_optimizer_options=loss_optimizer_options,
        loss_learning_rate=loss_learning_rate,
        evaluate_every_epoch=evaluate_every_epoch,
        eval_k=eval_k,
        best_model_metric=best_model_metric,
        best_model_mode=best_model_mode,
        early_stopping_patience=early_stopping_patience,
        early_stopping_options=early_stopping_options,
        num_gpus=gpu_count,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
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
    gate = promote_step(
        export=exported.output,
        metrics=evaluated.outputs["Output"],
        enabled=promote,
        promotion_metric=promotion_metric,
        min_delta=promotion_min_delta,
        claim=claimed.output,
        force_claim=force_claim,
    )
    gate.set_caching_options(False)
    # Every step that may read or write s3:// URIs; evaluate reads only KFP artifacts,
    # but model weights may come from an S3 mirror.
    for task in (lookup, claimed, data, trained, evaluated, exported, gate):
        s3_step(task, s3_secret_name)
