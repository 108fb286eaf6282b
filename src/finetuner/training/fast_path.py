"""The media models' path to an accelerator: channels-last weights and inputs, and batches
that the DataLoader pins in host memory, so that their copy to the GPU runs asynchronously.

On CUDA, convolutions reach the tensor cores in bf16 (the loop's autocast) with
channels-last (NHWC) tensors; in NCHW cuDNN transposes every activation first. On the CPU
nothing changes: channels-last reorders the float sums of a convolution, and the CPU path
stays bit-exact (checkpoints resume to identical weights there).
"""

from __future__ import annotations


def on_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def channels_last(module, columns: dict, device: str) -> bool:
    """Turn the 4-d weights (convolutions) of a model that embeds media (`columns`, see
    finetuner.data.batches.media_columns) to channels-last when it trains on CUDA; returns
    whether it did. Models of text alone, and the CPU, are left as they are."""
    import torch

    if not (columns and on_cuda(device)):
        return False
    module.to(memory_format=torch.channels_last)
    return True


def restore(module) -> None:
    """Back to the default (contiguous) layout, which saving as safetensors needs."""
    import torch

    module.to(memory_format=torch.contiguous_format)


def to_device(tensors: dict, device: str, last: bool) -> dict:
    """A batch's media tensors on the device: images channels-last when `last`; without
    blocking, when the DataLoader has pinned them (CUDA)."""
    import torch

    moved = {}
    for column, tensor in tensors.items():
        layout = torch.channels_last if last and tensor.dim() == 4 else torch.preserve_format
        moved[column] = tensor.to(device, non_blocking=on_cuda(device), memory_format=layout)
    return moved
