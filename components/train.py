from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from finetuner.components import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    model_spec: dict,
    train_dataset: Input[Dataset],
    eval_dataset: Input[Dataset],
    loss: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    sampler: str,
    num_items_per_class: int,
    output_uri: str,
    checkpoint_every: int,
    loss_options: dict,
    miner: str,
    miner_options: dict,
    optimizer: str,
    optimizer_options: dict,
    layerwise_decay: float,
    scheduler: str,
    scheduler_options: dict,
    num_warmup_steps: int,
    scheduler_step: str,
    wiseft_alpha: float,
    loss_optimizer: str,
    loss_optimizer_options: dict,
    loss_learning_rate: float,
    evaluate_every_epoch: bool,
    eval_k: int,
    best_model_metric: str,
    best_model_mode: str,
    early_stopping_patience: int,
    early_stopping_options: dict,
    num_gpus: int,
    run_id: str,
    claim: str,
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Fine-tune the backbone on the training data (CUDA with bf16 when a GPU is present),
    evaluating after each epoch, with checkpoints under output_uri that a restarted step
    resumes from; data-parallel over num_gpus GPUs through torchrun. Checkpoints are written
    only while the run holds its claim on output_uri."""
    from finetuner.failures import reported

    with reported("train"):
        from finetuner import steps
        from finetuner.promote import run_output

        steps.check_claim(output_uri, run_id, claim)
        result = steps.train(
            model_spec,
            train_dataset.path,
            model.path,
            loss,
            epochs,
            batch_size,
            learning_rate,
            seed,
            sampler,
            num_items_per_class,
            run_output(output_uri, run_id),
            checkpoint_every,
            {
                "loss_options": loss_options,
                "miner": miner,
                "miner_options": miner_options,
                "optimizer": optimizer,
                "optimizer_options": optimizer_options,
                "layerwise_decay": layerwise_decay,
                "scheduler": scheduler,
                "scheduler_options": scheduler_options,
                "num_warmup_steps": num_warmup_steps,
                "scheduler_step": scheduler_step,
                "wiseft_alpha": wiseft_alpha,
                "loss_optimizer": loss_optimizer,
                "loss_optimizer_options": loss_optimizer_options,
                "loss_learning_rate": loss_learning_rate,
                "evaluate_every_epoch": evaluate_every_epoch,
                "eval_k": eval_k,
                "best_model_metric": best_model_metric,
                "best_model_mode": best_model_mode,
                "early_stopping_patience": early_stopping_patience,
                "early_stopping_options": early_stopping_options,
            },
            eval_dataset.path,
            num_gpus,
        )
        names = ("steps", "samples_per_second", "final_loss", "epochs", "best_epoch")
        for name, value in steps.loggable({name: result[name] for name in names}).items():
            train_metrics.log_metric(name, value)
        for epoch in result["history"]:  # each epoch's metrics, e.g. epoch2/ndcg@10
            for name, value in steps.loggable(epoch).items():
                if name != "epoch":
                    train_metrics.log_metric(f"epoch{epoch['epoch']}/{name}", value)
