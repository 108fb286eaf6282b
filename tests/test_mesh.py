"""finetuner.data.mesh on real meshes from Debian's assimp-testmodels package."""

from pathlib import Path

import numpy as np
import pytest
import trimesh

from finetuner.data.mesh import load_points
from finetuner.errors import FinetunerError

MODELS = Path("/usr/share/assimp/models")  # installed by the Debian package assimp-testmodels

pytestmark = pytest.mark.skipif(
    not MODELS.is_dir(), reason=f"{MODELS} absent: install the Debian package assimp-testmodels"
)

# Different formats, binary and text, a multi-part scene (spider.obj) and a glTF scene.
REAL_MESHES = [
    "OFF/Wuson.off",
    "PLY/cube_binary.ply",
    "STL/Spider_binary.stl",
    "STL/sphereWithHole.stl",
    "OBJ/spider.obj",
    "glTF2/BoxTextured-glTF/BoxTextured.gltf",
]


@pytest.mark.parametrize("name", REAL_MESHES)
def test_real_mesh_is_sampled_onto_the_unit_sphere(name):
    points = load_points(MODELS / name, seed=0)
    assert points.shape == (2048, 3)
    assert points.dtype == np.float32
    assert np.abs(points.mean(axis=0)).max() < 1e-5
    assert np.isclose(np.linalg.norm(points, axis=1).max(), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", ["OFF/Wuson.off", "OBJ/spider.obj"])
def test_same_seed_same_points_other_seed_other_points(name):
    first = load_points(MODELS / name, seed=1)
    assert np.array_equal(first, load_points(MODELS / name, seed=1))
    assert not np.allclose(first, load_points(MODELS / name, seed=2))


def test_n_points():
    assert load_points(MODELS / "OFF/Wuson.off", n_points=100, seed=0).shape == (100, 3)


def test_augmentation_changes_points_but_keeps_them_near_the_unit_sphere():
    plain = load_points(MODELS / "OFF/Wuson.off", seed=3)
    augmented = load_points(MODELS / "OFF/Wuson.off", augment=True, seed=3)
    assert augmented.shape == (2048, 3) and augmented.dtype == np.float32
    assert np.abs(augmented - plain).max() > 0.1
    norms = np.linalg.norm(augmented, axis=1)
    assert 0.8 * 0.95 < norms.max() <= 1.25 * 1.0 + 0.05 * np.sqrt(3)
    assert np.array_equal(augmented, load_points(MODELS / "OFF/Wuson.off", augment=True, seed=3))
    assert not np.allclose(augmented, load_points(MODELS / "OFF/Wuson.off", augment=True, seed=4))


def test_bytes_with_file_type_equal_the_path():
    path = MODELS / "STL/Spider_binary.stl"
    from_bytes = load_points(path.read_bytes(), file_type="stl", seed=5)
    assert np.array_equal(from_bytes, load_points(path, seed=5))


def test_bytes_without_file_type_is_refused():
    with pytest.raises(FinetunerError, match="file_type"):
        load_points(b"solid x\nendsolid x\n")


def test_point_cloud_without_faces_samples_its_vertices():
    points = load_points(MODELS / "PLY/points.ply", seed=0)  # 4 vertices, no faces
    assert points.shape == (2048, 3)
    assert len(np.unique(points, axis=0)) == 4
    assert np.isclose(np.linalg.norm(points, axis=1).max(), 1.0, atol=1e-6)


def test_translation_and_uniform_scale_do_not_change_the_output(tmp_path):
    mesh = trimesh.load(MODELS / "OFF/Wuson.off", force="mesh")
    moved = mesh.copy()
    moved.apply_scale(3.5)
    moved.apply_translation([5.0, -2.0, 7.0])
    # OFF is written as text at full precision; PLY and STL would round to float32.
    mesh.export(tmp_path / "orig.off")
    moved.export(tmp_path / "moved.off")
    a = load_points(tmp_path / "orig.off", seed=7)
    b = load_points(tmp_path / "moved.off", seed=7)
    assert np.allclose(a, b, atol=1e-5)


def test_every_invalid_file_gives_finetuner_error_or_a_valid_cloud():
    raised = []
    for path in sorted((MODELS / "invalid").iterdir()):
        try:
            points = load_points(path, seed=0)
        except FinetunerError as e:
            assert path.name in str(e)
            raised.append(path.name)
        else:  # trimesh made a usable mesh of it (malformed2.obj only lacks a material)
            assert points.shape == (2048, 3) and np.isfinite(points).all()
    # Broken files in formats trimesh reads must be among those refused.
    expected = {"OutOfMemory.off", "empty.obj", "empty.off", "empty.ply", "malformed.obj"}
    assert expected <= set(raised)
    assert len(raised) >= 10


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("OutOfMemory.off", "cannot read as off"),
        ("empty.obj", r"the mesh is empty \(no vertices\)"),
        ("empty.3ds", "unsupported mesh file type '3ds'; supported: .*stl"),
    ],
)
def test_invalid_file_messages_say_what_is_wrong(name, reason):
    with pytest.raises(FinetunerError, match=reason):
        load_points(MODELS / "invalid" / name)


def test_zero_area_faces_are_refused(tmp_path):
    path = tmp_path / "flat.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # collinear vertices
    with pytest.raises(FinetunerError, match="flat.obj: all faces have zero area"):
        load_points(path)


def test_unknown_extension_is_refused(tmp_path):
    path = tmp_path / "model.blend1"
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(FinetunerError, match=r"model\.blend1: unsupported .* supported: .*obj"):
        load_points(path)
