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
    "data_options": {},
    "sampler": "auto",
    "num_items_per_class": 4,
    "checkpoint_every": 500,
    "eval_k": 10,
    "seed": 42,
}
