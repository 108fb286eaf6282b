"""A failed step of a local run: its own error is the run's final message, with its status."""

import os
import re
import subprocess
import sys

import pytest

# Loaded by every Python process that finds it on PYTHONPATH; it breaks the catalogue-lookup
# step, and only in the step processes (kfp's command sets _KFP_RUNTIME), as FAULT says.
SITECUSTOMIZE = """
import os
if os.environ.get("_KFP_RUNTIME"):
    from finetuner.orchestration import steps

    def broken(*args, **kwargs):
        if os.environ["FAULT"] == "crash":
            return {"model": "x"}["pooler"]  # a fault of ours: KeyError
        os._exit(137)  # killed: no Python error at all

    steps.catalogue_lookup = broken
"""


@pytest.mark.parametrize("fault", ["crash", "killed"])
def test_a_failed_steps_cause_is_the_final_message(fault, pairs_csv, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "FAULT": fault}
    command = [sys.executable, "-m", "finetuner", "run", "--train-data", str(pairs_csv())]
    command += ["--output", str(tmp_path / "out"), "--pipeline-root", str(tmp_path / "root")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert "\x1b[" not in result.stdout + result.stderr  # no colour in a pipe
    last = result.stderr.strip().splitlines()[-1]
    if fault == "crash":
        match = re.fullmatch(
            r"error: step catalogue-lookup: internal error: KeyError: 'pooler' "
            r"\(the full traceback is in (.+)\)",
            last,
        )
        assert match, last
        assert "in broken" in open(match.group(1)).read()
    else:
        assert last.startswith("error: step catalogue-lookup failed without an error message")
    assert not (tmp_path / "out").exists()


def test_a_step_that_refuses_its_input_exits_2(tmp_path, pairs_csv):
    # The local checks run before the pipeline; here the step itself meets the bad input.
    from finetuner.errors import StepFailed
    from finetuner.launch.local import run_locally
    from finetuner.pipelines.finetune import finetune

    params = {"train_data": str(pairs_csv()), "output_uri": str(tmp_path / "out")}
    with pytest.raises(StepFailed) as failed:
        run_locally(finetune, params | {"model": "resnet9000"}, str(tmp_path / "root"))
    assert failed.value.exit_status == 2
    assert str(failed.value).startswith("step catalogue-lookup: unknown model 'resnet9000'")
