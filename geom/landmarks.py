"""68-point facial landmarks: detection on a photo (face-alignment's FAN, weights
never downloaded), lifting onto a range scan.

See docs/dataset-inputs.md (the weights' lookup, lifting).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import tempfile
import threading
import urllib.error
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from .records import FormatError, PathLike, RangeScan

FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
S3FD_FILE = "s3fd-619a316812.pth"
WEIGHT_URLS = {
    FAN_FILE: "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar",
    S3FD_FILE: "https://www.adrianbulat.com/downloads/python-fan/s3fd-619a316812.pth",
}
WEIGHTS_ENV = "DCE_FACE_ALIGNMENT_WEIGHTS"
WEIGHTS_FLAG = "--landmark-weights"
DETECTORS = ("sfd", None)
N_LANDMARKS = 68


class MissingWeightsError(FileNotFoundError):
    """Landmark weights are not on disk. ``missing`` lists the file names,
    ``searched`` the directories looked in; the message says where to get
    them and where to put them."""

    def __init__(self, missing: Sequence[str], searched: Sequence[Path], origin: str):
        self.missing = list(missing)
        self.searched = [Path(d) for d in searched]
        urls = "\n".join(f"  {WEIGHT_URLS[name]}" for name in self.missing)
        super().__init__(
            f"face-alignment weights not found: missing {', '.join(self.missing)}\n"
            f"searched ({origin}): {', '.join(str(d) for d in self.searched)}\n"
            f"Download on a machine with internet access:\n{urls}\n"
            f"then put the files (names unchanged) in one directory and pass it as "
            f"weights_dir= ({WEIGHTS_FLAG} DIR on the command line) or set {WEIGHTS_ENV}=DIR, "
            f"or copy them into the torch hub cache {_hub_checkpoints()}. "
            f"{S3FD_FILE} (the face detector) is not needed when a face box is given.")


class NoFaceError(ValueError):
    """The face detector found no face in an image (the message names it)."""


# ------------------------------------------------------------------ weights

def _hub_checkpoints() -> Path:
    import torch.hub
    return Path(torch.hub.get_dir()) / "checkpoints"


def weight_directories(weights_dir: PathLike | None = None) -> tuple:
    """The directories searched for weight files, in order, and where they
    came from: ``(dirs, origin)``. See the module docstring for the order."""
    if weights_dir is not None:
        root, origin = Path(weights_dir).expanduser(), "weights_dir argument"
    elif os.environ.get(WEIGHTS_ENV):
        root, origin = Path(os.environ[WEIGHTS_ENV]).expanduser(), f"${WEIGHTS_ENV}"
    else:
        return [_hub_checkpoints()], "torch hub cache"
    return [root, root / "checkpoints"], origin


def find_weights(weights_dir: PathLike | None = None, detector: str | None = "sfd") -> dict:
    """Paths of the weight files needed: ``{"fan": Path, "detector": Path or
    None}``. Raises :class:`MissingWeightsError` if any is absent."""
    _check_detector(detector)
    needed = {"fan": FAN_FILE, "detector": S3FD_FILE if detector == "sfd" else None}
    dirs, origin = weight_directories(weights_dir)
    found, missing = {}, []
    for role, name in needed.items():
        hits = [d / name for d in dirs if (d / name).is_file()] if name else [None]
        if hits:
            found[role] = hits[0]
        else:
            missing.append(name)
    if missing:
        raise MissingWeightsError(missing, dirs, origin)
    return found


def _check_detector(detector) -> None:
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS} (None: face boxes are given), "
                         f"got {detector!r}")


_HUB_LOCK = threading.Lock()


@contextlib.contextmanager
def _hub_dir_holding(fan_path: Path):
    """Point torch's hub directory at a temporary one whose ``checkpoints/``
    holds ``fan_path`` under its cache name: face-alignment has no argument for
    the FAN weight path and always loads it from the hub cache. The previous
    hub directory is restored afterwards."""
    import torch.hub
    with _HUB_LOCK, tempfile.TemporaryDirectory(prefix="dce-fan-") as tmp:
        ckpt = Path(tmp) / "checkpoints"
        ckpt.mkdir()
        try:
            os.symlink(fan_path.resolve(), ckpt / FAN_FILE)
        except OSError:  # no symlinks (some Windows setups): copy instead
            shutil.copyfile(fan_path, ckpt / FAN_FILE)
        # set_dir cannot restore "unset" (None), so the module global is saved
        # and put back directly.
        previous = torch.hub._hub_dir
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


# ------------------------------------------------------------------ images

def load_image(image) -> tuple:
    """``(rgb, name)``: the image as a C-contiguous (H, W, 3) uint8 RGB array
    and a name for messages. ``image`` is a path (any format PIL reads:
    .ppm, .png, .jpg ...; greyscale and palette images become RGB) or an
    (H, W), (H, W, 3) or (H, W, 4) uint8 array (alpha is dropped)."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError
        path = Path(image)
        if not path.is_file():
            raise FormatError(f"{path}: no such image file")
        try:
            with Image.open(path) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as e:
            raise FormatError(f"{path}: cannot read the image ({e})") from None
        return np.ascontiguousarray(rgb), str(path)
    arr = np.asarray(image)
    name = f"image array {arr.shape}"
    if arr.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels (0-255), got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[:, :, :3]
    else:
        raise ValueError(f"{name}: expected (H, W), (H, W, 3) or (H, W, 4)")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name}: image is empty")
    return np.ascontiguousarray(arr), name


def _box_list(face_box, shape, name) -> list:
    """``face_box`` as floats [x1, y1, x2, y2], checked against the image."""
    box = np.asarray(face_box, dtype=np.float64).ravel()
    if box.size not in (4, 5) or not np.isfinite(box[:4]).all():
        raise ValueError(f"face_box must be 4 finite numbers [x1, y1, x2, y2] in pixels, "
                         f"got {face_box!r}")
    x1, y1, x2, y2 = box[:4]
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face_box {box[:4].tolist()}: need x2 > x1 and y2 > y1")
    H, W = shape[:2]
    if x2 < 0 or y2 < 0 or x1 > W - 1 or y1 > H - 1:
        raise ValueError(f"face_box {box[:4].tolist()} lies outside {name} ({W}x{H} pixels)")
    return [float(x1), float(y1), float(x2), float(y2)]


# ------------------------------------------------------------------ detection

class LandmarkDetector:
    """FAN 2D-68 landmark network plus (optionally) the S3FD face detector.

    ``weights_dir``: see :func:`find_weights`; ``device``: a torch device
    string ("cpu", "cuda", "cuda:1", "mps"); ``detector``: "sfd" or None
    (no detector: every call must give ``face_box``; its weights are then not
    needed); ``flip_input``: also run FAN on the mirrored crop and average the
    heatmaps (face-alignment's default; twice the cost). Raises :class:`MissingWeightsError` before building anything if a
    weight file is missing.
    """

    def __init__(self, weights_dir: PathLike | None = None, device: str = "cpu",
                 detector: str | None = "sfd", flip_input: bool = True):
        _check_detector(detector)
        self.weights = find_weights(weights_dir, detector)
        self.device = _checked_device(device)
        self.detector = detector
        self._fa = _build_face_alignment(self.weights, self.device, weights_dir, detector,
                                         flip_input)

    def detect_faces(self, image) -> np.ndarray:
        """Face boxes found by S3FD: (k, 5) float64 rows [x1, y1, x2, y2,
        score] in pixels, k = 0 when there is no face."""
        if self.detector is None:
            raise ValueError("this LandmarkDetector was built with detector=None; "
                             "build it with detector='sfd' to find faces")
        rgb, _ = load_image(image)
        boxes = self._fa.face_detector.detect_from_image(rgb.copy())
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 5)

    def detect(self, image, face_box=None) -> np.ndarray:
        """(68, 2) float64 landmarks [x = column, y = row] in pixels for one
        face: the one in ``face_box`` ([x1, y1, x2, y2] pixels) when given,
        else the largest face S3FD finds (its boxes already pass a 0.5
        confidence threshold). Raises :class:`NoFaceError` naming the image
        when no face is found."""
        rgb, name = load_image(image)
        if face_box is None:
            if self.detector is None:
                raise ValueError("this LandmarkDetector has no face detector (detector=None): "
                                 "pass face_box=[x1, y1, x2, y2]")
            boxes = self.detect_faces(rgb)
            if len(boxes) == 0:
                raise NoFaceError(f"{name}: no face found by the S3FD detector")
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            face_box = boxes[np.argmax(area), :4]
        return self._fan(rgb, _box_list(face_box, rgb.shape, name))

    def _fan(self, rgb, box) -> np.ndarray:
        """FAN on the box's crop, as face-alignment's get_landmarks_from_image
        (same crop, flip averaging) but decoding the heatmaps with
        :func:`heatmap_peaks` (sub-pixel, no numba JIT)."""
        import torch
        from face_alignment import utils as fa
        x1, y1, x2, y2 = box
        center = np.array([(x1 + x2) / 2, (y1 + y2) / 2 - (y2 - y1) * fa.CENTER_Y_OFFSET])
        scale = (x2 - x1 + y2 - y1) / self._fa.face_detector.reference_scale
        patch = fa.crop(rgb, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0
        inp = torch.from_numpy(patch[None]).to(self.device, dtype=self._fa.dtype)
        net = self._fa.face_alignment_net
        with torch.no_grad():
            hm = _last(net(inp))
            if self._fa.flip_input:
                hm = hm + fa.flip(_last(net(fa.flip(inp))), is_label=True)
        return heatmap_peaks(hm[0].to("cpu", torch.float32).numpy(), center, scale)


def _last(out):
    """FAN returns one heatmap stack per hourglass; the last is the output."""
    return out[-1] if isinstance(out, (list, tuple)) else out


def heatmap_peaks(heatmaps: np.ndarray, center, scale: float) -> np.ndarray:
    """(68, 2) float64 image points [x, y] from FAN heatmaps (68, 64, 64) of
    the crop around ``center`` (x, y) pixels spanning ``200 * scale`` pixels.

    face-alignment's decoding (``utils.get_preds_fromhm``): the arg-max in
    1-based heatmap coordinates, moved 0.25 toward the larger neighbour on
    each axis (interior peaks only), minus 0.5, mapped back through the crop's
    affine map ``x_img = p * h / 64 + center - h / 2`` with ``h = 200 *
    scale``. face-alignment then truncates to int32; this keeps the fraction.
    """
    C, H, W = heatmaps.shape
    py, px = np.divmod(heatmaps.reshape(C, -1).argmax(axis=1), W)
    p = np.column_stack([px, py]).astype(np.float64) + 1.0
    k = np.flatnonzero((px > 0) & (px < W - 1) & (py > 0) & (py < H - 1))
    hm, y, x = heatmaps[k], py[k], px[k]
    i = np.arange(len(k))
    p[k] += 0.25 * np.sign(np.column_stack([hm[i, y, x + 1] - hm[i, y, x - 1],
                                            hm[i, y + 1, x] - hm[i, y - 1, x]]))
    h = 200.0 * scale
    return (p - 0.5) * (h / W) + np.asarray(center, dtype=np.float64) - h / 2


def _checked_device(device: str) -> str:
    import torch
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {device!r} is not a torch device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: face-alignment runs on cpu, cuda or mps only")
    return str(dev)


def _build_face_alignment(weights: dict, device: str, weights_dir, detector, flip_input):
    import face_alignment
    if detector == "sfd":
        kind, kwargs = "sfd", {"path_to_detector": str(weights["detector"])}
    else:  # "folder" reads boxes from files beside images and needs no weights;
        kind, kwargs = "folder", {}  # we always pass the boxes ourselves
    try:
        with _hub_dir_holding(weights["fan"]):
            return face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=device, face_detector=kind,
                face_detector_kwargs=kwargs, compile=False, flip_input=flip_input)
    except (OSError, urllib.error.URLError) as e:
        # face-alignment tried to download: a file vanished after the check
        missing = [p.name for p in weights.values() if p is not None and not p.is_file()]
        dirs, origin = weight_directories(weights_dir)
        raise MissingWeightsError(missing or [p.name for p in weights.values() if p],
                                  dirs, origin) from e
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:
        files = ", ".join(str(p) for p in weights.values() if p is not None)
        raise RuntimeError(f"cannot load face-alignment weights from {files}: {e}") from e


_CACHE: dict = {}
_CACHE_SIZE = 2


def detect_landmarks(image, weights_dir: PathLike | None = None, device: str = "cpu",
                     face_box=None, detector: str | None = "sfd") -> np.ndarray:
    """(68, 2) float64 landmarks [x = column, y = row] in pixels of the
    largest face in ``image`` (a path or an (H, W, 3) uint8 RGB array), or of
    the face in ``face_box`` [x1, y1, x2, y2] when given (then the detector
    and its weights are not used). See :class:`LandmarkDetector`; the last
    two detectors built are kept for reuse, keyed by weight files and device.
    """
    _check_detector(detector)
    need = None if face_box is not None else detector
    weights = find_weights(weights_dir, need)
    device = _checked_device(device)
    fan = weights["fan"].resolve()
    key = (fan, device, None if weights["detector"] is None else weights["detector"].resolve())
    hit = _CACHE.get(key)
    if hit is None and need is None:  # any detector sharing the FAN will do
        hit = next((d for (f, dev, _), d in _CACHE.items() if (f, dev) == (fan, device)), None)
    if hit is None:
        hit = LandmarkDetector(weights_dir, device, need)
        _CACHE[key] = hit
        while len(_CACHE) > _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
    return hit.detect(image, face_box)


# ------------------------------------------------------------------ 2D -> 3D

def landmarks_to_3d(landmarks_2d, scan: RangeScan, image_size: Sequence[int] | None = None,
                    max_gap: float = 3.0) -> np.ndarray:
    """Lift photo landmarks onto a range scan registered with the photo.

    ``landmarks_2d`` (k, 2) [x = column, y = row] pixels of the photo;
    ``scan`` a :class:`~dce.geom.io.RangeScan`; ``image_size`` (H, W) of the
    photo, default: read from ``scan.texture_path``, else (without ``uv``) the
    grid size. Returns (k, 3) float64 scan points in mm.

    - Without ``scan.uv`` (FRGC) photo and grid are pixel-aligned: a photo
      point maps to grid coordinates by scaling about pixel centres,
      ``col = (x + 0.5) * W_grid / W_photo - 0.5`` (likewise rows).
    - With ``scan.uv`` (Bosphorus) grid point (i, j) sits at photo pixel
      ``(u * W_photo, v * H_photo)``; the landmark's grid coordinates are
      those of the nearest valid grid point refined by one Newton step on the
      local uv map (at most one grid step).

    The 3D point is the bilinear interpolation of the valid grid points among
    the four around those grid coordinates (weights renormalized), or the
    nearest valid grid point when none of the four is valid (a hole). A
    landmark whose nearest valid grid point is more than ``max_gap`` grid
    steps away raises ``ValueError`` naming the landmark ("landmark 30 falls
    outside the scan").
    """
    src = str(scan.source) if scan.source is not None else "range scan"
    L = np.asarray(landmarks_2d, dtype=np.float64)
    if L.ndim != 2 or L.shape[1] != 2 or len(L) == 0:
        raise ValueError(f"landmarks_2d must be (k, 2) pixel coordinates, got {L.shape}")
    bad = np.flatnonzero(~np.isfinite(L).all(axis=1))
    if bad.size:
        raise ValueError(f"landmarks_2d: landmark {bad[0]} is not finite ({L[bad[0]].tolist()})")
    usable = scan.valid & np.isfinite(scan.xyz).all(axis=2)
    if scan.uv is not None:
        usable &= np.isfinite(scan.uv).all(axis=2)
    if not usable.any():
        raise ValueError(f"{src}: the scan has no valid points")
    Hi, Wi = _photo_size(scan, image_size, src)
    H, W = scan.shape
    ij = np.argwhere(usable)

    if scan.uv is None:
        rc = np.column_stack([(L[:, 1] + 0.5) * H / Hi - 0.5, (L[:, 0] + 0.5) * W / Wi - 0.5])
        gap, near = cKDTree(ij).query(rc)
    else:
        P = scan.uv * (Wi, Hi)  # (H, W, 2) photo (x, y) of every grid point
        dist, near = cKDTree(P[usable]).query(L)
        gap = dist / _grid_step_px(P, usable, src)
        rc = ij[near] + _newton_step(P, ij[near], L)
    far = np.flatnonzero(gap > max_gap)
    if far.size:
        k = far[0]
        raise ValueError(
            f"{src}: landmark {k} at (x={L[k, 0]:.1f}, y={L[k, 1]:.1f}) falls outside the scan "
            f"(nearest valid scan point {gap[k]:.1f} grid steps away, max_gap={max_gap})")
    return _bilinear_valid(scan.xyz, usable, rc, scan.xyz[tuple(ij[near].T)])


def _photo_size(scan: RangeScan, image_size, src) -> tuple:
    if image_size is not None:
        Hi, Wi = (int(s) for s in image_size)
        if Hi < 1 or Wi < 1:
            raise ValueError(f"image_size must be positive (H, W), got {image_size!r}")
        return Hi, Wi
    if scan.texture_path is not None:
        from PIL import Image
        if not Path(scan.texture_path).is_file():
            raise FormatError(
                f"{src}: its photo {scan.texture_path} is missing; the photo's size places "
                f"the 2D landmarks on the scan. Restore the photo, or give its size "
                f"(dce-build --photo-size H W; image_size=(H, W) here)")
        try:
            with Image.open(scan.texture_path) as im:
                return im.size[1], im.size[0]
        except OSError as e:
            raise FormatError(f"{scan.texture_path}: cannot read the photo size ({e})") from None
    if scan.uv is not None:
        raise ValueError(f"{src}: the scan maps to its photo through uv but names no photo, "
                         f"so the photo's size is unknown; give it (dce-build --photo-size H W; "
                         f"image_size=(H, W) here)")
    return scan.shape


def _grid_step_px(P, usable, src) -> float:
    """Median photo distance (px) between adjacent valid grid points."""
    d = np.concatenate([
        np.linalg.norm(P[:, 1:] - P[:, :-1], axis=2)[usable[:, 1:] & usable[:, :-1]],
        np.linalg.norm(P[1:] - P[:-1], axis=2)[usable[1:] & usable[:-1]]])
    d = d[d > 0]
    if d.size == 0:
        raise ValueError(f"{src}: no two adjacent valid grid points have distinct uv")
    return float(np.median(d))


def _newton_step(P, ij, L) -> np.ndarray:
    """(k, 2) grid offsets (drow, dcol) in [-1, 1] from grid points ``ij`` to
    the landmarks ``L``, solving the local linearization of the photo map
    ``P`` (central differences, one-sided at the border). Zero where the
    Jacobian is not finite or singular."""
    H, W = P.shape[:2]
    i, j = ij.T
    ip, im = np.minimum(i + 1, H - 1), np.maximum(i - 1, 0)
    jp, jm = np.minimum(j + 1, W - 1), np.maximum(j - 1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        d_row = (P[ip, j] - P[im, j]) / np.maximum(ip - im, 1)[:, None]
        d_col = (P[i, jp] - P[i, jm]) / np.maximum(jp - jm, 1)[:, None]
        J = np.stack([d_row, d_col], axis=2)  # (k, 2 [x, y], 2 [row, col])
        det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
        r = L - P[i, j]
        step = np.column_stack([J[:, 1, 1] * r[:, 0] - J[:, 0, 1] * r[:, 1],
                                J[:, 0, 0] * r[:, 1] - J[:, 1, 0] * r[:, 0]]) / det[:, None]
    scale = np.abs(J).reshape(len(J), -1).max(axis=1)
    ok = np.isfinite(step).all(axis=1) & (np.abs(det) > 1e-12 * np.maximum(scale, 1e-300) ** 2)
    return np.where(ok[:, None], np.clip(step, -1.0, 1.0), 0.0)


def _bilinear_valid(xyz, usable, rc, fallback) -> np.ndarray:
    """Bilinear interpolation of ``xyz`` (H, W, 3) at fractional grid points
    ``rc`` (k, 2) using only usable corners (weights renormalized);
    ``fallback`` (k, 3) where no corner with positive weight is usable."""
    H, W = usable.shape
    r0, c0 = np.floor(rc[:, 0]).astype(np.int64), np.floor(rc[:, 1]).astype(np.int64)
    fr, fc = rc[:, 0] - r0, rc[:, 1] - c0
    total, wsum = np.zeros((len(rc), 3)), np.zeros(len(rc))
    for dr, dc, w in ((0, 0, (1 - fr) * (1 - fc)), (0, 1, (1 - fr) * fc),
                      (1, 0, fr * (1 - fc)), (1, 1, fr * fc)):
        r, c = r0 + dr, c0 + dc
        inside = (r >= 0) & (r < H) & (c >= 0) & (c < W)
        rr, cc = np.clip(r, 0, H - 1), np.clip(c, 0, W - 1)
        w = np.where(inside & usable[rr, cc], w, 0.0)
        total += w[:, None] * np.nan_to_num(xyz[rr, cc])
        wsum += w
    hit = wsum > 1e-9
    out = fallback.copy()
    out[hit] = total[hit] / wsum[hit, None]
    return out
