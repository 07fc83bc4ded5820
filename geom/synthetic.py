"""The built-in synthetic world's files: :func:`generate_world` writes a
population of faces as raw FRGC-style scans with the world's own 3DMM and
coarse fits (resumable, in a process pool), :func:`load_world` reads it back,
and previews draw it. It also offers the names of the layers below.

See docs/synthetic-world.md.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .dce import save_png
from .face_anatomy import (
    EXPRESSION_NAMES,
    IDENTITY_FACTORS,
    LANDMARK_UV,
    eye_opening,
    identity_fields,
    mean_surface,
)
from .face_detail import detail_field, draw_detail
from .io import (
    Landmarks,
    Mesh,
    RangeScan,
    load_mesh,
    read_abs,
    save_mesh,
    write_abs,
    write_landmarks,
)
from .morphable import fit_to_landmarks
from .projection import FRONTAL, OrthographicCamera
from .raster import rasterize
from .records import PathLike, atomic_write
from .scanner import _grid_normals, render_scan, scanner_camera
from .synthetic_world import (
    SUBJECT_BASE,
    FaceWorld,
    Identity,
    WorldSettings,
    _rng,
    build_world,
    draw_identity,
    draw_scan,
    grid_faces,
    ground_truth_surface,
    model_shape,
    param_axes,
)

__all__ = [
    # this module: files, generation, previews
    "FORMAT", "PathLike", "scan_stem", "world_key", "make_scan", "make_identity",
    "generate_world", "load_world", "settings_of", "preview_world",
    # the layers below, as callers reach them through this module
    "EXPRESSION_NAMES", "IDENTITY_FACTORS", "LANDMARK_UV", "eye_opening", "identity_fields",
    "mean_surface", "detail_field", "draw_detail", "render_scan", "scanner_camera",
    "SUBJECT_BASE", "FaceWorld", "Identity", "WorldSettings", "build_world", "draw_identity",
    "draw_scan", "grid_faces", "ground_truth_surface", "model_shape", "param_axes",
    # private helpers that benchmarks/ reach through this module
    "_rng", "_ppm_bytes",
]

FORMAT = "dce-synthetic-world/1"

# ------------------------------------------------------------------ files

def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


def _ppm_bytes(rgb: np.ndarray) -> bytes:
    """Binary PPM (P6) of an (H, W, 3) uint8 image."""
    H, W = rgb.shape[:2]
    return f"P6\n{W} {H}\n255\n".encode("ascii") + np.ascontiguousarray(rgb, np.uint8).tobytes()


def scan_stem(identity: Identity, shot: int) -> str:
    """FRGC-style file stem ``<5-digit subject>d<shot>``."""
    return f"{identity.subject}d{shot}"


def _scan_files(stem: str, settings: WorldSettings) -> dict:
    """Paths of one scan's files, relative to the world's folder."""
    return {"range": f"scans/{stem}.abs" + (".gz" if settings.compress else ""),
            "photo": f"scans/{stem}.ppm", "landmarks": f"scans/{stem}.pts",
            "coarse_mesh": f"coarse/{stem}.ply", "coarse_camera": f"coarse/{stem}.camera.json",
            "record": f"scans/{stem}.json"}


def _floats(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def world_key(seed: int, settings: WorldSettings) -> str:
    """What a scan's files depend on besides its stem: format, seed and
    settings (a rerun keeps a finished scan only when its key matches)."""
    return json.dumps([FORMAT, int(seed), asdict(settings)], sort_keys=True)


# make_scan and make_identity call draw_identity, draw_scan and render_scan by
# their names in this module, looked up at each call: a caller that replaces
# ``synthetic.render_scan`` (benchmarks/detail_ceiling.py) changes what
# generate_world (workers=1) renders.
def make_scan(world: FaceWorld, out_dir: PathLike, seed: int, identity: Identity,
              shot: int) -> dict:
    """Render, fit and write one scan; returns its manifest record (also
    written, last, to ``scans/<stem>.json``)."""
    out = Path(out_dir)
    s = world.settings
    plan = draw_scan(world, identity, seed, shot)
    scan = render_scan(world, identity, plan)
    stem = scan_stem(identity, shot)
    files = _scan_files(stem, s)
    noisy = scan.landmarks_2d + _rng(seed, 3, identity.index, shot).normal(
        0.0, s.landmark_noise_px, (68, 2))
    fit = fit_to_landmarks(world.model, noisy, n_expression=None,
                           regularization=max(s.landmark_noise_px, 0.5) ** 2)
    # write_abs is atomic and leaves no time in a gzip header: the same scan, the same bytes.
    write_abs(out / files["range"], RangeScan(scan.xyz, scan.valid))
    atomic_write(out / files["photo"], _ppm_bytes(scan.photo))
    write_landmarks(out / files["landmarks"], Landmarks(scan.landmarks_2d))
    save_mesh(out / files["coarse_mesh"],
              Mesh(model_shape(world.model, fit.identity, fit.expression), world.model.faces))
    atomic_write(out / files["coarse_camera"], _json_bytes(fit.camera.to_dict()))
    record = {
        "stem": stem, "subject": identity.subject, "shot": shot, "key": world_key(seed, s),
        "identity_index": identity.index, "identity": _floats(identity.coefficients),
        "expression": {"name": plan.expression_name, "weights": _floats(plan.expression)},
        "pose": {"yaw_deg": plan.yaw, "pitch_deg": plan.pitch, "roll_deg": plan.roll,
                 "rotation": _floats(plan.rotation), "translation_mm": _floats(plan.translation)},
        "files": files,
        "landmarks_3d": _floats(scan.landmarks_3d),
        "landmarks_2d": _floats(scan.landmarks_2d),
        "landmarks_2d_noisy": _floats(noisy),
        "fit": {"residual_px": fit.residual_px, "identity": _floats(fit.identity),
                "expression": _floats(fit.expression), "iterations": fit.iterations},
        "detail": identity.detail.summary(),
        "valid_pixels": int(scan.valid.sum()), "spike_pixels": int(scan.spikes.sum()),
    }
    atomic_write(out / files["record"], _json_bytes(record))
    return record


def _finished(out: Path, stem: str, seed: int, settings: WorldSettings) -> dict | None:
    """The record of a scan whose files are all written for this seed and
    these settings, else None."""
    files = _scan_files(stem, settings)
    if not all((out / f).is_file() for f in files.values()):
        return None
    try:
        record = json.loads((out / files["record"]).read_text())
    except (OSError, ValueError):
        return None
    ok = record.get("files") == files and record.get("key") == world_key(seed, settings)
    return record if ok else None


def make_identity(world: FaceWorld, out_dir: PathLike, seed: int, index: int,
                  shots: Sequence[int]) -> list:
    """Make the given shots of identity ``index``; records in shot order."""
    identity = draw_identity(world, seed, index)
    return [make_scan(world, out_dir, seed, identity, shot) for shot in shots]


_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


@contextmanager
def _environment(values: dict):
    """Set environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# One world per pool process, built by the pool's initializer.
_POOL_WORLD: FaceWorld | None = None


def _pool_init(settings: WorldSettings) -> None:
    global _POOL_WORLD
    _POOL_WORLD = build_world(settings)


def _pool_task(args) -> list:
    return make_identity(_POOL_WORLD, *args)


def generate_world(out_dir: PathLike, identities: int = 60, seed: int = 0,
                   expressions_per_identity: int = 1, workers: int | None = None,
                   settings: WorldSettings | None = None, resume: bool = True) -> dict:
    """Write a synthetic world to ``out_dir`` and return its manifest.

    ``identities`` people, each scanned neutral (shot 1) and with
    ``expressions_per_identity`` expressions (shots 2, 3, ...; each shows
    one expression, cycling through :data:`EXPRESSION_NAMES`). ``workers``
    processes (None: all cores; 1: in this process) render identities in
    parallel. They are 'spawn' processes (fork is unsafe once Numba or BLAS
    threads exist), which import the caller's main module again: a script
    must call this under ``if __name__ == "__main__":``. Each builds the
    world once (about 1.5 s). ``resume``: scans whose record and files exist
    for this seed and these settings are kept, so a run that was cut off goes
    on where it stopped. Files: see the module docstring. Deterministic: the
    same seed, counts and settings give byte-identical files, whatever
    ``workers``. Defaults: 60 identities x 2 scans in about 40 s on 2 cores,
    about 1.8 MB per scan (a 0.9 MB photo).
    """
    settings = settings or WorldSettings()
    identities, seed = int(identities), int(seed)
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if expressions_per_identity < 0:
        raise ValueError(f"expressions_per_identity must be >= 0, got {expressions_per_identity}")
    out = Path(out_dir)
    for sub in ("scans", "coarse"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    world = build_world(settings, fine=False)
    world.model.save(out / "world_model.npz")

    shots = list(range(1, 2 + int(expressions_per_identity)))
    records: dict = {}
    todo = []
    for index in range(identities):
        missing = []
        for shot in shots:
            stem = f"{SUBJECT_BASE + index:05d}d{shot}"
            done = _finished(out, stem, seed, settings) if resume else None
            if done is None:
                missing.append(shot)
            else:
                records[index, shot] = done
        if missing:
            todo.append((out, seed, index, missing))
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if todo:
        if workers <= 1 or len(todo) == 1:
            fine_world = build_world(settings)
            results = [make_identity(fine_world, *task) for task in todo]
        else:
            # One BLAS thread per worker: with one per core each, the workers'
            # BLAS threads spin against each other (a third more CPU time).
            # Spawned processes read the variables when they import numpy.
            with _environment(_ONE_THREAD):
                pool = multiprocessing.get_context("spawn").Pool(
                    min(workers, len(todo)), _pool_init, (settings,))
            with pool:
                results = pool.map(_pool_task, todo, chunksize=1)
        for (_, _, index, missing), recs in zip(todo, results):
            for shot, rec in zip(missing, recs):
                records[index, shot] = rec

    manifest = {
        "format": FORMAT, "version": 1, "seed": seed, "identities": identities,
        "expressions_per_identity": int(expressions_per_identity),
        "settings": asdict(settings), "model": "world_model.npz",
        "expression_names": list(EXPRESSION_NAMES),
        "identity_factors": [name for name, _ in IDENTITY_FACTORS],
        "scanner_camera": scanner_camera(settings).to_dict(),
        "frames": {
            "scan": "mm, +Y up, +Z toward the scanner (scanner at the origin); .abs xyz and "
                    "landmarks_3d",
            "model": "mm, +Y up, face toward +Z, +X = subject's left; world_model.npz and "
                     "coarse meshes; X_scan = pose.rotation @ X_model + pose.translation_mm",
            "pixels": "x = column, y = row, 0-based pixel centres; .pts, landmarks_2d, cameras"},
        "scans": [records[index, shot] for index in range(identities) for shot in shots],
    }
    data = _json_bytes(manifest)
    atomic_write(out / "world.json", data)
    return json.loads(data)  # as load_world reads it (lists, not tuples)


def load_world(out_dir: PathLike) -> dict:
    """The manifest ``world.json`` of a world written by :func:`generate_world`."""
    path = Path(out_dir) / "world.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no world manifest (run generate_world first)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a valid manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def settings_of(manifest: dict) -> WorldSettings:
    """The :class:`WorldSettings` a manifest was written with."""
    return WorldSettings(**manifest["settings"])


# ------------------------------------------------------------------ previews

def _shaded_views(P: np.ndarray, faces: np.ndarray, camera: OrthographicCamera, size: int,
                  depth_range=None):
    """Depth-shaded and headlight-shaded (H, W) images in [0, 1] of a grid
    surface P (nv, nu, 3) (0 = background), and the depth range used."""
    Q = camera.project(P.reshape(-1, 3))
    image, hit, depth = rasterize(Q, faces, _grid_normals(P).reshape(-1, 3), size, size,
                                  return_depth=True)
    # cos^3: the headlight's contrast, raised so that sub-mm creases show
    head = np.clip(image @ camera.view_direction, 0.0, 1.0) ** 3
    if depth_range is None:
        depth_range = (depth[hit].min(), np.percentile(depth[hit], 75))
    lo, hi = depth_range
    shade = np.where(hit, 0.1 + 0.9 * np.clip((hi - depth) / (hi - lo), 0.0, 1.0) ** 1.5, 0.0)
    return shade, np.where(hit, head, 0.0), depth_range


def _scan_shading(scan: RangeScan) -> np.ndarray:
    """Headlight shading (H, W) in [0, 1] of a raw range grid (0 = invalid):
    the normal from the grid's finite differences against +Z."""
    X = np.where(scan.valid[..., None], scan.xyz, np.nan)
    N = np.cross(np.gradient(X, axis=1), -np.gradient(X, axis=0))
    N /= np.linalg.norm(N, axis=-1, keepdims=True)
    return np.nan_to_num(np.clip(N[..., 2], 0.0, 1.0))


def preview_world(out_dir: PathLike, n: int = 4, size: int = 512) -> list:
    """PNG renders of the first ``n`` identities of a world, every shot:
    ground truth (depth-shaded, headlight-shaded), the coarse fit (the same
    two, same camera and depth range) in the model frame, the raw scan
    (headlight shading of the .abs grid: holes, noise and spikes show) and the
    photo with its landmarks, cropped to the face. Written to
    ``out_dir/previews/<stem>.png`` and all rows to ``previews/world.png``;
    returns the paths."""
    from PIL import Image

    out = Path(out_dir)
    manifest = load_world(out)
    settings = settings_of(manifest)
    world = build_world(settings)
    # frontal, 200 mm across, centred between the brows and the chin
    camera = OrthographicCamera(size / 200.0, FRONTAL, np.array([(size - 1) / 2.0] * 2)
                                - size / 200.0 * np.array([0.0, 5.0]))
    (out / "previews").mkdir(exist_ok=True)
    rows, paths = [], []
    H, W = settings.image_size
    for record in manifest["scans"]:
        if record["identity_index"] >= n:
            continue
        identity = draw_identity(world, manifest["seed"], record["identity_index"])
        w = np.asarray(record["expression"]["weights"])
        gt_depth, gt_head, rng = _shaded_views(ground_truth_surface(world, identity, w),
                                               world.fine_faces, camera, size)
        coarse = load_mesh(out / record["files"]["coarse_mesh"]).vertices
        nvc, nuc = (len(a) for a in param_axes(settings.coarse_spacing)[::-1])
        c_depth, c_head, _ = _shaded_views(coarse.reshape(nvc, nuc, 3), world.model.faces,
                                           camera, size, rng)
        scan = read_abs(out / record["files"]["range"])
        photo = np.asarray(Image.open(out / record["files"]["photo"]).convert("RGB")).copy()
        for x, y in np.rint(record["landmarks_2d"]).astype(int):
            photo[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = (0, 255, 0)
        # crop scan and photo to a square around the face
        c = np.asarray(record["landmarks_2d"]).mean(axis=0).round().astype(int)
        half = int(round(100 * settings.scanner_scale))
        box = np.s_[max(c[1] - half, 0):min(c[1] + half, H),
                    max(c[0] - half, 0):min(c[0] + half, W)]
        crops = [np.repeat(_scan_shading(scan)[box][..., None], 3, axis=2), photo[box] / 255.0]
        crops = [np.asarray(Image.fromarray((p * 255).astype(np.uint8)).resize((size, size)),
                            dtype=np.float64) / 255.0 for p in crops]
        grey = [np.repeat(g[..., None], 3, axis=2) for g in (gt_depth, gt_head, c_depth, c_head)]
        row = (np.concatenate(grey + crops, axis=1) * 255 + 0.5).astype(np.uint8)
        paths.append(save_png(out / "previews" / f"{record['stem']}.png", row))
        rows.append(row)
    if rows:
        paths.append(save_png(out / "previews" / "world.png", np.concatenate(rows, axis=0)))
    return paths
