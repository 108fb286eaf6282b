from kfp import dsl

from finetuner.components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(
    export: dict,
    metrics: dict,
    promotion: dict,
    data: dict,
    model_registry_url: str,
    registered_model_name: str,
    run_id: str,
) -> dict:
    """Record the export in Kubeflow Model Registry as a version of registered_model_name,
    named after the run: the export folder with its formats, the catalogue model, the
    metrics before and after, the run, the training data with their sha256 and the
    promotion decision."""
    from finetuner.orchestration.failures import reported

    with reported("register"):
        from finetuner.orchestration import steps

        return steps.register(
            export, metrics, promotion, data, model_registry_url, registered_model_name, run_id
        )


def register_step(p: dict, exported, evaluated, data, gate=None) -> list:
    """The register step of a pipeline whose parameters are `p`: it runs only when
    registered_model_name is set, after export (and the promotion gate, when there is one).
    Returns the tasks it added."""
    from finetuner.orchestration.cluster import registry_step

    with dsl.If(p["registered_model_name"] != "", name="register-model"):
        task = register(
            export=exported.output,
            metrics=evaluated.outputs["Output"],
            promotion=gate.outputs["Output"] if gate is not None else {},
            data=data.outputs["Output"],
            model_registry_url=p["model_registry_url"],
            registered_model_name=p["registered_model_name"],
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        if gate is not None:
            task.after(gate)
        task.set_caching_options(False)
        registry_step(task, p["model_registry_secret_name"])
    return [task]
