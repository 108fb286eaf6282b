"""Every run parameter of the pipelines, declared once: its type, default, bounds, choices,
description and group. The pipelines' signatures and docstrings, the CLI flags, the
keywords of `finetuner.fit`, the UI's dropdowns and the README's table are made from these
(finetuner.parameters.generate)."""

from __future__ import annotations

from typing import Literal

from finetuner.parameters.base import Auto, NoneWord, Parameters, param

DEFAULT_MODEL = "minilm-l6-en"


class DataParameters(Parameters):
    train_data: str = param(
        description="Training data, s3:// or a path: CSV of query,document pairs (text,image "
        "for CLIP), item,label rows or text1,text2,score rows; or JSONL or Parquet with those "
        "column names; or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv and "
        "qrels/test.tsv), which evaluates graded nDCG over its whole corpus.",
        group="data",
    )
    eval_data: str = param(
        "",
        "CSV of held-out pairs; empty to hold out val_split of train_data. With a BEIR folder: "
        "a qrels TSV over its corpus and queries; empty for its qrels/test.tsv.",
        "data",
    )
    val_split: float = param(
        0.2, "Fraction of the queries held out for evaluation when eval_data is empty.", "data"
    )
    data_options: dict = param(
        {},
        "How the data is read: format, dialect, encoding, is_labeled, size, max_bad_rows (bad "
        'rows skipped before the run fails; default 0) and max_field_chars, e.g. {"is_labeled":'
        ' true, "max_bad_rows": 10}.',
        "data",
    )


class SynthesisParameters(Parameters):
    query_data: str = param(
        description="The queries, one text per row (s3:// or a path): a one-column CSV, or "
        "JSONL or Parquet with a 'text' column.",
        group="synthesis",
    )
    corpus_data: str = param(
        description="The documents, one text per row, in the same formats.", group="synthesis"
    )
    relation_miner: str = param(
        "sbert-base-en",
        "Catalogue name of the text model that mines each query's candidates.",
        "synthesis",
    )
    cross_encoder: str = param(
        "crossencoder-base-en", "Catalogue name of the cross-encoder that scores them.",
        "synthesis",
    )  # fmt: skip
    relation_miner_weights: str = param(
        "",
        "A model folder for the relation miner; empty for the mirror, a package or upstream.",
        "synthesis",
    )
    cross_encoder_weights: str = param(
        "", "A cross-encoder folder; empty for the mirror or upstream.", "synthesis"
    )
    num_relations: int = param(
        10, "Candidates per query: one positive and num_relations - 1 hard negatives.",
        "synthesis",
    )  # fmt: skip


class ModelParameters(Parameters):
    model: str = param(
        DEFAULT_MODEL, "Catalogue name of the backbone (see `finetuner describe-models`).",
        "model",
    )  # fmt: skip
    pooler: str = param(
        "auto",
        "How token embeddings become one vector: mean, cls, max or GeM; auto: the model's "
        "own (mean for text models). A model that pools as it was pretrained (CLIP, "
        "PointNet++) refuses any other value.",
        "model",
    )
    pooler_p: float | Auto = param(
        "auto", "GeM's exponent p (1 is mean pooling); auto: the model's own (3).", "model"
    )
    pooler_eps: float | Auto = param(
        "auto", "GeM's eps, the floor of |x| before the power; auto: the model's own (1e-6).",
        "model",
    )  # fmt: skip
    max_length: int | Auto = param(
        "auto", "Tokens kept of each text; auto: the model's own (128 for text models).",
        "model",
    )  # fmt: skip
    model_options: dict = param(
        {},
        'The model\'s own options, e.g. {"input_size": 128} for mlp (see `finetuner '
        "list-model-options MODEL`).",
        "model",
    )
    weights: str = param(
        "",
        "Pretrained weights to start from: a model folder (s3:// or a path) in the model "
        "mirror's layout; empty for the mirror, a package or upstream.",
        "model",
    )
    model_artifact: str = param(
        "",
        "A previous run's export (its output_uri) to continue training from, with the same "
        "model and model options; empty: start from the pretrained weights.",
        "model",
    )


class TrainOptions(Parameters):
    """The train step's options: it gets them as one dict and builds these from it."""

    loss: str = param(
        "auto",
        "Training loss; auto: by the data, MultipleNegativesRankingLoss for pairs, "
        "TripletMarginLoss for labeled data, CoSENTLoss for scored data, CLIPLoss for CLIP "
        "models. Pairs: MultipleNegativesRankingLoss or TripletMarginLoss; labeled data: "
        "TripletMarginLoss, ArcFaceLoss, CosFaceLoss, SubCenterArcFaceLoss or any "
        "pytorch-metric-learning loss; scored data: CoSENTLoss or CosineSimilarityLoss. A "
        "loss that does not fit the data is refused.",
        "training",
    )
    epochs: int | Auto = param(
        "auto", "Passes over the training data; auto: the model family's default.",
        "training", ge=1,
    )  # fmt: skip
    batch_size: int = param(
        32, "Rows per step; the other pairs of a batch are the negatives.", "training",
        why="in-batch negatives and positives need two or more rows in a batch", ge=2,
    )  # fmt: skip
    learning_rate: float | Auto = param(
        "auto",
        "Peak learning rate, reached after the warm-up; auto: the model family's default.",
        "training",
        why="a step of the whole gradient or more makes training diverge",
        gt=0,
        lt=1,
    )
    warmup_ratio: float = param(
        0.1,
        "Share of the batch steps spent warming the learning rate up, unless "
        "num_warmup_steps is given.",
        "training",
        why="it is the share of the steps spent warming up",
        ge=0,
        lt=1,
    )
    weight_decay: float = param(
        0.01,
        "Weight decay of the optimizer, where it has one (none on biases and LayerNorm "
        "weights); optimizer_options' weight_decay wins.",
        "training",
        ge=0,
    )
    sampler: Literal["auto", "random", "class", "no_duplicates"] = param(
        "auto",
        "Batches: random, class (labeled data) or no_duplicates; auto: class for labeled "
        "data with a pytorch-metric-learning loss, random otherwise.",
        "training",
    )
    num_items_per_class: int = param(
        4, "Items of each label in a batch, for the class sampler.", "training",
        why="the class sampler gives each item another of its label in the batch, as its "
        "positive", ge=2,
    )  # fmt: skip
    loss_options: dict = param({}, 'The loss\'s options, e.g. {"margin": 0.1}.', "training")
    miner: str = param(
        "", "A pytorch-metric-learning miner for its losses, e.g. TripletMarginMiner.",
        "training",
    )  # fmt: skip
    miner_options: dict = param(
        {}, 'The miner\'s options, e.g. {"type_of_triplets": "semihard"}.', "training"
    )
    optimizer: str = param("AdamW", "Any torch.optim optimizer, e.g. AdamW, SGD.", "training")
    optimizer_options: dict = param(
        {}, 'The optimizer\'s options, e.g. {"momentum": 0.9}.', "training"
    )
    layerwise_decay: float | NoneWord = param(
        "none",
        "Learning rate x this per transformer layer below the top; none: the same rate for "
        "every layer.",
        "training",
        gt=0,
        le=1,
    )
    scheduler: str = param(
        "linear",
        "linear, cosine, cosine_with_restarts, polynomial, constant or constant_with_warmup.",
        "training",
    )
    scheduler_options: dict = param(
        {}, 'The scheduler\'s options, e.g. {"num_cycles": 2}.', "training"
    )
    num_warmup_steps: int | Auto = param(
        "auto",
        "Warm-up steps of the schedule; auto: warmup_ratio of the batch steps.",
        "training",
        ge=0,
    )
    scheduler_step: Literal["batch", "epoch"] = param(
        "batch", "Step the schedule after every batch, or every epoch.", "training"
    )
    wiseft_alpha: float = param(
        1.0,
        "WiSE-FT: the model ends as alpha x fine-tuned + (1 - alpha) x pretrained weights; "
        "1: fine-tuned only.",
        "training",
        why="it weighs the fine-tuned weights against the pretrained ones",
        ge=0,
        le=1,
    )
    loss_optimizer: str = param(
        "",
        "Optimizer of a loss's own weights (ArcFace's class centres); empty: the same kind as "
        "optimizer.",
        "training",
    )
    loss_optimizer_options: dict = param(
        {}, 'The loss optimizer\'s options, e.g. {"momentum": 0.9}.', "training"
    )
    loss_learning_rate: float = param(
        1e-2, "Learning rate of a loss's own weights (ArcFace's class centres).", "training",
        gt=0, lt=10,
    )  # fmt: skip
    checkpoint_every: int = param(
        500,
        "Steps between training checkpoints (also one at each epoch's end), kept under "
        "output_uri/checkpoints/ until the model is trained: a restarted or rerun train step "
        "resumes from the newest.",
        "training",
        why="it counts steps",
        ge=1,
    )
    seed: int = param(42, "Seed of the split, shuffling and initialisation.", "training")
    # -- hard negatives
    hard_negatives: int = param(
        0,
        "Hard negatives mined from the corpus (the documents of the train pairs) per query, "
        "before training, for MultipleNegativesRankingLoss; 0: off, the batch's other documents "
        "only.",
        "training",
        why="each query's mined negatives join its batch's documents; 0 turns mining off",
        ge=0,
        le=64,
    )
    hard_negatives_miner: str = param(
        "auto",
        "The text model that retrieves the candidates: auto, the model being trained (before "
        "training); or a catalogue name, e.g. sbert-base-en.",
        "training",
    )
    hard_negatives_range_min: int = param(
        0,
        "Candidates skipped first: those ranked 0 to range_min - 1 by the miner (the query's "
        "positives are never ranked).",
        "training",
        why="it is a rank, counted from 0",
        ge=0,
    )
    hard_negatives_range_max: int = param(
        50,
        "Candidates ranked range_max and below are not considered; at least range_min + "
        "hard_negatives.",
        "training",
        why="it is a rank, counted from 0",
        ge=1,
        le=1000,
    )
    hard_negatives_margin: float | NoneWord = param(
        "none",
        "A candidate stays a negative only if it scores below each positive of its query by "
        "this margin (see hard_negatives_margin_kind); none: no margin (0 with a "
        "cross-encoder).",
        "training",
        why="a margin below 0 would keep candidates scored above the positive",
        ge=0,
    )
    hard_negatives_margin_kind: Literal["absolute", "relative"] = param(
        "absolute",
        "absolute: score <= positive - margin; relative: score <= positive - |positive| x margin.",
        "training",
    )
    hard_negatives_cross_encoder: str = param(
        "",
        "Catalogue name of a cross-encoder that rescores the positives and candidates, the "
        "margin then applying to its scores, which drops false negatives; empty: the miner's "
        "cosines.",
        "training",
    )
    # -- gradcache
    mini_batch_size: int = param(
        0,
        "GradCache: embed each batch in mini-batches of this many rows, for the gradients of "
        "the whole batch, with all its in-batch negatives, in the memory of a mini-batch (at "
        "the cost of a second forward pass); 0: off.",
        "training",
        why="it counts rows; 0 turns GradCache off",
        ge=0,
    )
    # -- matryoshka
    matryoshka_dims: list = param(
        [],
        "Matryoshka embeddings: the loss is the weighted sum of the loss on the first N "
        "dimensions of the embeddings, renormalised, for each N here (list the full width "
        "too, to keep training it), e.g. [384, 256, 128, 64], so that they can be "
        "truncated; evaluation reports the metrics at each (ndcg@10@dim128). Each N from 1 "
        "to the model's embedding width; empty: off.",
        "training",
    )
    matryoshka_weights: list = param(
        [],
        "The weight of the loss at each of matryoshka_dims, in their order, e.g. [1, 1, 0.5, "
        "0.5]; empty: 1 each.",
        "training",
    )
    # -- lora
    lora_r: int = param(
        0,
        "LoRA: the rank of low-rank adapters trained in place of the backbone's weights (text "
        "and CLIP models); the export holds the adapter alone (model/adapter/) and the merged "
        "model. 0: full fine-tuning.",
        "training",
        why="0 trains every weight",
        ge=0,
    )
    lora_alpha: float | Auto = param(
        "auto", "LoRA's scale: the adapters' update is x lora_alpha / lora_r; auto: 2 x lora_r.",
        "training", why="it scales the update", gt=0,
    )  # fmt: skip
    lora_dropout: float = param(
        0.05, "Dropout on the LoRA adapters' input.", "training",
        why="it is a probability", ge=0, lt=1,
    )  # fmt: skip
    lora_target_modules: str = param(
        "auto",
        "The modules that get LoRA adapters: names separated by commas (a module matches "
        "when its dotted name ends with one), e.g. query,value; auto: the model family's "
        "(query,key,value,dense for BERT-like text models; the MLP projections c_fc,c_proj "
        "of CLIP's towers, to which attn adds their attention).",
        "training",
    )
    evaluate_every_epoch: bool = param(
        True,
        "Compute the retrieval metrics on the eval data after every epoch (logged per epoch; "
        "needed to monitor them).",
        "evaluation",
    )
    eval_k: int = param(
        10, "The cut-off k of the retrieval metrics (ndcg@k, mrr@k, ...).", "evaluation",
        why="metrics look at the top k results", ge=1,
    )  # fmt: skip
    best_model_metric: str = param(
        "",
        "Keep the model of the epoch that is best by this metric, e.g. ndcg@10 or train_loss; "
        "empty: keep the last epoch's model.",
        "evaluation",
    )
    best_model_mode: Literal["auto", "max", "min"] = param(
        "auto", "max, min, or auto (min for losses, max for the rest).", "evaluation"
    )
    early_stopping_patience: int = param(
        0,
        "Stop after this many epochs without improvement of the monitored metric; 0: never "
        "stop early.",
        "evaluation",
        why="it counts epochs; 0 never stops early",
        ge=0,
    )
    early_stopping_options: dict = param(
        {},
        "monitor (default: best_model_metric, else ndcg@eval_k), mode, min_delta and "
        'baseline, e.g. {"min_delta": 0.001}.',
        "evaluation",
    )


class OutputParameters(Parameters):
    output_uri: str = param(
        description="Where the model is exported (s3://bucket/prefix/ or a folder); {run_id} "
        "in it becomes the run's id, e.g. s3://bucket/models/minilm/{run_id} for a schedule, "
        "whose runs each need a new folder.",
        group="output",
    )
    force_claim: bool = param(
        False,
        "Take output_uri over from the run that claimed it (see claim_id), once you have "
        "checked that that run is no longer running.",
        "output",
    )
    claim_id: str = param(
        "",
        "The id under which the run claims output_uri, so that no other run writes there; "
        "empty: the KFP run's id (`finetuner run` sets its own).",
        "output",
        local=False,
    )
    promote: bool = param(
        False,
        "Promotion gate: copy the export to latest/ beside it (the folder above output_uri) "
        "when promotion_metric beats the model promoted there.",
        "output",
    )
    promotion_metric: str = param(
        "auto",
        "The metric the gate compares, e.g. ndcg, mrr@10, spearman; auto: ndcg@eval_k, or "
        "spearman for scored data.",
        "output",
    )
    promotion_min_delta: float = param(
        0.0, "The least improvement of promotion_metric that promotes.", "output"
    )
    # -- model registry
    model_registry_url: str = param(
        "",
        "Kubeflow Model Registry's REST address (http:// or https://, with its port); with "
        "registered_model_name, the run records its export there as a version named after "
        "the run. Empty: register nothing.",
        "output",
    )
    registered_model_name: str = param(
        "",
        "The registered model the run adds a version to (created when missing); empty: "
        "register nothing.",
        "output",
    )
    # -- int8
    int8: bool = param(
        True,
        "Also export onnx/model.int8.onnx (one per CLIP tower): onnxruntime's dynamic int8 "
        "quantization, smaller and faster on CPU, kept only when its metric on the eval data "
        "drops by at most int8_max_drop; false: no int8 file.",
        "output",
    )
    int8_max_drop: float = param(
        0.005,
        "The largest drop of ndcg@eval_k (spearman for scored data) from the fp32 ONNX model "
        "to the int8 one, on the eval data, that keeps the int8 file.",
        "output",
        why="it is a drop of a metric that lies in [0, 1]",
        ge=0,
        le=1,
    )


class ClusterParameters(Parameters):
    """The Kubernetes settings (finetuner.orchestration.cluster); kfp.local ignores all but
    gpu_count."""

    s3_secret_name: str = param(
        "finetuner-s3",
        "Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL and "
        "AWS_DEFAULT_REGION for every step that reads or writes S3.",
        "cluster",
        local=False,
    )
    gpu_type: str = param(
        "nvidia.com/gpu", "Accelerator resource of the train step, e.g. nvidia.com/gpu.",
        "cluster", local=False,
    )  # fmt: skip
    gpu_count: int = param(
        1,
        "GPUs of the train step; above 1 it trains data-parallel, one process per GPU through "
        "torchrun (batch_size is per GPU).",
        "cluster",
    )
    node_selector: dict = param(
        {},
        'Node labels the train step must run on, e.g. {"nvidia.com/gpu.product": '
        '"NVIDIA-H100-80GB-HBM3"}.',
        "cluster",
        local=False,
    )
    # Most clusters add the toleration of the GPU taint to pods that request GPUs themselves
    # (the ExtendedResourceToleration admission plugin); other taints go here.
    tolerations: list = param(
        [],
        'Taints the train step tolerates, as Kubernetes toleration objects, e.g. [{"key": '
        '"gpu", "operator": "Exists", "effect": "NoSchedule"}].',
        "cluster",
        local=False,
    )
    train_cpu: str = param(
        "4", "CPU request of the train step, e.g. 4 or 3500m.", "cluster", local=False
    )
    train_memory: str = param(
        "16Gi", "Memory request of the train step, e.g. 32Gi.", "cluster", local=False
    )
    # -- model registry
    model_registry_secret_name: str = param(
        "model-registry-token",
        "Kubernetes Secret whose MODEL_REGISTRY_TOKEN the register step sends to the Model "
        "Registry; without the Secret it sends the step's service-account token.",
        "cluster",
        local=False,
    )
    # -- trainjob
    num_nodes: int = param(
        1,
        "Nodes of the train step; above 1 it runs as a Kubeflow Trainer TrainJob on the "
        "torch-distributed runtime, num_nodes x gpu_count processes (batch_size is per "
        "process), with output_uri on S3.",
        "cluster",
        why="it counts nodes",
        ge=1,
    )


class RunParameters(
    DataParameters,
    SynthesisParameters,
    ModelParameters,
    TrainOptions,
    OutputParameters,
    ClusterParameters,
):
    """Every run parameter of every pipeline, each declared once; each pipeline takes some
    (see finetuner.parameters.pipelines)."""
