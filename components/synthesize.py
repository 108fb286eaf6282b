from kfp import dsl
from kfp.dsl import Markdown, Output

from finetuner.components import GPU_IMAGE


# The GPU image: the cross-encoder's scoring and the miner's embedding are the heavy work.
@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def synthesize_pairs(
    query_data: str,
    corpus_data: str,
    relation_miner: str,
    cross_encoder: str,
    relation_miner_weights: str,
    cross_encoder_weights: str,
    num_relations: int,
    max_length: str,
    data_options: dict,
    seed: int,
    output_uri: str,
    run_id: str,
    claim: str,
    synthesis_report: Output[Markdown],
) -> str:
    """Mine candidates for each query with the relation miner, score them with the
    cross-encoder, and publish (query, positive, negative, margin) rows under output_uri;
    their URI. `{run_id}` in output_uri is this run's id, which must hold its claim on it."""
    from finetuner.orchestration.failures import reported

    with reported("synthesize-pairs"):
        from finetuner.export.promote import run_output
        from finetuner.orchestration import steps

        steps.check_claim(output_uri, run_id, claim)
        return steps.synthesize(
            query_data,
            corpus_data,
            relation_miner,
            cross_encoder,
            relation_miner_weights,
            cross_encoder_weights,
            num_relations,
            max_length,
            data_options,
            seed,
            run_output(output_uri, run_id),
            synthesis_report.path,
        )
