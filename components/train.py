from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from finetuner.components import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train(
    model_spec: dict,
    train_dataset: Input[Dataset],
    eval_dataset: Input[Dataset],
    options: dict,
    output_uri: str,
    loss_options: dict,
    miner_options: dict,
    optimizer_options: dict,
    scheduler_options: dict,
    loss_optimizer_options: dict,
    early_stopping_options: dict,
    num_gpus: int,
    num_nodes: int,
    trainjob: dict,
    node_selector: dict,
    tolerations: list,
    run_id: str,
    claim: str,
    model: Output[Model],
    train_metrics: Output[Metrics],
):
    """Fine-tune the backbone on the training data (CUDA with bf16 when a GPU is present),
    evaluating after each epoch, with checkpoints under output_uri that a restarted step
    resumes from; data-parallel over num_gpus GPUs through torchrun. Checkpoints are written
    only while the run holds its claim on output_uri. `options` are the training options
    (finetuner.parameters.TrainOptions), each value as KFP hands it over (text), but for
    those that are JSON objects (STRUCT_OPTIONS), which come as inputs of their own; the
    values that auto resolved to go to train_metrics. With num_nodes > 1 the step drives a
    Kubeflow Trainer TrainJob of num_nodes x num_gpus processes (`trainjob`: its resources
    and S3 Secret) and takes its model over from S3."""
    from finetuner.orchestration.failures import reported

    with reported("train"):
        from finetuner.export.promote import run_output
        from finetuner.orchestration import steps

        steps.check_claim(output_uri, run_id, claim)
        train = steps.train
        if int(num_nodes) > 1:
            from finetuner.orchestration import trainjob as job

            nodes = job.Nodes.of(num_nodes, num_gpus, trainjob, node_selector, tolerations)
            train = job.driver(nodes, run_id)
        result = train(
            model_spec,
            train_dataset.path,
            model.path,
            {
                **options,
                "loss_options": loss_options,
                "miner_options": miner_options,
                "optimizer_options": optimizer_options,
                "scheduler_options": scheduler_options,
                "loss_optimizer_options": loss_optimizer_options,
                "early_stopping_options": early_stopping_options,
            },
            run_output(output_uri, run_id),
            eval_dataset.path,
            num_gpus,
        )
        names = ("steps", "samples_per_second", "final_loss", "epochs", "best_epoch")
        used = steps.resolved(result)
        for name, value in steps.loggable({name: result[name] for name in names}).items():
            train_metrics.log_metric(name, value)
        train_metrics.log_metric("learning_rate", used["learning_rate"])
        train_metrics.metadata.update({"loss": used["loss"], "sampler": used["sampler"]})
        for epoch in result["history"]:  # each epoch's metrics, e.g. epoch2/ndcg@10
            for name, value in steps.loggable(epoch).items():
                if name != "epoch":
                    train_metrics.log_metric(f"epoch{epoch['epoch']}/{name}", value)
