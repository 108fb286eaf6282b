"""Defaults of the finetune pipeline's parameters: one source for the pipeline signature,
`finetuner run` and `finetuner.fit`."""

PIPELINE_DEFAULTS = {
    "model": "minilm-l6-en",
    "eval_data": "",
    "val_split": 0.2,
    "loss": "MultipleNegativesRankingLoss",
    "epochs": 1,
    "batch_size": 32,
    "learning_rate": 5e-5,
    "pooler": "mean",
    "pooler_p": 3.0,
    "pooler_eps": 1e-6,
    "max_length": 128,
    "model_options": {},
    "weights": "",
    "model_artifact": "",
    "data_options": {},
    "sampler": "auto",
    "num_items_per_class": 4,
    "checkpoint_every": 500,
    "loss_options": {},
    "miner": "",
    "miner_options": {},
    "optimizer": "AdamW",
    "optimizer_options": {},
    "layerwise_decay": 1.0,
    "scheduler": "linear",
    "scheduler_options": {},
    "num_warmup_steps": -1,
    "scheduler_step": "batch",
    "wiseft_alpha": 1.0,
    "loss_optimizer": "",
    "loss_optimizer_options": {},
    "loss_learning_rate": 1e-2,
    "evaluate_every_epoch": True,
    "best_model_metric": "",
    "best_model_mode": "auto",
    "early_stopping_patience": 0,
    "early_stopping_options": {},
    "eval_k": 10,
    "seed": 42,
    # finetuner.claim: take over the output from a crashed run; the id a run claims it under
    # (empty: the KFP run's id; `finetuner run` sets its own).
    "force_claim": False,
    "claim_id": "",
}

# Parameters of the pipeline on a cluster: the promotion gate and the Kubernetes settings
# (finetuner.cluster). kfp.local ignores the Kubernetes ones.
CLUSTER_DEFAULTS = {
    "promote": False,
    "promotion_metric": "auto",
    "promotion_min_delta": 0.0,
    "s3_secret_name": "finetuner-s3",
    "gpu_type": "nvidia.com/gpu",
    "gpu_count": 1,
    "node_selector": {},
    # Most clusters add the toleration of the GPU taint to pods that request GPUs themselves
    # (the ExtendedResourceToleration admission plugin); other taints go here.
    "tolerations": [],
    "train_cpu": "4",
    "train_memory": "16Gi",
}
