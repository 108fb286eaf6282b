from kfp import dsl
from kfp.dsl import Metrics, Output

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote(
    export: dict,
    metrics: dict,
    enabled: bool,
    promotion_metric: str,
    min_delta: float,
    claim: str,
    force_claim: bool,
    promotion: Output[Metrics],
) -> dict:
    """Promote the export to latest/ beside it when the monitored metric improves by at least
    min_delta, claiming latest/ while it copies; the decision and its reason go to the run's
    metrics."""
    from finetuner.orchestration.failures import reported

    with reported("promote"):
        from finetuner.orchestration import steps

        result = steps.promote(
            export["manifest"], metrics, enabled, promotion_metric, min_delta, claim, force_claim
        )
        promotion.log_metric("promoted", int(result["promoted"]))
        for key in ("new", "current"):
            if result[key] is not None:
                promotion.log_metric(f"{key}/{result['metric']}", result[key])
        promotion.metadata["reason"] = result["reason"]
        # KFP cannot pass a None inside a dict to the next step (no model promoted before).
        return {key: value for key, value in result.items() if value is not None}
