"""Scan-to-mesh error of predicted face meshes against ground-truth scans by
the NoW protocol, pooled over all points and given per mesh and, optionally,
per face region; the folder layout that ``dce-eval-mesh`` reads.

See docs/evaluation.md (regions, folders).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import igl
import numpy as np
from scipy.spatial import cKDTree

from .alignment import (
    NOW_RADIUS_FACTOR,
    AlignmentError,
    IcpResult,
    Similarity,
    crop_sphere,
    icp,
    inside_sphere,
    now_landmarks,
    procrustes,
)
from .dce import save_png
from .landmark_formats import read_landmarks, write_landmarks
from .mesh_formats import _MESH_READERS, load_mesh, save_mesh
from .records import FormatError, Landmarks, atomic_path, atomic_write
from .scan_formats import read_abs, read_bnt

REGIONS = ("forehead", "nose", "eyes", "cheeks", "mouth", "chin")
_SEEDS = {
    "nose": list(range(27, 36)),
    "eyes": list(range(36, 48)) + list(range(17, 27)),
    "mouth": list(range(48, 60)),
    "chin": list(range(6, 11)) + [(57, 8)],
    "cheeks": list(range(0, 6)) + list(range(11, 17))
    + [(31, 2), (35, 14), (48, 4), (54, 12), (41, 1), (46, 15)],
}
CURVE_MAX_MM = 8.0  # the NoW cumulative error plot's range


# ------------------------------------------------------------ distances and statistics


def point_surface_distance(P: np.ndarray, V: np.ndarray, F: np.ndarray) -> tuple:
    """Unsigned distance from each point P (n, 3) to the nearest point of
    the triangles (V (k, 3), F (m, 3)): (distances (n,), nearest face (n,),
    nearest points (n, 3))."""
    d2, face, closest = igl.point_mesh_squared_distance(
        np.ascontiguousarray(P, dtype=np.float64), np.ascontiguousarray(V, dtype=np.float64),
        np.ascontiguousarray(F, dtype=np.int64))
    return np.sqrt(d2), face, closest


@dataclass
class ErrorStats:
    """Median, mean and population std (mm) of ``n_points`` errors (NaN for none)."""

    median_mm: float
    mean_mm: float
    std_mm: float
    n_points: int

    def to_dict(self) -> dict:
        def value(x):
            return None if not np.isfinite(x) else float(x)
        return {"median_mm": value(self.median_mm), "mean_mm": value(self.mean_mm),
                "std_mm": value(self.std_mm), "n_points": self.n_points}


def error_stats(d: np.ndarray) -> ErrorStats:
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return ErrorStats(float("nan"), float("nan"), float("nan"), 0)
    return ErrorStats(float(np.median(d)), float(d.mean()), float(d.std()), int(d.size))


def face_regions(points: np.ndarray, landmarks68: np.ndarray) -> np.ndarray:
    """(n,) int8 index into :data:`REGIONS` of each point (n, 3), from the
    68 iBUG landmarks (68, 3) of the same surface (module docstring)."""
    L = np.asarray(landmarks68, dtype=np.float64)
    if L.shape != (68, 3) or not np.isfinite(L).all():
        raise AlignmentError(f"face regions need the 68 iBUG landmarks (68, 3), got {L.shape}")
    x = L[45] - L[36]
    up = L[17:27].mean(axis=0) - L[8]
    x /= np.linalg.norm(x)
    up -= (up @ x) * x
    up /= np.linalg.norm(up)
    frame = np.column_stack([x, up])
    Q, Lq = (np.asarray(points, dtype=np.float64) - L[30]) @ frame, (L - L[30]) @ frame
    labels, seeds = [], []
    for region, entries in _SEEDS.items():
        for e in entries:
            seeds.append(Lq[list(e)].mean(axis=0) if isinstance(e, tuple) else Lq[e])
            labels.append(REGIONS.index(region))
    out = np.asarray(labels, dtype=np.int8)[cKDTree(np.array(seeds)).query(Q)[1]]
    brow = Lq[17:27][np.argsort(Lq[17:27, 0])]
    out[Q[:, 1] > np.interp(Q[:, 0], brow[:, 0], brow[:, 1])] = REGIONS.index("forehead")
    return out


# ------------------------------------------------------------ one mesh


@dataclass
class MeshEvaluation:
    """One prediction against one ground truth: the cropped ground-truth
    ``points`` (n, 3) and the ``faces`` (m, 3) among them, each point's
    error ``distances`` (n,) mm, the ``transform`` that aligned the
    prediction (prediction -> ground-truth frame), the ICP record and the
    point ``regions`` (n,) (indices into :data:`REGIONS`) or None."""

    points: np.ndarray
    faces: np.ndarray
    distances: np.ndarray
    transform: Similarity
    fit: IcpResult
    regions: np.ndarray | None = None

    def stats(self) -> ErrorStats:
        return error_stats(self.distances)

    def region_stats(self) -> dict:
        """{region: ErrorStats} (empty without regions)."""
        if self.regions is None:
            return {}
        return {name: error_stats(self.distances[self.regions == k])
                for k, name in enumerate(REGIONS)}


def evaluate_mesh(gt_V: np.ndarray, gt_F: np.ndarray, gt_landmarks: np.ndarray,
                  pred_V: np.ndarray, pred_F: np.ndarray, pred_landmarks: np.ndarray,
                  metric: bool = False, regions: bool = False,
                  radius_factor: float = NOW_RADIUS_FACTOR,
                  max_icp_points: int = 6000) -> MeshEvaluation:
    """The NoW protocol for one pair. Ground truth: vertices gt_V (n, 3)
    (its points), faces gt_F (m, 3) (only carried to the output) and
    landmarks (7 or 68, 3); prediction: a triangle mesh and its landmarks
    (7 or 68, 3). ``metric``: rigid Procrustes and ICP (no scale), for
    outputs in mm. ``regions`` needs 68 ground-truth landmarks.
    :class:`AlignmentError` for unusable inputs."""
    gt7 = now_landmarks(gt_landmarks, "ground-truth landmarks")
    pred7 = now_landmarks(pred_landmarks, "predicted landmarks")
    if regions and len(gt_landmarks) != 68:
        raise AlignmentError(f"regions need the 68 iBUG ground-truth landmarks, got "
                             f"{len(gt_landmarks)}")
    if len(pred_F) == 0:
        raise AlignmentError("the predicted mesh has no faces")
    centre, radius = crop_sphere(gt7, radius_factor)
    keep = inside_sphere(gt_V, centre, radius)
    if keep.sum() < 7:
        raise AlignmentError(f"{int(keep.sum())} ground-truth points lie in the face sphere "
                             f"(radius {radius:.1f} mm about {np.round(centre, 1).tolist()}); "
                             "are the landmarks on this surface?")
    remap = np.cumsum(keep) - 1
    gt_F = np.asarray(gt_F, dtype=np.int64)
    faces = remap[gt_F[keep[gt_F].all(axis=1)]] if len(gt_F) else np.zeros((0, 3), np.int64)
    points = np.asarray(gt_V, dtype=np.float64)[keep]
    init = procrustes(pred7, gt7, scale=not metric)
    fit = icp(points, pred_V, pred_F, init, scale=not metric, max_points=max_icp_points)
    labels = face_regions(points, gt_landmarks) if regions else None
    # The distances of ICP's last evaluation: the libigl AABB query of
    # point_surface_distance, run in the mesh's frame and scaled by s.
    return MeshEvaluation(points, faces, fit.distances, fit.transform, fit, labels)


# ------------------------------------------------------------ pictures and PLY


def error_colors(d: np.ndarray, max_mm: float = 4.0) -> np.ndarray:
    """(n, 3) uint8 colours of errors d (n,) mm: blue 0, cyan, green, yellow,
    red at ``max_mm`` and above."""
    t = np.clip(np.nan_to_num(np.asarray(d, dtype=np.float64), nan=max_mm) / max_mm, 0, 1)
    stops = np.linspace(0, 1, 5)
    rgb = np.array([[0, 0, 255], [0, 220, 255], [0, 200, 0], [255, 230, 0], [230, 0, 0]])
    return np.column_stack([np.interp(t, stops, rgb[:, c]) for c in range(3)]).round() \
        .astype(np.uint8)


def signed_colors(values: np.ndarray, max_abs: float | None = None) -> np.ndarray:
    """(n, 3) uint8 diverging colours of signed values (n,): blue at
    -``max_abs``, white at 0, red at +``max_abs`` (default: the largest
    magnitude)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    scale = float(np.abs(v).max()) if max_abs is None else float(max_abs)
    t = np.clip(v / scale, -1, 1) if scale > 0 else np.zeros_like(v)
    rgb = np.array([[40, 70, 230], [255, 255, 255], [220, 30, 30]])
    return np.column_stack([np.interp(t, [-1, 0, 1], rgb[:, c]) for c in range(3)]).round() \
        .astype(np.uint8)


def write_scalar_ply(path, V: np.ndarray, F: np.ndarray, scalars: dict,
                     colors: np.ndarray | None = None) -> Path:
    """Binary PLY of vertices V (n, 3) (double), optional uchar ``colors``
    (n, 3), one float vertex property per entry of ``scalars`` {name: (n,)}
    and faces F (m, 3) (may be empty: a point cloud). Written atomically."""
    V = np.asarray(V, dtype=np.float64)
    F = np.asarray(F, dtype=np.int64).reshape(-1, 3)
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    if colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    fields += [(name, "<f4") for name in scalars]
    vertex = np.empty(len(V), dtype=fields)
    vertex["x"], vertex["y"], vertex["z"] = V.T
    if colors is not None:
        vertex["red"], vertex["green"], vertex["blue"] = np.asarray(colors, np.uint8).T
    for name, values in scalars.items():
        vertex[name] = values
    face = np.empty(len(F), dtype=[("n", "u1"), ("v", "<i4", 3)])
    face["n"], face["v"] = 3, F
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(V)}"]
    header += [f"property {'double' if t == '<f8' else 'uchar' if t == 'u1' else 'float'} {n}"
               for n, t in fields]
    header += [f"element face {len(F)}", "property list uchar int vertex_indices",
               "end_header"]
    data = ("\n".join(header) + "\n").encode("ascii") + vertex.tobytes() + face.tobytes()
    atomic_write(path, data)
    return Path(path)


def cumulative_curve(d: np.ndarray, max_mm: float = CURVE_MAX_MM, n: int = 401) -> tuple:
    """(x (n,) mm in [0, max_mm], fraction (n,) of the errors d that are <= x)."""
    x = np.linspace(0.0, max_mm, n)
    d = np.sort(np.asarray(d, dtype=np.float64).ravel())
    frac = np.searchsorted(d, x, side="right") / max(len(d), 1)
    return x, frac


def plot_cumulative(path, curves: dict, max_mm: float = CURVE_MAX_MM) -> Path:
    """PNG of the cumulative error curves {label: errors (n,) mm} over 0 to
    ``max_mm`` mm, as the NoW challenge draws them (percentage of points
    whose error is at most x); the legend gives each curve's median."""
    from PIL import Image, ImageDraw

    W, H, (left, top, right, bottom) = 640, 440, (60, 20, 20, 50)
    colors = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
    picture = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(picture)
    box = (left, top, W - right, H - bottom)

    def px(x, f):
        return (box[0] + x / max_mm * (box[2] - box[0]), box[3] - f * (box[3] - box[1]))

    for mm in range(int(max_mm) + 1):
        a, b = px(mm, 0), px(mm, 1)
        draw.line([a, b], fill=(225, 225, 225))
        draw.text((a[0] - 3, box[3] + 4), str(mm), fill=(60, 60, 60))
    for pct in range(0, 101, 20):
        a, b = px(0, pct / 100), px(max_mm, pct / 100)
        draw.line([a, b], fill=(225, 225, 225))
        draw.text((6, a[1] - 6), f"{pct}%", fill=(60, 60, 60))
    draw.rectangle(box, outline=(120, 120, 120))
    draw.text(((box[0] + box[2]) / 2 - 40, H - 22), "error (mm)", fill=(0, 0, 0))
    for k, (label, d) in enumerate(curves.items()):
        x, f = cumulative_curve(d, max_mm)
        color = colors[k % len(colors)]
        draw.line([px(a, b) for a, b in zip(x, f)], fill=color, width=2)
        median = error_stats(d).median_mm
        draw.text((box[2] - 230, box[3] - 18 * (len(curves) - k) - 4),
                  f"{label}: median {median:.3f} mm", fill=color)
    return save_png(path, picture)


# ------------------------------------------------------------ folders

_SCAN_EXTENSIONS = (".abs.gz", ".abs", ".bnt")
LANDMARKS_SUFFIX = ".landmarks.txt"


def _split_name(path: Path, extensions) -> tuple | None:
    """(stem, extension) when the file name ends with one of ``extensions``."""
    name = path.name.lower()
    for ext in extensions:
        if name.endswith(ext) and len(name) > len(ext) and not name.endswith(LANDMARKS_SUFFIX):
            return path.name[:-len(ext)], ext
    return None


def _index(folder: Path, extensions, what: str) -> dict:
    """{stem: file} of the files in ``folder`` with one of ``extensions``."""
    if not folder.is_dir():
        raise FormatError(f"{folder}: no such folder ({what})")
    found = {}
    for path in sorted(folder.iterdir()):
        split = _split_name(path, extensions) if path.is_file() else None
        if split is None or path.name.startswith("."):
            continue
        if split[0] in found:
            raise FormatError(f"{what}: two files for {split[0]!r}: {found[split[0]].name} and "
                              f"{path.name} in {folder}")
        found[split[0]] = path
    return found


def find_pairs(pred_dir, gt_dir) -> tuple:
    """([(stem, prediction mesh, ground-truth file)], missing stems (ground
    truth without a prediction), extra stems (predictions without a ground
    truth)), matched by file stem."""
    mesh_ext = tuple(_MESH_READERS)
    preds = _index(Path(pred_dir), mesh_ext, "predictions")
    gts = _index(Path(gt_dir), mesh_ext + _SCAN_EXTENSIONS, "ground truth")
    pairs = [(stem, preds[stem], gts[stem]) for stem in sorted(gts) if stem in preds]
    return (pairs, sorted(set(gts) - set(preds)), sorted(set(preds) - set(gts)))


def read_3d_landmarks(path: Path) -> np.ndarray:
    """(7 or 68, 3) landmarks of a ``.landmarks.txt``; FormatError naming it."""
    lm = read_landmarks(path)
    if lm.dim != 3:
        raise FormatError(f"{path}: holds 2D points; need x y z per landmark (mm)")
    if len(lm) not in (7, 68):
        raise FormatError(f"{path}: {len(lm)} landmarks; need NoW's 7 (eye corners, nose bottom, "
                          "mouth corners) or the 68 iBUG points")
    return lm.points


def read_prediction(mesh_path: Path) -> tuple:
    """(Mesh, landmarks (7 or 68, 3)) of a prediction and its landmark file."""
    mesh = load_mesh(mesh_path)
    stem = _split_name(mesh_path, tuple(_MESH_READERS))[0]
    lm_path = mesh_path.with_name(stem + LANDMARKS_SUFFIX)
    if not lm_path.is_file():
        raise FormatError(f"{mesh_path}: no landmark file {lm_path.name} beside it")
    return mesh, read_3d_landmarks(lm_path)


def read_ground_truth(path: Path) -> tuple:
    """(vertices (n, 3), faces (m, 3), landmarks (7 or 68, 3)) of a
    ground-truth mesh or range scan and its landmarks (module docstring)."""
    from .landmarks import landmarks_to_3d

    split = _split_name(path, _SCAN_EXTENSIONS)
    stem = split[0] if split else _split_name(path, tuple(_MESH_READERS))[0]
    lm_path = path.with_name(stem + LANDMARKS_SUFFIX)
    if split is None:
        mesh = load_mesh(path)
        if not lm_path.is_file():
            raise FormatError(f"{path}: no landmark file {lm_path.name} beside it")
        return mesh.vertices, mesh.faces, read_3d_landmarks(lm_path)
    scan = read_bnt(path) if split[1] == ".bnt" else read_abs(path)
    mesh = scan.to_mesh(keep_uv=False)
    if lm_path.is_file():
        return mesh.vertices, mesh.faces, read_3d_landmarks(lm_path)
    pts_path = path.with_name(stem + ".pts")
    if not pts_path.is_file():
        raise FormatError(f"{path}: no landmarks beside it ({lm_path.name} with x y z, or the "
                          f"photo's 68 points {pts_path.name})")
    photo = read_landmarks(pts_path, expected=68)
    if photo.dim != 2:
        raise FormatError(f"{pts_path}: holds 3D points; a .pts here holds the photo's 68 x y")
    try:
        return mesh.vertices, mesh.faces, landmarks_to_3d(photo.points, scan)
    except ValueError as error:
        raise FormatError(f"{pts_path}: {error}") from None


def _landmarks_xyz(landmarks, error, what: str) -> np.ndarray:
    """``landmarks`` as (7 or 68, 3) finite float64, else ``error`` naming ``what``."""
    L = np.asarray(landmarks, dtype=np.float64)
    if L.ndim != 2 or L.shape[1] != 3 or len(L) not in (7, 68) or not np.isfinite(L).all():
        raise error(f"{what} must be 7 or 68 finite x y z points, got shape {L.shape}")
    return L


def write_prediction(folder, stem: str, mesh, landmarks: np.ndarray) -> Path:
    """Write a prediction in the layout :func:`evaluate_folders` reads:
    ``folder/<stem>.ply`` (``mesh``, a :class:`~dce.geom.io.Mesh`) and
    ``folder/<stem>.landmarks.txt`` (``landmarks`` (7 or 68, 3) mm, x y z a
    line), each written atomically; returns the mesh's path."""
    L = _landmarks_xyz(landmarks, AlignmentError, f"{stem}: predicted landmarks")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.ply"
    save_mesh(path, mesh)
    write_landmarks(folder / (stem + LANDMARKS_SUFFIX), Landmarks(L))
    return path


def write_ground_truth(folder, stem: str, scan, landmarks: np.ndarray) -> Path:
    """Put the ground-truth file ``scan`` (a mesh or a range scan any of
    :func:`read_ground_truth` reads) into ``folder`` as ``<stem>`` plus its
    extension, a relative symbolic link (a copy where links cannot be made),
    with its exact 3D ``landmarks`` (7 or 68, 3) mm in the scan's frame as
    ``<stem>.landmarks.txt``; returns the placed file's path."""
    scan = Path(scan)
    split = _split_name(scan, _SCAN_EXTENSIONS) or _split_name(scan, tuple(_MESH_READERS))
    if split is None or not scan.is_file():
        raise FormatError(f"{scan}: not a ground-truth mesh or range scan file")
    L = _landmarks_xyz(landmarks, FormatError, f"{scan}: its landmarks")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (stem + split[1])
    with atomic_path(path, split[1]) as tmp:
        try:
            os.symlink(os.path.relpath(scan.resolve(), folder.resolve()), tmp)
        except OSError:  # no symbolic links here (some Windows set-ups): a copy
            shutil.copyfile(scan, tmp)
    write_landmarks(folder / (stem + LANDMARKS_SUFFIX), Landmarks(L))
    return path


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folders` wrote to ``summary.json`` (``summary``)
    and the pooled errors (n,) mm of all points, in stem order."""

    summary: dict
    distances: np.ndarray = field(repr=False)


def _evaluate_pair(job: tuple) -> tuple:
    """One prediction against its ground truth, (stem, pred_path, gt_path,
    metric, regions) -> (stem, MeshEvaluation): a worker's task."""
    stem, pred_path, gt_path, metric, regions = job
    gt_V, gt_F, gt_lm = read_ground_truth(gt_path)
    pred, pred_lm = read_prediction(pred_path)
    if regions and len(gt_lm) != 68:
        raise FormatError(f"{gt_path}: --regions needs its 68 iBUG landmarks, it has "
                          f"{len(gt_lm)}")
    try:
        return stem, evaluate_mesh(gt_V, gt_F, gt_lm, pred.vertices, pred.faces, pred_lm,
                                   metric=metric, regions=regions)
    except AlignmentError as error:
        raise AlignmentError(f"{pred_path.name} vs {gt_path}: {error}") from None


def _evaluations(jobs: list, workers: int):
    """(stem, MeshEvaluation) of each job in order, over ``workers``
    processes (spawned: libigl and BLAS are not fork-safe once threads ran)."""
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with context.Pool(min(workers, len(jobs))) as pool:
            yield from pool.imap(_evaluate_pair, jobs)
    else:
        yield from map(_evaluate_pair, jobs)


def evaluate_folders(pred_dir, gt_dir, out_dir, metric: bool = False, regions: bool = False,
                     log: Callable[[str], None] | None = None,
                     error_plys: bool = True, workers: int = 1) -> FolderEvaluation:
    """Evaluate every prediction with a ground truth of the same stem and
    write to ``out_dir``: ``<stem>_error.ply`` (the cropped ground truth,
    coloured by error, with its ``error_mm`` per vertex; not with
    ``error_plys=False``, they take ~8 MB a scan), ``summary.json``,
    ``summary.md`` and ``cumulative_error.png``. ``workers`` processes
    score the pairs (the figures do not depend on it). FormatError naming
    the file for unusable inputs, AlignmentError naming the pair for unusable
    pairs."""
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    pairs, missing, extra = find_pairs(pred_dir, gt_dir)
    if not pairs:
        raise FormatError(f"{pred_dir}: no prediction has a ground truth of the same stem in "
                          f"{gt_dir} ({len(missing)} ground truths, {len(extra)} predictions)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_mesh, pooled, pooled_regions = {}, [], []
    jobs = [(stem, pred_path, gt_path, metric, regions) for stem, pred_path, gt_path in pairs]
    for stem, result in _evaluations(jobs, workers):
        if error_plys:
            write_scalar_ply(out / f"{stem}_error.ply", result.points, result.faces,
                             {"error_mm": result.distances}, error_colors(result.distances))
        entry = result.stats().to_dict()
        entry.update(scale=result.transform.scale, icp_rms_mm=result.fit.rms_after)
        if regions:
            entry["regions"] = {k: s.to_dict() for k, s in result.region_stats().items()}
            pooled_regions.append(result.regions)
        per_mesh[stem] = entry
        pooled.append(result.distances)
        if log is not None:
            log(f"{stem}: median {entry['median_mm']:.3f} mm, mean {entry['mean_mm']:.3f} mm "
                f"over {entry['n_points']} points (scale {result.transform.scale:.4f})")
    distances = np.concatenate(pooled)
    summary = error_stats(distances).to_dict()
    summary.update(n_meshes=len(pairs), missing=missing, extra=extra, metric=metric,
                   crop_radius_factor=NOW_RADIUS_FACTOR, per_mesh=per_mesh)
    if regions:
        labels = np.concatenate(pooled_regions)
        summary["regions"] = {name: error_stats(distances[labels == k]).to_dict()
                              for k, name in enumerate(REGIONS)}
    atomic_write(out / "summary.json", (json.dumps(summary, indent=2, allow_nan=False)
                                         + "\n").encode("utf-8"))
    atomic_write(out / "summary.md", summary_markdown(summary).encode("utf-8"))
    plot_cumulative(out / "cumulative_error.png",
                    {("metric" if metric else "scaled") + " alignment": distances})
    return FolderEvaluation(summary, distances)


def _row(name: str, s: dict) -> str:
    if s["n_points"] == 0:
        return f"| {name} | - | - | - | 0 |"
    return (f"| {name} | {s['median_mm']:.3f} | {s['mean_mm']:.3f} | {s['std_mm']:.3f} | "
            f"{s['n_points']} |")


def summary_markdown(summary: dict) -> str:
    """The summary as a Markdown page: pooled, per region, per mesh."""
    head = ["| | median (mm) | mean (mm) | std (mm) | points |", "|---|---|---|---|---|"]
    lines = ["# Scan-to-mesh error (NoW protocol)", "",
             f"{summary['n_meshes']} meshes, "
             + ("rigid alignment (--metric, no scale)" if summary["metric"]
                else "similarity alignment (scale fitted)")
             + f", crop radius factor {summary['crop_radius_factor']}.", "", *head,
             _row("all points", summary), ""]
    if "regions" in summary:
        lines += ["## Regions", "", *head]
        lines += [_row(k, s) for k, s in summary["regions"].items()] + [""]
    lines += ["## Per mesh", "", *head]
    lines += [_row(stem, s) for stem, s in summary["per_mesh"].items()] + [""]
    for key, what in (("missing", "ground truths without a prediction"),
                      ("extra", "predictions without a ground truth")):
        if summary[key]:
            lines += [f"{len(summary[key])} {what}: {', '.join(summary[key])}", ""]
    return "\n".join(lines)


def comparison_markdown(summaries: dict) -> str:
    """A Markdown table comparing several evaluations of the same ground
    truths: one row per ``{label: summary}`` (a :func:`evaluate_folders`
    summary: median, mean and std over the pooled points, in mm)."""
    lines = ["| | median (mm) | mean (mm) | std (mm) | points |", "|---|---|---|---|---|"]
    return "\n".join(lines + [_row(label, s) for label, s in summaries.items()])
