import igl
import numpy as np

from dce.geom.normals import elevation, face_normals, vertex_normals


def test_sphere_normals_are_radial():
    V, F = igl.icosahedron()
    for _ in range(3):
        V, F = igl.upsample(V, F)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
    N = vertex_normals(V * 30.0, F)
    assert np.degrees(np.arccos(np.clip((N * V).sum(1), -1, 1))).max() < 1.5
    N = vertex_normals(V * 30.0, F[:, ::-1])  # flipped orientation
    assert ((N * V).sum(1) < -0.99).all()


def test_face_normal_hand_computed_and_degenerate():
    V = np.array([[0, 0, 0], [2, 0, 0], [0, 3, 0], [1, 0, 0]], float)
    F = np.array([[0, 1, 2], [0, 1, 3]])
    np.testing.assert_allclose(face_normals(V, F), [[0, 0, 1], [0, 0, 0]])


def test_unreferenced_vertex_gets_zero_normal():
    V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]], float)
    N = vertex_normals(V, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(N[3], 0)
    np.testing.assert_allclose(N[:3], [[0, 0, 1]] * 3)


def test_elevation_hand_computed():
    n = np.array([[0, 0, 1], [1, 0, 0], [0, 0, -1], [0, np.sqrt(0.5), np.sqrt(0.5)]])
    np.testing.assert_allclose(elevation(n), [0, np.pi / 2, np.pi, np.pi / 4])
    np.testing.assert_allclose(elevation(n, axis=[1, 0, 0])[:2], [np.pi / 2, 0])
