"""KFP components: one per pipeline step, each a thin typed wrapper over
finetuner.orchestration.steps."""

# The step images (images/). CPU steps and the GPU train step use separate images.
IMAGE = "ghcr.io/finetuner-kfp/finetuner:0.1.0"
GPU_IMAGE = "ghcr.io/finetuner-kfp/finetuner-gpu:0.1.0"
