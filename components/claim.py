from kfp import dsl

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def claim_output(output_uri: str, run_id: str, claim_id: str, force_claim: bool) -> str:
    """Claim output_uri ({run_id} in it: this run's id) for this run before any data is read:
    of two runs with one output, the second fails here and names the first. Outputs the id
    the claim is held under, which every step that writes there checks."""
    from finetuner.orchestration.failures import reported

    with reported("claim-output"):
        from finetuner.orchestration import steps

        return steps.claim_output(output_uri, run_id, claim_id, force_claim)


def claim_step(output_uri, claim_id, force_claim, after):
    """The claim as a task of a pipeline: after `after` and before any data is read, and
    never cached (a cached claim would let a second run through)."""
    task = claim_output(
        output_uri=output_uri,
        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        claim_id=claim_id,
        force_claim=force_claim,
    ).after(after)
    task.set_caching_options(False)
    return task
