"""The image data path: DataLoader workers that leave the cores to the training step, and
the CUDA-only layout (channels-last) that keeps the CPU path exactly as it was."""

import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from finetuner.data import dataset
from finetuner.data.batches import batch_loader
from finetuner.models.cnn_net import CNNEmbedder
from finetuner.training import fast_path


class ThreadsSide:
    """A media side whose 'item' is the torch thread count of the process preparing it."""

    def prepare_one(self, item: str) -> torch.Tensor:
        return torch.tensor([torch.get_num_threads(), os.getpid()])


def test_workers_prepare_with_one_torch_thread():
    # Two workers with the main process's threads each would put 2 + 2 x threads on the
    # cores: the workers must run torch with one thread.
    data = dataset.from_rows([(str(i), str(i % 2)) for i in range(8)], "labeled")
    batches = [[0, 1, 2, 3], [4, 5, 6, 7]]
    got = [t[0] for _, t, _ in batch_loader(data, batches, {0: ThreadsSide()}, 2, seed=0)]
    threads, pids = torch.cat(got)[:, 0], torch.cat(got)[:, 1]
    assert threads.tolist() == [1] * 8
    assert os.getpid() not in pids.tolist()  # prepared in the workers, not here


def small_cnn() -> CNNEmbedder:
    torch.manual_seed(0)
    trunk = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2)
    )
    return CNNEmbedder(trunk, head=nn.Linear(16, 4))


MEDIA = {0: object()}  # a media column, as media_columns names one


def test_the_cpu_path_is_left_exact():
    model = small_cnn()
    assert fast_path.channels_last(model, MEDIA, "cpu") is False
    assert all(p.is_contiguous() for p in model.parameters())
    images = torch.rand(2, 3, 12, 12)
    moved = fast_path.to_device({0: images}, "cpu", last=False)
    assert moved[0] is images  # no copy, no other layout


def test_text_models_are_left_alone_on_cuda():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))  # 4-d weights, but no media column
    assert fast_path.channels_last(model, {}, "cuda") is False
    assert model[0].weight.is_contiguous()


def test_channels_last_for_cuda_keeps_the_embeddings_and_saves_contiguous(tmp_path):
    # The layout change is device-independent: it is checked here on the CPU's tensors.
    model, reference = small_cnn().train(), small_cnn().train()
    images = torch.rand(3, 3, 12, 12)
    assert fast_path.channels_last(model, MEDIA, "cuda:0") is True
    conv = model.trunk[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    moved = fast_path.to_device({0: images, 1: torch.rand(3, 5, 3)}, "cpu", last=True)
    assert moved[0].is_contiguous(memory_format=torch.channels_last)
    assert moved[1].is_contiguous()  # not an image (points): as it was
    out = model(moved[0])
    torch.testing.assert_close(out, reference(images), rtol=1e-5, atol=1e-6)
    out.sum().backward()  # gradients flow through the channels-last weights
    assert conv.grad is not None

    fast_path.restore(model)
    assert all(p.is_contiguous() for p in model.parameters())
    save_file(dict(model.state_dict()), tmp_path / "model.safetensors")  # needs contiguous


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_on_cuda(device):
    assert fast_path.on_cuda(device) and not fast_path.on_cuda("cpu")
