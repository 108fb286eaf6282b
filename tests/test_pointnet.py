"""PointNet++ embedder: the real architecture with random weights, tiny where speed needs it."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from finetuner.errors import FinetunerError
from finetuner.models.pointnet_net import (
    PointNet2Embedder,
    ball_query,
    build_pointnet,
    farthest_point_sample,
)


def random_clouds(batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, n, 3, generator=g) * 2 - 1


def test_tiny_output_is_unit_length_with_the_requested_dim():
    model = build_pointnet(output_dim=24, size="tiny").eval()
    with torch.no_grad():
        out = model(random_clouds(3, 256))
    assert out.shape == (3, 24)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_base_builds_and_embeds_2048_points_into_512_dims():
    torch.manual_seed(0)
    model = build_pointnet()
    assert isinstance(model, PointNet2Embedder)
    assert sum(p.numel() for p in model.parameters()) == 1_593_152
    with torch.no_grad():
        out = model.eval()(random_clouds(2, 2048))
    assert out.shape == (2, 512)
    assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(out[0], out[1])


def test_unknown_size_lists_the_valid_ones():
    with pytest.raises(FinetunerError, match="'huge'.*base, tiny"):
        build_pointnet(size="huge")


def test_wrong_input_shape_is_refused():
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        build_pointnet(size="tiny")(torch.zeros(2, 3, 100))


def test_farthest_point_sampling_picks_cube_corners_first():
    corners = torch.tensor(
        [[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)]
    )
    noise = random_clouds(1, 200)[0] * 0.3
    # Point 0 (the start) is a corner; the other corners are scattered among the noise.
    cloud = torch.cat([corners[:1], noise, corners[1:]])
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(207)])
    cloud = cloud[perm]
    corner_ids = set(torch.nonzero(cloud.abs().amin(-1) == 1).flatten().tolist())
    # Second batch element: the same cloud mirrored, to check the batch is handled per element.
    idx = farthest_point_sample(torch.stack([cloud, -cloud]), 20)
    assert idx.shape == (2, 20)
    for row in idx:
        assert set(row[:8].tolist()) == corner_ids
        assert len(set(row.tolist())) == 20


def test_farthest_point_sampling_gives_distinct_spread_out_points():
    cloud = random_clouds(2, 500, seed=1)
    idx = farthest_point_sample(cloud, 64)
    assert all(len(set(row.tolist())) == 64 for row in idx)
    picked = torch.gather(cloud, 1, idx[..., None].expand(-1, -1, 3))
    # Far more spread out than 64 random points: their closest pair is not close.
    gaps = torch.cdist(picked, picked) + torch.eye(64) * 10
    random_gaps = torch.cdist(cloud[:, :64], cloud[:, :64]) + torch.eye(64) * 10
    assert (gaps.amin(dim=(1, 2)) > 2 * random_gaps.amin(dim=(1, 2))).all()


def test_ball_query_respects_the_radius_and_pads_with_the_first_neighbour():
    xyz = random_clouds(2, 300, seed=2)
    centroids = xyz[:, :10]
    radius, nsample = 0.3, 16
    idx = ball_query(radius, nsample, xyz, centroids)
    assert idx.shape == (2, 10, nsample)
    dist = torch.cdist(centroids, xyz)  # (B, S, N)
    for b in range(2):
        for s in range(10):
            inside = torch.nonzero(dist[b, s] <= radius).flatten().tolist()
            got = idx[b, s].tolist()
            assert all(dist[b, s, i] <= radius + 1e-6 for i in got)
            # The lowest-numbered members, then padding with the first one.
            assert sorted(set(got)) == inside[:nsample]
            k = min(len(inside), nsample)
            assert got[:k] == inside[:k] and all(i == got[0] for i in got[k:])
    assert any(len(set(row.tolist())) < nsample for row in idx.flatten(0, 1))  # padding occurs


def augment(clouds, g):
    """Random rotation about z, anisotropic scaling and jitter: two views of one shape."""
    angle = torch.rand(clouds.shape[0], generator=g) * 2 * math.pi
    c, s, zero, one = angle.cos(), angle.sin(), torch.zeros_like(angle), torch.ones_like(angle)
    rot = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(-1, 3, 3)
    scale = 0.8 + 0.45 * torch.rand(clouds.shape[0], 1, 3, generator=g)
    return clouds @ rot.transpose(1, 2) * scale + 0.01 * torch.randn(clouds.shape, generator=g)


def shapes(batch, n, g):
    """Distinct shapes: points on ellipsoids with random axes, inside the unit sphere."""
    axes = 0.3 + 0.7 * torch.rand(batch, 1, 3, generator=g)
    return F.normalize(torch.randn(batch, n, 3, generator=g), dim=-1) * axes


def contrastive_loss(model, a, b):
    sim = model(a) @ model(b).T * 20
    return F.cross_entropy(sim, torch.arange(len(a)))


def test_a_few_contrastive_training_steps_reduce_the_loss():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = build_pointnet(output_dim=32, size="tiny").train()
    clouds = shapes(8, 256, g)
    view_a, view_b = augment(clouds, g), augment(clouds, g)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = contrastive_loss(model, view_a, view_b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses


def test_eval_mode_is_deterministic():
    model = build_pointnet(output_dim=16, size="tiny").eval()
    x = random_clouds(4, 256)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        # A cloud's embedding does not depend on the rest of the batch.
        assert torch.allclose(model(x)[1:2], model(x[1:2]), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    model = build_pointnet(output_dim=16, size="tiny").eval()
    x = random_clouds(2, 512)
    with torch.no_grad():
        cpu = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-4)


def test_onnx_export_matches_pytorch_for_any_batch_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = build_pointnet(output_dim=16, size="tiny").eval()
    path = tmp_path / "pointnet.onnx"
    torch.onnx.export(
        model,
        (random_clouds(2, 128),),
        path,
        dynamo=True,
        input_names=["points"],
        output_names=["embedding"],
        dynamic_shapes={"points": {0: torch.export.Dim("batch", min=1, max=1024)}},
        verbose=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = random_clouds(batch, 128, seed=batch)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"points": x.numpy()})
        assert got.shape == (batch, 16)
        np.testing.assert_allclose(got, expected, atol=1e-4)
