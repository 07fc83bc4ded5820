"""The coarse side of an input pair: where its coarse mesh and the mesh's 68
landmark vertices come from (:class:`CoarseSource`, :func:`coarse_side`):
a morphable model fitted to the pair's landmarks, a folder of meshes, or
the spec's own coarse mesh, in that order of precedence.

See docs/dataset-inputs.md (the sources, the vertex-index files).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .landmark_fit import (
    EXPRESSION_STIFFNESS,
    LANDMARK_NOISE,
    FitGate,
    FitRejected,
    fit_to_landmarks,
)
from .landmark_formats import _checked_indices, read_vertex_indices
from .mesh_formats import load_mesh
from .morphable import load_model
from .records import FormatError

if TYPE_CHECKING:  # a pair's id, origin and own coarse files are read, nothing else
    from .sources import PairSpec

GATE_ACTIONS = ("skip", "flag")  # what a build does with a pair whose fit fails the gate


@dataclass(frozen=True)
class CoarseSource:
    """Where coarse meshes come from (see the module docstring for the
    precedence). ``model_path``: morphable model to fit, with the fit options
    ``n_identity`` (None = all modes), ``n_expression`` (None = all, 0 =
    none), ``landmark_noise`` and ``expression_stiffness`` (the prior,
    relative to the face's size: :func:`~dce.geom.landmark_fit.fit_to_landmarks`),
    ``contour``, and the quality ``gate`` (a
    :class:`~dce.geom.landmark_fit.FitGate`, None = no check) with what happens
    to a pair whose fit fails it: ``on_gate_failure`` ``"skip"`` (the pair
    fails, naming the reasons) or ``"flag"`` (kept, the reasons in its
    provenance and the build's report); ``coarse_dir``: folder
    of ``<pair_id>.ply|.obj|.off``; ``landmark_vertices``: the 68 vertex
    indices shared by all coarse meshes without a sidecar, a file path or a
    sequence of ints. ``CoarseSource()`` uses each spec's own coarse mesh."""

    model_path: str | None = None
    coarse_dir: str | None = None
    landmark_vertices: None | str | tuple = None
    n_identity: int | None = None
    n_expression: int | None = None
    landmark_noise: float = LANDMARK_NOISE
    expression_stiffness: float = EXPRESSION_STIFFNESS
    contour: str = "fixed"
    gate: FitGate | None = FitGate()
    on_gate_failure: str = "skip"

    def __post_init__(self):
        if self.model_path is not None and self.coarse_dir is not None:
            raise ValueError("CoarseSource: give model_path (fit) or coarse_dir (read), not both")
        for name in ("model_path", "coarse_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))
        if self.on_gate_failure not in GATE_ACTIONS:
            raise ValueError(f"CoarseSource: on_gate_failure must be one of {GATE_ACTIONS}, "
                             f"got {self.on_gate_failure!r}")
        lv = self.landmark_vertices
        if lv is not None:
            lv = str(lv) if isinstance(lv, (str, os.PathLike)) else tuple(int(i) for i in lv)
            object.__setattr__(self, "landmark_vertices", lv)


# Each worker process fits many pairs with one model: read it once (a BFM
# file takes seconds), keyed by path and modification time.
@functools.lru_cache(maxsize=2)
def _model(path: str, mtime_ns: int):
    return load_model(path)


def coarse_side(spec: PairSpec, coarse: CoarseSource, landmarks_2d) -> tuple:
    """(coarse mesh, its 68 landmark vertices, provenance dict) of the pair
    ``spec`` whose 68 photo landmarks are ``landmarks_2d`` (68, 2) px, by the
    precedence in the module docstring."""
    if coarse.model_path is not None:
        path = Path(coarse.model_path)
        if not path.is_file():
            raise FormatError(f"{path}: no such morphable model file")
        fit = fit_to_landmarks(_model(str(path), path.stat().st_mtime_ns), landmarks_2d,
                               n_identity=coarse.n_identity, n_expression=coarse.n_expression,
                               landmark_noise=coarse.landmark_noise,
                               expression_stiffness=coarse.expression_stiffness,
                               contour=coarse.contour)
        provenance = {"coarse": f"fit of {path} to the 2D landmarks (residual "
                                f"{fit.residual_px:.2f} px, {100 * fit.relative_residual:.1f} % "
                                f"of the outer-eye distance; largest identity coefficient "
                                f"{np.abs(fit.identity).max(initial=0):.1f} sigma; outer-eye "
                                f"distance {fit.eye_distance_mm:.0f} mm)"}
        reasons = coarse.gate.check(fit) if coarse.gate is not None else []
        if reasons and coarse.on_gate_failure == "skip":
            raise FitRejected(f"{spec.where()}: the fit of {path.name} fails the quality gate: "
                              f"{'; '.join(reasons)} (keep such pairs flagged with "
                              f"--fit-gate flag, or change the limits)")
        if coarse.gate is not None:
            provenance["fit_gate"] = "FAILED: " + "; ".join(reasons) if reasons else "passed"
        return fit.mesh, np.asarray(fit.landmark_vertices, dtype=np.int64), provenance
    if coarse.coarse_dir is not None:
        folder = Path(coarse.coarse_dir)
        candidates = [folder / (spec.pair_id + ext) for ext in (".ply", ".obj", ".off")]
        mesh_path = next((p for p in candidates if p.is_file()), None)
        if mesh_path is None:
            raise FormatError(f"{spec.where()}: no coarse mesh in {folder} (looked for "
                              f"{', '.join(p.name for p in candidates)})")
        indices = None
    elif spec.coarse_mesh is not None:
        if not Path(spec.coarse_mesh).is_file():
            raise FormatError(f"{spec.coarse_mesh}: no such file ('coarse' of {spec.where()})")
        mesh_path, indices = Path(spec.coarse_mesh), spec.coarse_landmarks
    else:
        raise ValueError(f"{spec.where()}: no coarse mesh: give a morphable model to fit "
                         f"(model_path), a folder of coarse meshes (coarse_dir) or a "
                         f"'coarse' manifest column")
    mesh = load_mesh(mesh_path)
    vertices, where = _coarse_vertices(mesh_path, indices, coarse, mesh.n_vertices, spec)
    return mesh, vertices, {"coarse": str(mesh_path), "coarse_landmarks": where}


def _coarse_vertices(mesh_path: Path, indices: str | None, coarse: CoarseSource,
                     n_vertices: int, spec: PairSpec) -> tuple:
    """The 68 landmark vertex indices of a coarse mesh: the spec's file, a
    sidecar ``<stem>.landmarks.txt|.npy``, or ``coarse.landmark_vertices``."""
    if indices is None:
        sidecars = [mesh_path.with_name(mesh_path.stem + ".landmarks" + e)
                    for e in (".txt", ".npy")]
        indices = next((str(p) for p in sidecars if p.is_file()), None)
        if indices is None:
            lv = coarse.landmark_vertices
            if lv is None:
                raise FormatError(
                    f"{mesh_path}: no landmark vertex indices for this coarse mesh "
                    f"({spec.where()}): looked for {', '.join(p.name for p in sidecars)} beside "
                    f"it; or give the 68 indices for all coarse meshes (landmark_vertices)")
            if isinstance(lv, str):
                return read_vertex_indices(lv, n_vertices), lv
            return _checked_indices(lv, "landmark_vertices option", n_vertices), \
                "landmark_vertices option"
    return read_vertex_indices(indices, n_vertices), indices
