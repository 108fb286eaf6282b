"""The `finetune` pipeline: catalogue-lookup -> claim-output -> preprocess -> mine-negatives
-> train -> evaluate -> export -> promote -> register (when a registered model is named)."""

from kfp import dsl

from finetuner.components.catalogue_lookup import catalogue_lookup
from finetuner.components.claim import claim_step
from finetuner.components.evaluate import evaluate
from finetuner.components.export import export
from finetuner.components.mine_negatives import mine_negatives
from finetuner.components.preprocess import preprocess
from finetuner.components.promote import promote as promote_step
from finetuner.components.register import register_step
from finetuner.components.train import train
from finetuner.orchestration.cluster import gpu_step, s3_step, trainjob_inputs
from finetuner.parameters import Finetune, struct_options, training_options
from finetuner.parameters.generate import pipeline_function

DESCRIPTION = "Fine-tune an embedding model from the catalogue on (query, document) pairs."


# The signature and the docstring (each parameter's description) are made from the
# declared parameters (finetuner.parameters); the body gets them as one dict.
@dsl.pipeline(name="finetune", description=DESCRIPTION)
@pipeline_function(Finetune, "finetune", DESCRIPTION)
def finetune(p: dict):
    lookup = catalogue_lookup(
        model=p["model"],
        pooler=p["pooler"],
        pooler_p=p["pooler_p"],
        pooler_eps=p["pooler_eps"],
        max_length=p["max_length"],
        loss=p["loss"],
        model_options=p["model_options"],
        weights=p["weights"],
        model_artifact=p["model_artifact"],
    )
    # A second run with this output stops here, before any data is read.
    claimed = claim_step(p["output_uri"], p["claim_id"], p["force_claim"], after=lookup)
    data = preprocess(
        model_spec=lookup.output,
        train_data=p["train_data"],
        eval_data=p["eval_data"],
        val_split=p["val_split"],
        seed=p["seed"],
        data_options=p["data_options"],
    ).after(claimed)
    # Hard negatives mined from the train pairs' documents; the dataset as it is when off.
    mined = mine_negatives(
        model_spec=lookup.output,
        train_dataset=data.outputs["train_dataset"],
        options=training_options(p),
    )
    trained = train(
        model_spec=lookup.output,
        train_dataset=mined.outputs["mined_dataset"],
        eval_dataset=data.outputs["eval_dataset"],
        options=training_options(p),
        **struct_options(p),
        output_uri=p["output_uri"],
        num_gpus=p["gpu_count"],
        **trainjob_inputs(p),
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
    )
    trained.set_caching_options(False)
    gpu_step(trained, p)
    evaluated = evaluate(
        model_spec=lookup.output,
        model=trained.outputs["model"],
        eval_dataset=data.outputs["eval_dataset"],
        k=p["eval_k"],
        matryoshka_dims=p["matryoshka_dims"],
    )
    exported = export(
        model=trained.outputs["model"],
        metrics=evaluated.outputs["Output"],
        output_uri=p["output_uri"],
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
        eval_dataset=data.outputs["eval_dataset"],
        int8=p["int8"],
        int8_max_drop=p["int8_max_drop"],
    )
    exported.set_caching_options(False)
    gate = promote_step(
        export=exported.output,
        metrics=evaluated.outputs["Output"],
        enabled=p["promote"],
        promotion_metric=p["promotion_metric"],
        min_delta=p["promotion_min_delta"],
        claim=claimed.output,
        force_claim=p["force_claim"],
    )
    gate.set_caching_options(False)
    tasks = [lookup, claimed, data, mined, trained, evaluated, exported, gate]
    tasks += register_step(p, exported, evaluated, data, gate)
    # Every step that may read or write s3:// URIs; evaluate reads only KFP artifacts,
    # but model weights may come from an S3 mirror.
    for task in tasks:
        s3_step(task, p["s3_secret_name"])
