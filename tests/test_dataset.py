"""The per-pair pipeline: alignment of the two sides, poses, colours."""

import numpy as np
import pytest

from dce.geom import dataset, sources, synthetic
from dce.geom.io import IBUG68_NOSE_TIP
from dce.geom.projection import OrthographicCamera


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    synthetic.generate_world(out, identities=1, workers=1)
    return out


def load_pair(world, index=0):
    return sources.load(sources.synthetic_world(world)[index])


def test_poses_are_seeded_per_pair_and_within_the_paper_ranges():
    config = dataset.BuildConfig(poses=200, seed=3)
    a = dataset.random_poses("02463d452", config)
    np.testing.assert_array_equal(a, dataset.random_poses("02463d452", config))
    assert not np.array_equal(a, dataset.random_poses("02463d453", config))
    np.testing.assert_array_equal(a[0], 0.0)  # pose 0 is the photo's view
    assert (np.abs(a[1:]).max(axis=0) <= [45, 20, 20]).all()
    assert (np.abs(a[1:]).max(axis=0) > [40, 17, 17]).all()  # the ranges are used


def test_photo_colours_bilinear_hand_computed():
    photo = np.zeros((4, 4, 3), np.uint8)
    photo[1, 1] = [255, 0, 0]
    photo[1, 2] = [0, 255, 0]
    camera = OrthographicCamera(1.0, np.eye(3), [0.0, 0.0])
    colours = dataset.sample_photo_colors(np.array([[1.5, 1.0, 0.0], [1.0, 1.25, 0.0]]),
                                          camera, photo)
    np.testing.assert_allclose(colours[0], [0.5, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(colours[1], [0.75, 0.0, 0.0], atol=1e-6)


def test_both_sides_of_a_pair_are_aligned_in_every_pose(world):
    pair = load_pair(world)
    config = dataset.BuildConfig(size=128, channels="DCE+RGB", poses=3)
    coarse, target = dataset.prepare_pair(pair, config)
    samples = dataset.pair_samples(pair.pair_id, pair.subject, coarse, target,
                                   pair.landmarks_2d, config)
    assert len(samples) == 4
    for s in samples:
        assert s.coarse.shape == s.target.shape == (6, 128, 128)
        # The nose tip of each side projects to the same pixel.
        nose = []
        for side, cam in ((coarse, s.coarse_camera), (target, s.target_camera)):
            R, (scale, tx, ty) = cam[:3], cam[3]
            nose.append(scale * (R[:2] @ side.landmarks_3d[IBUG68_NOSE_TIP]) + [tx, ty])
        np.testing.assert_allclose(nose[0], nose[1], atol=1e-6)
        # The faces overlap almost everywhere: the coarse fit covers the same face.
        both = s.coarse_mask & s.target_mask
        assert both.sum() > 0.8 * s.target_mask.sum()
        # Both depth channels share a scale: within the overlap they differ by
        # millimetres, not by the scans' different distances to their cameras.
        gap = (s.coarse[0] - s.target[0])[both] * -config.depth_scale
        assert np.median(np.abs(gap)) < 6.0
        # Colours come from the same photo: the two sides agree on average.
        assert np.abs(s.coarse[3:, both].mean(1) - s.target[3:, both].mean(1)).max() < 0.1


def test_rgb_without_photo_is_explained(world):
    pair = load_pair(world)
    pair.photo = None
    with pytest.raises(ValueError, match="photo"):
        dataset.prepare_pair(pair, dataset.BuildConfig(channels="DCE+RGB"))
