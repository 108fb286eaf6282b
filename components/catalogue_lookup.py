from kfp import dsl

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def catalogue_lookup(
    model: str,
    pooler: str,
    pooler_p: str,
    pooler_eps: str,
    max_length: str,
    loss: str,
    model_options: dict,
    weights: str,
    model_artifact: str,
) -> dict:
    """Validate the backbone and its options against the catalogue; output the ModelSpec.
    pooler_p, pooler_eps and max_length are numbers or auto (the model's own)."""
    from finetuner.orchestration.failures import reported

    with reported("catalogue-lookup"):
        from finetuner.orchestration import steps

        return steps.catalogue_lookup(
            model, pooler, pooler_p, pooler_eps, max_length, loss, model_options, weights,
            model_artifact,
        )  # fmt: skip
