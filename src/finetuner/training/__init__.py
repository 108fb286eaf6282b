"""The training loop, losses, optimizers, callbacks, checkpoints and data-parallel training."""
