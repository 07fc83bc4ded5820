"""Re-fitting a pair file's coarse side: the library side of ``dce-refit``.

:func:`refit_pairs` reads a pair file built from coarse meshes that are
faces of a morphable model (the synthetic world's, or any folder of model
fits), fits the model densely to each training pair's target in the
photo's view, learns the :class:`~dce.geom.refit.RefitMap` from the coarse
fits to those dense fits, and writes a second pair file, row for row the
first (same samples, targets, cameras and split), whose coarse images are
the re-fit faces drawn through the build's own render path. A trained
network reads it like any pair file (``dce-eval --refit``, or
``dce-train-detail`` on it).

See docs/refit.md.
"""
from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dce.gan import h5format as fmt

from . import store
from .dataset import Sample, prepare_view, render_side
from .mesh_formats import load_mesh
from .morphable import load_model
from .projection import camera_array, camera_from_array
from .records import IBUG68_NOSE_TIP, FormatError, Mesh, PathLike
from .refit import (
    FaceFit,
    PlacedRefit,
    RefitMap,
    face_vertices,
    fit_depth,
    learn_refit_map,
    load_refit_map,
    model_coefficients,
    pivoted_camera,
    place_refit,
    refit_features,
    save_refit_map,
)

GEOMETRY = ("depth", "curvature", "elevation")


@dataclass(frozen=True)
class RefitSettings:
    """How :func:`refit_pairs` learns its map: Gauss-Newton ``iterations``
    per training pair's dense fit, the map's ``ridge`` (per training pair,
    on standardized features) and ``workers`` processes for the fits."""

    iterations: int = 6
    ridge: float = 1e-3
    workers: int = 1


@dataclass
class RefitReport:
    """What :func:`refit_pairs` did: the pair file written, the map (learned
    or reused), the pairs and images, and the training pairs' dense fits'
    mean RMS depth error (mm)."""

    out: Path
    map_path: Path
    refit_map: RefitMap
    pairs: int
    images: int
    map_reused: bool
    summary: dict
    seconds: float = 0.0


def map_path_of(out: PathLike) -> Path:
    """Where the map of a re-fit pair file goes: ``<out>.map.npz``."""
    out = Path(out)
    return out.with_name(out.stem + ".map.npz")


def photo_view_rows(sample_ids, poses) -> dict:
    """{pair id: row} of each pair's photo view (pose 0, 0, 0)."""
    rows = {}
    for i, (sid, pose) in enumerate(zip(sample_ids, poses)):
        if not np.any(pose):
            rows.setdefault(sid.rsplit("/", 1)[0], i)
    return rows


def coarse_mesh_of(provenance: str, where: str, pairs: PathLike = ".",
                   key: str = "coarse") -> Path:
    """The coarse mesh file a row's provenance names (``key``: or another
    of its files, e.g. ``coarse_landmarks``). A relative path is the
    build's working folder's: tried from the current folder, then from the
    pair file's folder and each one above it. Refused when no such file
    exists (e.g. the coarse side was a fit made during the build)."""
    coarse = json.loads(provenance).get(key, "")
    path = Path(coarse)
    bases = [Path.cwd()] + ([] if path.is_absolute() else list(Path(pairs).resolve().parents))
    for base in bases:
        if (base / path).is_file():
            return base / path
    raise FormatError(f"{where}: its coarse side {coarse!r} is not a mesh file found from "
                      f"{bases[0]} or the pair file's folders; a re-fit reads the coarse meshes "
                      "the pair file was built from (dce-build synthetic, or --coarse-dir with "
                      "meshes of the model)")


def target_depth(f: h5py.File, i: int) -> tuple:
    """(depth mm along the target camera's view (H, W), valid (H, W))."""
    depth = fmt.dequantize(f["target"][i, 0]).astype(np.float64)
    return (depth * f["target_scale"][i, 0] + f["target_offset"][i, 0],
            f["target_mask"][i] > 0)


_WORKER = {}  # per process: the model and the open pair file


def _open(model_path: str, pairs_path: str) -> tuple:
    key = (model_path, pairs_path)
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, model=load_model(model_path),
                       file=h5py.File(pairs_path, "r"))
    return _WORKER["model"], _WORKER["file"]


def _pair_fit(job: tuple) -> tuple:
    """(pair id, features, dense-fit vector or None, fit RMS mm) of one
    pair's photo-view row; the dense fit for training pairs only."""
    model_path, pairs_path, pair_id, i, train, iterations = job
    model, f = _open(model_path, pairs_path)
    where = f"{pairs_path}: {pair_id}"
    identity, expression = model_coefficients(
        model, load_mesh(coarse_mesh_of(f["provenance"][i], where, pairs_path)).vertices, where)
    camera = camera_from_array(f["coarse_camera"][i])
    features = refit_features(identity, expression, camera)
    if not train:
        return pair_id, identity, expression, features, None, float("nan")
    depth, valid = target_depth(f, i)
    fit, rms = fit_depth(model, FaceFit(identity, expression), camera, depth, valid, iterations)
    return pair_id, identity, expression, features, fit.vector(), rms


def refit_sample(f: h5py.File, i: int, model, placed: PlacedRefit, config: dict,
                 channels: tuple) -> Sample:
    """Row ``i`` of the source file with its coarse image replaced by the
    re-fit face ``placed`` drawn with the row's coarse camera moved onto
    its pivot (:func:`~dce.geom.refit.pivoted_camera`), rendered as the
    build renders a coarse mesh (crop, curvature; the depth referenced at
    the pivot, where the target's is at its nose tip). Photo channels
    (r, g, b) are the coarse image's: a pixel's photo colour does not
    depend on the mesh drawn there."""
    V = face_vertices(model, placed.fit)
    camera = pivoted_camera(camera_from_array(f["coarse_camera"][i]), placed.pivot,
                            placed.anchor)
    landmarks = V[model.landmarks_68]
    landmarks[IBUG68_NOSE_TIP] = placed.pivot
    side, _ = prepare_view(Mesh(V, model.faces), landmarks, camera=camera,
                           curvature=config["curvature"], radius=config["crop_radius"])
    geometry = [c for c in channels if c in GEOMETRY]
    image = render_side(side, camera, int(config["size"]), geometry,
                        depth_scale=config["depth_scale"],
                        curvature_scale=config["curvature_scale"])
    coarse = fmt.dequantize(f["coarse"][i])
    offset, scale = f["coarse_offset"][i].copy(), f["coarse_scale"][i].copy()
    for k, name in enumerate(channels):
        if name in GEOMETRY:
            g = geometry.index(name)
            coarse[k] = image.image[..., g]
            offset[k], scale[k] = image.offset[g], image.scale[g]
        else:
            coarse[k] = np.where(image.mask, coarse[k], fmt.BACKGROUND)
    source = json.loads(f["provenance"][i])
    source["refit"] = f"{model.source or model.name}, drawn for {f['sample_id'].asstr()[i]}"
    return Sample(f["sample_id"].asstr()[i], f["pair_id"].asstr()[i], f["subject"].asstr()[i],
                  coarse, fmt.dequantize(f["target"][i]), image.mask, f["target_mask"][i] > 0,
                  channels, offset, scale, f["target_offset"][i], f["target_scale"][i],
                  f["pose"][i], camera_array(camera), f["target_camera"][i], source)


def _learn(pairs_path: str, model_path: str, model, photo_rows: dict, split,
           settings: RefitSettings, framing: tuple, log) -> tuple:
    """(the map, {pair id: (identity, expression)}) from the training
    pairs' dense fits (``model`` is the one at ``model_path``, which the
    worker processes read again)."""
    jobs = [(model_path, pairs_path, pid, i, split[i] == fmt.TRAIN, settings.iterations)
            for pid, i in sorted(photo_rows.items())]
    workers = settings.workers
    results, t0, last = [], time.perf_counter(), time.perf_counter()
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(workers) if workers > 1 else None
    try:
        stream = pool.imap(_pair_fit, jobs, chunksize=4) if pool else map(_pair_fit, jobs)
        for result in stream:
            results.append(result)
            if time.perf_counter() - last > 10 or len(results) == len(jobs):
                last = time.perf_counter()
                log(f"  coarse fits read and training targets fitted: {len(results)}/{len(jobs)} "
                    f"pairs ({last - t0:.0f} s)")
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    coarse = {pid: (c, e) for pid, c, e, _, _, _ in results}
    trained = [(x, y, rms) for _, _, _, x, y, rms in results if y is not None]
    if len(trained) < 2:
        raise ValueError(f"{pairs_path}: {len(trained)} training pairs; a re-fit map needs at "
                         "least 2")
    X, Y, rms = (np.array(a) for a in zip(*trained))
    refit_map = learn_refit_map(X, Y, model.n_identity, model.n_expression, settings.ridge,
                                model=str(model_path), pairs=len(trained),
                                fit_rms_mm=float(rms.mean()), image_size=framing[0],
                                margin=framing[1])
    return refit_map, coarse


def model_of(pairs: PathLike) -> Path:
    """The morphable model a pair file's coarse meshes were drawn from, as
    its first row's provenance names it (a synthetic world's
    ``world_model.npz`` holds its landmark vertices); FormatError asking
    for it when the provenance names none."""
    with h5py.File(pairs, "r") as f:
        provenance = f["provenance"][0]
    try:
        path = coarse_mesh_of(provenance, f"{pairs}: its first pair", pairs, "coarse_landmarks")
    except FormatError:
        path = None
    if path is None or path.suffix.lower() not in (".npz", ".h5", ".mat"):
        raise FormatError(f"{pairs}: its provenance names no morphable model the coarse meshes "
                          "came from; give it (dce-refit --model)")
    return path


def refit_pairs(pairs: PathLike, model_path: PathLike | None, out: PathLike, *,
                map_path: PathLike | None = None, settings: RefitSettings = RefitSettings(),
                log=print) -> RefitReport:
    """Write ``out``: ``pairs`` with its coarse images re-fitted (module
    docstring) with the model at ``model_path`` (None: :func:`model_of`),
    and the map at ``map_path`` (default :func:`map_path_of`).
    A map already there, learned from this same pair file (its text
    digest) with this model, is reused; otherwise it is learned from the
    training split with ``settings``. Rendering resumes an interrupted run (the file is written
    whole at the end, :class:`~dce.geom.store.PairWriter`)."""
    start = time.perf_counter()
    pairs, out = Path(pairs), Path(out)
    model_path = Path(model_of(pairs) if model_path is None else model_path).resolve()
    map_path = Path(map_path) if map_path is not None else map_path_of(out)
    summary = fmt.validate(pairs)
    config = dict(summary["config"])
    channels = tuple(summary["channels"])
    model = load_model(model_path)
    if model.landmarks_68 is None:
        raise FormatError(f"{model_path}: the model has no 68 landmark vertices; a re-fit "
                          "crops and references its face at them")
    with h5py.File(pairs, "r") as f:
        ids = list(f["sample_id"].asstr()[()])
        split, poses = f["split"][()], f["pose"][()]
        digest = f.attrs.get(fmt.TEXT_DIGEST, b"")
        digest = digest.decode() if isinstance(digest, bytes) else str(digest)
        photo_rows = photo_view_rows(ids, poses)
        missing = sorted({sid.rsplit("/", 1)[0] for sid in ids} - set(photo_rows))
        if missing:
            raise FormatError(f"{pairs}: pairs without a photo view (pose 0): {missing[:5]}")
        refit_map, reused = None, False
        if map_path.exists():
            refit_map = load_refit_map(map_path)
            reused = refit_map.model == str(model_path) and refit_map.pairs_digest == digest
        if reused:
            log(f"dce-refit: the map {map_path} was learned from this file: reused")
            coarse = None
        else:
            log(f"dce-refit: {len(photo_rows)} pairs; the model fitted densely to the "
                f"{int(sum(split[i] == fmt.TRAIN for i in photo_rows.values()))} training "
                f"pairs' targets")
            refit_map, coarse = _learn(str(pairs), str(model_path), model, photo_rows, split,
                                       settings, (int(summary["height"]),
                                                  float(config.get("margin", float("nan")))),
                                       log)
            refit_map = refit_map.with_digest(digest)
            save_refit_map(map_path, refit_map)
            log(f"dce-refit: map learned from {refit_map.pairs} pairs (dense fits "
                f"{refit_map.fit_rms_mm:.3f} mm RMS) -> {map_path}")
        record = dict(config, refit={"of": pairs.name, "model": str(model_path),
                                     "map_digest": refit_map.digest()})
        t0 = last = time.perf_counter()
        fits = {}
        with store.PairWriter(out, channels, summary["height"], summary["width"],
                              record) as writer:
            done = writer.done_ids()
            todo = [i for i, sid in enumerate(ids) if sid not in done]
            for n, i in enumerate(todo):
                pid = ids[i].rsplit("/", 1)[0]
                if pid not in fits:
                    if coarse is not None and pid in coarse:
                        identity, expression = coarse[pid]
                    else:
                        j = photo_rows[pid]
                        where = f"{pairs}: {pid}"
                        identity, expression = model_coefficients(
                            model, load_mesh(coarse_mesh_of(f["provenance"][j], where, pairs))
                            .vertices, where)
                    photo = camera_from_array(f["coarse_camera"][photo_rows[pid]])
                    fits[pid] = place_refit(model, refit_map.predict(identity, expression, photo),
                                            FaceFit(identity, expression), photo,
                                            summary["height"])
                writer.append(refit_sample(f, i, model, fits[pid], config, channels))
                if time.perf_counter() - last > 10 or n + 1 == len(todo):
                    last = time.perf_counter()
                    log(f"  re-fit images drawn: {n + 1}/{len(todo)} ({last - t0:.0f} s)")
            subjects = f["subject"].asstr()[()]
            written = writer.finalize(seed=summary["seed"], test_fraction=summary["test_fraction"],
                                      subject_split=dict(zip(subjects, split.tolist())))
    return RefitReport(out, map_path, refit_map, len(photo_rows), len(ids), reused, written,
                       time.perf_counter() - start)
