"""dce.geom.refined_mesh: the meshes and landmarks of one refinement, on a
flat face whose answer is known by hand: a plane 50 mm in front of the
model origin seen head-on, refined by a constant depth offset."""
import numpy as np
import pytest

from dce.geom.dce import DCEImage
from dce.geom.projection import FRONTAL, OrthographicCamera
from dce.geom.reconstruct import depth_image_mesh
from dce.geom.refined_mesh import refine_dce_image, refine_meshes

SIZE, SCALE = 16, 0.5  # 16 px of 2 mm: a 30 mm square between the outer pixel centres
PLANE_Z = 50.0         # model frame: the plane Z = 50 faces +Z, toward the frontal camera
DEPTH_SCALE = -50.0    # physical = offset + scale * normalized: 50 mm farther = 1 lower


def camera():
    centre = (SIZE - 1) / 2.0
    return OrthographicCamera(SCALE, FRONTAL, np.array([centre, centre]))


def plane_image(shift_mm=0.0, mask=None):
    """A one-channel DCE depth image of the plane moved ``shift_mm`` away from
    the viewer; depth reference (normalized +1) at view depth -60 mm."""
    mask = np.ones((SIZE, SIZE), dtype=bool) if mask is None else mask
    view_depth = -PLANE_Z + shift_mm  # FRONTAL: view z = -Z
    offset = -60.0 - DEPTH_SCALE
    image = np.where(mask, (view_depth - offset) / DEPTH_SCALE, -1.0).astype(np.float32)
    return DCEImage(image[..., None], mask, ("depth",), np.array([offset]),
                    np.array([DEPTH_SCALE]), camera())


class AddDepth:
    """A stand-in network: adds ``delta`` (normalized) to the depth inside
    the surface, background -1 outside."""

    output_channels = ("depth",)

    def __init__(self, delta):
        self.delta = delta

    def __call__(self, x):
        assert x.shape == (1, SIZE, SIZE)
        return np.where(x > -1.0 + 2.0 / 255.0, x + self.delta, -1.0).astype(np.float32)


FOREGROUND = -1.0 + 2.0 / 255.0


def test_refined_image_reads_the_output_in_the_coarse_normalization():
    """+0.04 normalized is 0.04 * -50 = -2 mm of view depth (2 mm nearer);
    the mask follows the output; camera and normalization are the coarse's."""
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[3:12, 2:14] = True
    coarse = plane_image(mask=mask)
    refined = refine_dce_image(AddDepth(0.04), coarse, FOREGROUND)
    np.testing.assert_array_equal(refined.mask, mask)
    np.testing.assert_allclose(refined.physical("depth")[mask], -PLANE_Z - 2.0, atol=1e-5)
    assert refined.camera is coarse.camera and refined.channels == ("depth",)


def test_identity_refinement_gives_back_the_coarse_mesh_and_landmarks():
    coarse = plane_image()
    mesh, _ = depth_image_mesh(coarse.physical("depth"), coarse.mask, coarse.camera)
    landmarks = np.array([[0.0, 0.0, PLANE_Z], [3.0, -4.0, PLANE_Z]])
    out = refine_meshes(mesh, coarse, refine_dce_image(AddDepth(0.0), coarse, FOREGROUND),
                        landmarks=landmarks)
    np.testing.assert_array_equal(out.refined_landmarks, landmarks)
    assert out.coarse is mesh
    # every coarse face is replaced by the (identical) refined grid
    np.testing.assert_allclose(np.sort(out.refined.vertices, axis=0),
                               np.sort(mesh.vertices, axis=0), atol=1e-4)
    assert out.refined.n_faces == mesh.n_faces


@pytest.mark.parametrize("keep_topology", [False, True])
def test_a_depth_offset_moves_surface_and_landmarks_by_that_offset(keep_topology):
    """The refined depth 2 mm farther: the plane Z = 50 becomes Z = 48 (the
    view ray of the frontal camera is -Z); landmarks in the middle, farther
    than the 6 mm blend band from the border, move by exactly that; with the
    topology kept the faces are the coarse mesh's and the displacement is
    -2 mm (+ is toward the viewer)."""
    coarse = plane_image()
    mesh, _ = depth_image_mesh(coarse.physical("depth"), coarse.mask, coarse.camera)
    refined_image = refine_dce_image(AddDepth(-2.0 / -DEPTH_SCALE), coarse, FOREGROUND)
    landmarks = np.array([[0.0, 0.0, PLANE_Z], [2.5, -3.0, PLANE_Z], [-1.0, 4.0, PLANE_Z]])
    out = refine_meshes(mesh, coarse, refined_image, landmarks=landmarks,
                        keep_topology=keep_topology)
    np.testing.assert_allclose(out.refined_landmarks, landmarks - [0.0, 0.0, 2.0], atol=1e-4)
    np.testing.assert_array_equal(out.coarse_landmarks, landmarks)
    middle = np.abs(out.refined.vertices[:, :2]).max(axis=1) < 15.0 - 6.0
    np.testing.assert_allclose(out.refined.vertices[middle, 2], PLANE_Z - 2.0, atol=1e-4)
    if keep_topology:
        np.testing.assert_array_equal(out.refined.faces, mesh.faces)
        np.testing.assert_allclose(out.displacement[middle], -2.0, atol=1e-4)
    else:
        # the plain mesh is the refined grid: every vertex on the moved plane
        np.testing.assert_allclose(out.refined.vertices[:, 2], PLANE_Z - 2.0, atol=1e-4)
        assert out.displacement is None
