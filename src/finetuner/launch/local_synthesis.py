"""Run the `synthesize_and_finetune` pipeline on this machine with kfp.local.

The cheap checks run here first, in-process, so a bad name, number or file fails in
seconds with one message, before any model is loaded; the steps check again on a cluster.
"""

from __future__ import annotations

import time

from finetuner.errors import FinetunerError
from finetuner.io import storage
from finetuner.launch.local import Run, claim_output, makes_output, release, run_locally
from finetuner.parameters import AUTO, SynthesizeAndFinetune
from finetuner.parameters.generate import kfp_arguments


def preflight(params: dict) -> dict:
    """The pipeline's parameters, completed with its defaults and checked."""
    from finetuner.data import formats
    from finetuner.data.pairs import check_val_split
    from finetuner.export.model_registry import check_registry
    from finetuner.export.promote import run_output
    from finetuner.orchestration.steps import catalogue_lookup
    from finetuner.synthesis.synthesize import (
        DEFAULT_MAX_LENGTH,
        SynthesisModels,
        check_num_relations,
        cross_encoder_source,
        miner_spec,
        read_texts,
    )

    unknown = set(params) - set(SynthesizeAndFinetune.model_fields)
    if unknown:
        raise FinetunerError(f"unknown parameter(s): {', '.join(sorted(unknown))}.")
    given = {k: v for k, v in params.items() if v is not None}
    params = {**SynthesizeAndFinetune.defaults(), **given}
    for name in ("query_data", "corpus_data", "output_uri"):
        if not params.get(name):
            raise FinetunerError(f"parameter {name}: required.")
    for name in ("query_data", "corpus_data"):
        formats.check_source(params[name], name)
    storage.check_uri(params["output_uri"], "output_uri")
    for name in ("weights", "relation_miner_weights", "cross_encoder_weights"):
        if params.get(name):
            storage.check_uri(params[name], name, need_key=False)
    params = SynthesizeAndFinetune(**params).model_dump()  # every type and range
    catalogue_lookup(
        params["model"], params["pooler"], AUTO, AUTO, params["max_length"], "MarginMSELoss",
        params["model_options"], params["weights"],
    )  # fmt: skip
    models = SynthesisModels(
        params["relation_miner"], params["cross_encoder"], params["relation_miner_weights"],
        params["cross_encoder_weights"],
    )  # fmt: skip
    max_length = params["max_length"]
    miner_spec(models, DEFAULT_MAX_LENGTH if max_length == AUTO else max_length)
    cross_encoder_source(models.cross_encoder, models.cross_encoder_weights)
    num_relations = check_num_relations(params["num_relations"])
    check_registry(params["model_registry_url"], params["registered_model_name"])
    check_val_split(params["val_split"], has_eval_data=False)
    opts = formats.options(params["data_options"])
    # {run_id} in output_uri is the time of a local run, resolved here to know the export.
    params["output_uri"] = run_output(params["output_uri"], time.strftime("%Y%m%d-%H%M%S"))
    # The output is claimed before any data is read: a second run with it fails here.
    made = claim_output(params)
    try:
        read_texts(params["query_data"], "query_data", opts)
        corpus = read_texts(params["corpus_data"], "corpus_data", opts)
        if num_relations > len(corpus.texts):
            raise FinetunerError(
                f"parameter num_relations: {num_relations} is more than the "
                f"{len(corpus.texts)} distinct documents of {params['corpus_data']}."
            )
    except BaseException:
        release(params, made)
        raise
    return params


def run_synthesis_pipeline(
    params: dict, pipeline_root: str | None = None, images: tuple | None = None
) -> Run:
    """Run synthesize_and_finetune through kfp.local: in this environment, or with `images`
    (CPU image, GPU image) each step in its image (finetuner.launch.local.run_locally)."""
    if images:  # before the output is claimed
        from finetuner.launch.containers import check_uris

        check_uris(params, ("query_data", "corpus_data", "output_uri"), required=("output_uri",))
        check_uris(params, tuple(name for name in params if name.endswith("weights")))
    made = makes_output(params.get("output_uri"))
    params = preflight(params)
    from finetuner.export.publish import artifact_uris
    from finetuner.orchestration.steps import SYNTHESIZED
    from finetuner.pipelines.synthesize_and_finetune import synthesize_and_finetune

    output = params["output_uri"]
    try:
        manifest = run_locally(
            synthesize_and_finetune,
            kfp_arguments(SynthesizeAndFinetune, params),
            pipeline_root,
            images,
        )
    except BaseException:
        release(params, made)  # what the run wrote stays for a rerun
        raise
    summary = {
        "metrics": {k: manifest["metrics"][k] for k in ("before", "after")},
        "artifacts": {
            **artifact_uris(output, manifest),
            "synthesized": storage.join(output, SYNTHESIZED),
        },
        "params": params,
    }
    return Run(status="FINISHED", artifact_uri=output, summary=summary)
