"""Landmark detection plumbing (face-alignment with randomly initialized
weights saved under the real file names; nothing downloads) and the lifting
of photo landmarks onto range scans."""
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from dce.geom import landmarks as lm
from dce.geom.io import RangeScan

try:
    import face_alignment
    import torch
except ImportError:  # the 2D -> 3D tests below still run
    face_alignment = torch = None
needs_fa = pytest.mark.skipif(face_alignment is None, reason="torch / face-alignment not installed")

FACE_SCORE_LOGIT = 5.0


def _refuse(*args, **kwargs):
    raise AssertionError("a test tried to reach the network")


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
    """No network and an empty torch home for every test in this module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch-home")))
        mp.delenv(lm.WEIGHTS_ENV, raising=False)
        mp.setattr(socket.socket, "connect", _refuse)
        mp.setattr(socket, "create_connection", _refuse)
        mp.setattr(urllib.request, "urlopen", _refuse)
        if face_alignment is not None:
            mp.setattr(torch.hub, "_hub_dir", None)
            mp.setattr(torch.hub, "download_url_to_file", _refuse)
            mp.setattr(face_alignment.utils, "download_url_to_file", _refuse)
        yield


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory, offline):
    """Random FAN-4 weights, and S3FD weights whose prediction heads ignore the
    image: every head's weights are zero, so each outputs its bias; only the
    stride-128 head (conv7_2, 512 px anchors) scores a face, with logit
    FACE_SCORE_LOGIT against 0, and its box offsets are 0 (box = anchor)."""
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    d = tmp_path_factory.mktemp("fa-weights")
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), d / lm.FAN_FILE)
    state = s3fd().state_dict()
    for name, t in state.items():
        if "_mbox_" in name:
            t.zero_()
            if name.endswith("conf.bias"):
                t[:-1] = 0.0 if name.startswith("conv7_2") else FACE_SCORE_LOGIT
                t[-1] = FACE_SCORE_LOGIT if name.startswith("conv7_2") else 0.0
    torch.save(state, d / lm.S3FD_FILE)
    return d


@pytest.fixture(scope="module")
def detector(weights_dir):
    """Without flip averaging: one FAN pass per face (several seconds each
    on a loaded 2-core CPU)."""
    hub_before = torch.hub.get_dir()
    det = lm.LandmarkDetector(weights_dir, device="cpu", detector="sfd", flip_input=False)
    assert torch.hub.get_dir() == hub_before  # the temporary hub dir is undone
    return det


@pytest.fixture(scope="module")
def shifted_faces(detector, tmp_path_factory):
    """The same face (random texture) at two places: the second moved by dx
    columns and dy rows, read from a PNG. Returns the two landmark sets, the
    first image and box, and (dx, dy)."""
    face = _textured(90, 90, 3)
    dx, dy = 37, 11
    a = np.zeros((240, 260, 3), np.uint8)
    b = a.copy()
    a[60:150, 50:140] = face
    b[60 + dy:150 + dy, 50 + dx:140 + dx] = face
    box = [70, 80, 120, 130]
    path = tmp_path_factory.mktemp("shifted") / "shifted.png"
    Image.fromarray(b).save(path)
    pa = detector.detect(a, face_box=box)
    pb = detector.detect(path, face_box=[box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy])
    return pa, pb, a, box, (dx, dy)


def _textured(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ weights

@needs_fa
def test_missing_weights_names_files_dirs_and_urls(tmp_path, monkeypatch):
    def never(*a, **k):
        raise AssertionError("FaceAlignment must not be built without weights")
    monkeypatch.setattr(face_alignment, "FaceAlignment", never)
    with pytest.raises(lm.MissingWeightsError) as err:
        lm.detect_landmarks(_textured(32, 32, 0), weights_dir=tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    for text in (lm.FAN_FILE, lm.S3FD_FILE, str(tmp_path), str(tmp_path / "checkpoints"),
                 lm.WEIGHTS_ENV, lm.WEIGHT_URLS[lm.FAN_FILE], lm.WEIGHT_URLS[lm.S3FD_FILE]):
        assert text in msg
    assert err.value.missing == [lm.FAN_FILE, lm.S3FD_FILE]


@needs_fa
def test_face_box_needs_no_detector_weights(tmp_path, weights_dir, shifted_faces):
    (tmp_path / lm.FAN_FILE).symlink_to(weights_dir / lm.FAN_FILE)
    with pytest.raises(lm.MissingWeightsError) as err:
        lm.LandmarkDetector(tmp_path, detector="sfd")
    assert err.value.missing == [lm.S3FD_FILE] and lm.FAN_FILE not in str(err.value).split("\n")[0]
    boxed = lm.LandmarkDetector(tmp_path, detector=None, flip_input=False)
    pa, _, img, box, _ = shifted_faces
    np.testing.assert_array_equal(boxed.detect(img, face_box=box), pa)
    with pytest.raises(ValueError, match="face_box"):
        boxed.detect(img)


@needs_fa
def test_detect_landmarks_keeps_built_detectors(weights_dir, monkeypatch):
    built = []

    class Stub:
        def __init__(self, *args):
            built.append(args)

        def detect(self, image, face_box):
            return np.full((68, 2), -1.0 if face_box is None else 1.0)
    monkeypatch.setattr(lm, "LandmarkDetector", Stub)
    monkeypatch.setattr(lm, "_CACHE", {})
    img = _textured(32, 32, 8)
    assert lm.detect_landmarks(img, weights_dir, face_box=[4, 4, 20, 20])[0, 0] == 1.0
    lm.detect_landmarks(img, weights_dir, face_box=[4, 4, 20, 20])
    assert built == [(weights_dir, "cpu", None)]
    assert lm.detect_landmarks(img, weights_dir)[0, 0] == -1.0
    lm.detect_landmarks(img, weights_dir, face_box=[4, 4, 20, 20])
    assert built == [(weights_dir, "cpu", None), (weights_dir, "cpu", "sfd")]


@needs_fa
def test_weight_lookup_order(tmp_path, monkeypatch):
    arg, env, home = tmp_path / "arg", tmp_path / "env", tmp_path / "home"
    for d in (arg, env / "checkpoints", home / "hub" / "checkpoints"):
        d.mkdir(parents=True)
        (d / lm.FAN_FILE).write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert lm.find_weights(detector=None)["fan"] == home / "hub" / "checkpoints" / lm.FAN_FILE
    monkeypatch.setenv(lm.WEIGHTS_ENV, str(env))
    assert lm.find_weights(detector=None)["fan"] == env / "checkpoints" / lm.FAN_FILE
    assert lm.find_weights(arg, detector=None)["fan"] == arg / lm.FAN_FILE
    with pytest.raises(lm.MissingWeightsError, match=lm.S3FD_FILE):
        lm.find_weights(arg, detector="sfd")


@needs_fa
def test_download_attempt_becomes_missing_weights_error(weights_dir, monkeypatch):
    def offline_download(*a, **k):
        raise urllib.error.URLError("Name or service not known")
    monkeypatch.setattr(face_alignment, "FaceAlignment", offline_download)
    with pytest.raises(lm.MissingWeightsError, match=lm.FAN_FILE):
        lm.LandmarkDetector(weights_dir, detector=None)


# ------------------------------------------------------------------ detection

@needs_fa
def test_landmarks_in_face_box(shifted_faces):
    pts, _, img, _, _ = shifted_faces
    assert pts.shape == (68, 2) and pts.dtype == np.float64
    assert np.isfinite(pts).all()
    H, W = img.shape[:2]
    assert (pts >= 0).all() and (pts[:, 0] <= W - 1).all() and (pts[:, 1] <= H - 1).all()


@needs_fa
def test_landmarks_follow_the_face(shifted_faces):
    """Moving the face (image content and box) by dx columns and dy rows moves
    every landmark by exactly (dx, dy): x is the column, y the row."""
    pa, pb, _, _, (dx, dy) = shifted_faces
    np.testing.assert_allclose(pb - pa, np.tile([dx, dy], (68, 1)), atol=1e-9)


def test_load_image(tmp_path):
    grey = _textured(20, 30, 4)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(_textured(20, 30, 4)).save(tmp_path / "rgb.ppm")
    rgb, name = lm.load_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(rgb, np.dstack([grey] * 3))
    assert rgb.dtype == np.uint8 and name.endswith("grey.png")
    np.testing.assert_array_equal(lm.load_image(tmp_path / "rgb.ppm")[0], _textured(20, 30, 4))
    rgba = np.dstack([_textured(20, 30, 4), np.zeros((20, 30), np.uint8)])
    np.testing.assert_array_equal(lm.load_image(rgba)[0], _textured(20, 30, 4))
    np.testing.assert_array_equal(lm.load_image(grey)[0], np.dstack([grey] * 3))


def _ibug_mirror():
    """iBUG-68 left-right permutation, from the point definitions."""
    m = np.arange(68)
    m[0:17] = 16 - m[0:17]            # jaw
    m[17:27] = 43 - m[17:27]          # brows
    m[31:36] = 66 - m[31:36]          # nostrils (27-30 on the midline)
    m[36:48] = [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    m[48:55] = 102 - m[48:55]         # upper outer lip, corners 48 <-> 54
    m[55:60] = 114 - m[55:60]         # lower outer lip
    m[60:65] = 124 - m[60:65]         # upper inner lip
    m[65:68] = 132 - m[65:68]         # lower inner lip
    return m


@needs_fa
def test_flip_averaging(detector, shifted_faces, monkeypatch):
    """flip_input runs FAN on the crop and on its mirror image and adds the
    second heatmaps mirrored back with the left/right landmarks swapped."""
    from face_alignment import utils as fa
    pa, _, img, box, _ = shifted_faces
    x1, y1, x2, y2 = box
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2 - 0.12 * (y2 - y1)])
    scale = (x2 - x1 + y2 - y1) / 195.0
    crop = torch.from_numpy(fa.crop(img, center, scale).transpose(2, 0, 1)[None] / 255.0).float()
    calls, net = [], detector._fa.face_alignment_net

    def spy(x):
        out = net(x)
        calls.append((x, out[-1][0].numpy()))
        return out
    monkeypatch.setattr(detector._fa, "face_alignment_net", spy)
    monkeypatch.setattr(detector._fa, "flip_input", True)
    got = detector.detect(img, face_box=box)
    (x_plain, plain), (x_mirror, mirrored) = calls
    torch.testing.assert_close(x_plain, crop, rtol=0, atol=1e-7)
    torch.testing.assert_close(x_mirror, crop.flip(3), rtol=0, atol=1e-7)
    np.testing.assert_allclose(lm.heatmap_peaks(plain, center, scale), pa, atol=1e-9)
    expected = lm.heatmap_peaks(plain + mirrored[_ibug_mirror(), :, ::-1], center, scale)
    np.testing.assert_allclose(got, expected, atol=1e-9)


@needs_fa
def test_detector_path(detector, monkeypatch):
    """The stride-128 head covers a 128x128 image with 2x2 cells (fc7 pads by
    3), centred at 64 + 128 k with 512 px anchors; they overlap by IoU >= 0.39,
    so NMS (threshold 0.3) keeps exactly one: S3FD must return one of those
    anchors with score sigmoid(FACE_SCORE_LOGIT), and detection must use it."""
    img = _textured(128, 128, 5)
    boxes = detector.detect_faces(img)
    assert boxes.shape == (1, 5)
    np.testing.assert_allclose(boxes[0, 4], 1.0 / (1.0 + np.exp(-FACE_SCORE_LOGIT)), rtol=1e-6)
    centre, size = (boxes[0, :2] + boxes[0, 2:4]) / 2, boxes[0, 2:4] - boxes[0, :2]
    np.testing.assert_allclose(size, [512, 512], rtol=1e-6)
    assert set(centre.tolist()) <= {64.0, 192.0}
    # detect() must hand that box to FAN (spied on, one real FAN pass)
    seen = []
    real = detector._fan

    def spy(rgb, box):
        seen.append(box)
        return real(rgb, box)
    monkeypatch.setattr(detector, "_fan", spy)
    pts = detector.detect(img)
    assert pts.shape == (68, 2) and np.isfinite(pts).all()
    assert len(seen) == 1
    np.testing.assert_array_equal(seen[0], boxes[0, :4])


@needs_fa
def test_heatmap_peaks_match_face_alignment(monkeypatch):
    """Against face-alignment's own decoder run as plain Python (its numba
    versions, .py_func): it truncates to int32, so ours - theirs lies in
    [0, 1) for points at positive coordinates."""
    from face_alignment import utils as fa
    monkeypatch.setattr(fa, "transform_np", fa.transform_np.py_func)
    rng = np.random.default_rng(9)
    hm = rng.random((68, 64, 64)).astype(np.float32)
    for k, (y, x) in enumerate([(0, 5), (63, 10), (7, 0), (20, 63), (31, 31), (1, 62)]):
        hm[k, y, x] = 2.0  # border peaks skip the quarter-pixel shift
    center, scale = np.array([300.0, 260.0]), 1.3
    theirs = fa._get_preds_fromhm.py_func(hm[None].copy(), hm.reshape(1, 68, -1).argmax(-1),
                                           center, scale)[1][0]
    ours = lm.heatmap_peaks(hm, center, scale)
    diff = ours - theirs
    assert (ours > 0).all() and (diff > -1e-9).all() and (diff < 1).all()
    # two hand-computed points: h = 260 px, 1 heatmap px = 260 / 64 image px
    h = 200 * scale
    np.testing.assert_allclose(ours[0], (np.array([5, 0]) + 0.5) * h / 64 + center - h / 2)
    d = np.sign([hm[4, 31, 32] - hm[4, 31, 30], hm[4, 32, 31] - hm[4, 30, 31]])
    np.testing.assert_allclose(ours[4], (np.array([31, 31]) + 0.5 + 0.25 * d) * h / 64
                               + center - h / 2)


@needs_fa
def test_no_face_names_the_image(detector, tmp_path, monkeypatch):
    Image.fromarray(_textured(64, 64, 6)).save(tmp_path / "empty.jpg")
    monkeypatch.setattr(detector._fa.face_detector, "detect_from_image", lambda image: [])
    with pytest.raises(lm.NoFaceError, match="empty.jpg"):
        detector.detect(tmp_path / "empty.jpg")


@needs_fa
def test_bad_inputs(detector, tmp_path):
    img = _textured(64, 64, 7)
    with pytest.raises(ValueError, match="face_box"):
        detector.detect(img, face_box=[10, 10, 5, 40])
    with pytest.raises(ValueError, match="outside"):
        detector.detect(img, face_box=[100, 100, 140, 140])
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(img.astype(np.float32), face_box=[10, 10, 40, 40])
    with pytest.raises(lm.FormatError, match="nothing.png"):
        detector.detect(tmp_path / "nothing.png", face_box=[10, 10, 40, 40])
    with pytest.raises(ValueError, match="detector"):
        lm.detect_landmarks(img, detector="dlib")


# ------------------------------------------------------------------ 2D -> 3D

def _plane(i, j):
    """A linear function of grid coordinates: bilinear interpolation of it is
    exact, so expected values are computed by hand from (row, col)."""
    i, j = np.asarray(i, float), np.asarray(j, float)
    return np.stack([2.0 * j - 7.0, -1.5 * i + 3.0, 0.25 * i + 0.5 * j - 100.0], axis=-1)


def _frgc_scan(H=6, W=8):
    i, j = np.mgrid[0:H, 0:W]
    return RangeScan(_plane(i, j), np.ones((H, W), bool))


def test_frgc_pixel_alignment():
    scan = _frgc_scan()
    L = np.array([[3.0, 2.0], [0.0, 0.0], [3.25, 2.5]])  # (x=col, y=row)
    np.testing.assert_allclose(lm.landmarks_to_3d(L, scan),
                               _plane([2, 0, 2.5], [3, 0, 3.25]), atol=1e-12)
    # a photo twice the grid size: photo pixel centre x maps to (x + 0.5) / 2 - 0.5
    np.testing.assert_allclose(lm.landmarks_to_3d([[6.5, 4.5]], scan, image_size=(12, 16)),
                               _plane([2.0], [3.0]), atol=1e-12)


def test_frgc_holes_and_outside():
    scan = _frgc_scan()
    for r, c in ((2, 3), (2, 2), (1, 3), (3, 3)):
        scan.valid[r, c] = False
        scan.xyz[r, c] = np.nan
    # exactly on a hole pixel: the only valid grid point at distance 1 is (2, 4)
    np.testing.assert_allclose(lm.landmarks_to_3d([[3.0, 2.0]], scan), _plane([2], [4]))
    # between (2,3) [hole] and (2,4), (3,3) [hole], (3,4): the valid corners (2,4), (3,4)
    # have equal weight -> the mean of the two
    np.testing.assert_allclose(lm.landmarks_to_3d([[3.5, 2.5]], scan), _plane([2.5], [4]),
                               atol=1e-12)
    with pytest.raises(ValueError, match="landmark 1 .*outside the scan"):
        lm.landmarks_to_3d([[1.0, 1.0], [30.0, 2.0]], scan)
    with pytest.raises(ValueError, match="landmark 0 .*outside the scan"):
        lm.landmarks_to_3d([[3.0, 2.0]], scan, max_gap=0.5)


def _bosphorus_scan(texture_path=None, H=5, W=4, Hi=50, Wi=40):
    """Grid rows stored bottom-first: grid (i, j) sits at photo pixel
    (x = 10 j + 5, y = 10 (H - 1 - i) + 5)."""
    i, j = np.mgrid[0:H, 0:W]
    uv = np.stack([(10.0 * j + 5) / Wi, (10.0 * (H - 1 - i) + 5) / Hi], axis=-1)
    return RangeScan(_plane(i, j), np.ones((H, W), bool), texture_path, uv)


def test_bosphorus_uv(tmp_path):
    Image.fromarray(np.zeros((50, 40, 3), np.uint8)).save(tmp_path / "tex.png")
    scan = _bosphorus_scan(tmp_path / "tex.png")
    # (25, 15): column 2, photo row 1 -> grid row 3; (20, 20): halfway -> (2.5, 1.5)
    L = [[25.0, 15.0], [20.0, 20.0], [5.0, 45.0]]
    np.testing.assert_allclose(lm.landmarks_to_3d(L, scan),
                               _plane([3, 2.5, 0], [2, 1.5, 0]), atol=1e-12)
    scan.valid[3, 2] = False
    np.testing.assert_allclose(lm.landmarks_to_3d([[26.0, 15.0]], scan), _plane([3], [3]))
    with pytest.raises(ValueError, match="landmark 1 .*outside the scan"):
        lm.landmarks_to_3d([[25.0, 15.0], [200.0, 15.0]], scan)


def test_bosphorus_needs_photo_size():
    with pytest.raises(ValueError, match="image_size"):
        lm.landmarks_to_3d([[25.0, 15.0]], _bosphorus_scan())
    np.testing.assert_allclose(
        lm.landmarks_to_3d([[25.0, 15.0]], _bosphorus_scan(), image_size=(50, 40)),
        _plane([3], [2]), atol=1e-12)


def test_cli_writes_pts_with_the_weights_flag(weights_dir, tmp_path):
    from PIL import Image

    from dce.cli.landmarks import main
    from dce.geom.io import read_landmarks

    image = tmp_path / "face.png"
    Image.fromarray(_textured(480, 400, 3)).save(image)  # the FAN crop spans 1.3x the box
    code = main([str(image), "--landmark-weights", str(weights_dir), "--box", "130", "160", "270",
                 "320", "--out", str(tmp_path / "pts")])
    assert code == 0
    points = read_landmarks(tmp_path / "pts" / "face.pts").points
    assert points.shape == (68, 2)
    assert (points[:, 0] >= 0).all() and (points[:, 0] < 400).all()
    assert (points[:, 1] >= 0).all() and (points[:, 1] < 480).all()


def test_cli_missing_weights_exits_2_and_names_the_file(tmp_path, capsys):
    from dce.cli.landmarks import main

    empty = tmp_path / "none"
    empty.mkdir()
    assert main([str(tmp_path / "x.png"), "--landmark-weights", str(empty)]) == 2
    assert lm.FAN_FILE in capsys.readouterr().err
