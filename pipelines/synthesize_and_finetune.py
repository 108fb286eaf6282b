"""The `synthesize_and_finetune` pipeline: catalogue-lookup -> claim-output -> synthesize-pairs ->
preprocess -> train (MarginMSELoss) -> evaluate -> export, for queries and a corpus
without labels."""

from kfp import dsl

from finetuner.components.catalogue_lookup import catalogue_lookup
from finetuner.components.claim import claim_step
from finetuner.components.evaluate import evaluate
from finetuner.components.export import export
from finetuner.components.preprocess import preprocess
from finetuner.components.register import register_step
from finetuner.components.synthesize import synthesize_pairs
from finetuner.components.train import train
from finetuner.orchestration.cluster import gpu_step, s3_step, trainjob_inputs
from finetuner.parameters import SynthesizeAndFinetune, struct_options, training_options
from finetuner.parameters.generate import pipeline_function
from finetuner.training.losses import MARGIN_MSE

DESCRIPTION = (
    "Synthesize MarginMSE training data from unlabelled queries and a corpus, then fine-tune "
    "an embedding model on it."
)


# The signature and the docstring are made from the declared parameters
# (finetuner.parameters); the body gets them as one dict.
@dsl.pipeline(name="synthesize-and-finetune", description=DESCRIPTION)
@pipeline_function(
    SynthesizeAndFinetune,
    "synthesize_and_finetune",
    "Synthesize training data from queries and a corpus, and fine-tune on it.",
)
def synthesize_and_finetune(p: dict):
    lookup = catalogue_lookup(
        model=p["model"],
        pooler=p["pooler"],
        pooler_p="auto",
        pooler_eps="auto",
        max_length=p["max_length"],
        loss=MARGIN_MSE,
        model_options=p["model_options"],
        weights=p["weights"],
        model_artifact="",
    )
    # A second run with this output stops here, before any data is read.
    claimed = claim_step(p["output_uri"], p["claim_id"], p["force_claim"], after=lookup)
    synthesized = synthesize_pairs(
        query_data=p["query_data"],
        corpus_data=p["corpus_data"],
        relation_miner=p["relation_miner"],
        cross_encoder=p["cross_encoder"],
        relation_miner_weights=p["relation_miner_weights"],
        cross_encoder_weights=p["cross_encoder_weights"],
        num_relations=p["num_relations"],
        max_length=p["max_length"],
        data_options=p["data_options"],
        seed=p["seed"],
        output_uri=p["output_uri"],
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim=claimed.output,
    )
    synthesized.set_caching_options(False)
    data = preprocess(
        model_spec=lookup.output,
        train_data=synthesized.outputs["Output"],
        eval_data="",
        val_split=p["val_split"],
        seed=p["seed"],
        data_options={},
    )
    trained = train(
        model_spec=lookup.output,
        train_dataset=data.outputs["train_dataset"],
        eval_dataset=data.outputs["eval_dataset"],
        # The training options not among this pipeline's parameters keep their defaults.
        options={**training_options(p), "loss": MARGIN_MSE, "sampler": "random"},
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
        matryoshka_dims=[],  # Matryoshka training is a choice of the finetune pipeline
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
    tasks = [lookup, claimed, synthesized, data, trained, evaluated, exported]
    tasks += register_step(p, exported, evaluated, data)
    for task in tasks:
        s3_step(task, p["s3_secret_name"])
