from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from finetuner.components import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    model_spec: dict,
    train_dataset: Input[Dataset],
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
    run_id: str,
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Fine-tune the backbone on the training data (CUDA with bf16 when a GPU is present),
    with checkpoints under output_uri that a restarted step resumes from."""
    from finetuner import steps
    from finetuner.promote import run_output

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
        },
    )
    for name in ("steps", "samples_per_second", "final_loss"):
        train_metrics.log_metric(name, result[name])
