"""Input pairs for the dataset builder: enumeration (:class:`PairSpec`
records from a synthetic world, FRGC, Bosphorus or a manifest) and loading
(:func:`load` -> :class:`PairInput`).

See docs/dataset-inputs.md (enumerators, landmarks, mesh ground truth, errors).
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coarse_source import GATE_ACTIONS, CoarseSource, coarse_side
from .landmark_formats import read_landmarks, read_vertex_indices
from .landmarks import WEIGHTS_ENV, WEIGHTS_FLAG, MissingWeightsError, detect_landmarks, load_image
from .mesh_formats import load_mesh
from .projection import posed_camera
from .records import IBUG68_NOSE_TIP, FormatError, Mesh, PathLike, RangeScan
from .scan_formats import read_abs, read_bnt

__all__ = [
    "FACE_PX", "MESH_EXTENSIONS", "PHOTO_EXTENSIONS", "LANDMARK_EXTENSIONS", "MANIFEST_COLUMNS",
    "MissingLandmarksError", "PairSpec", "PairInput",
    "synthetic_world", "frgc_directory", "bosphorus_directory", "manifest",
    "load", "frontal_landmarks",
    # re-exported: the coarse side's options, and the vertex-index reader it applies
    "CoarseSource", "GATE_ACTIONS", "read_vertex_indices",
]

#: Side (px) of the synthesized frontal view's landmark box (mesh targets).
FACE_PX = 256.0
MESH_EXTENSIONS = (".ply", ".obj", ".off", ".stl", ".wrl")
PHOTO_EXTENSIONS = (".ppm", ".png", ".jpg", ".jpeg")
LANDMARK_EXTENSIONS = (".pts", ".txt")
#: Manifest columns: ``target`` and ``subject`` are required, the rest optional.
MANIFEST_COLUMNS = {
    "target": "ground truth: a scan (.abs, .abs.gz, .bnt) or a mesh (.ply, .obj, ...)",
    "subject": "identity id (the train/test split keeps identities apart)",
    "id": "pair id (default: the target's file stem); unique",
    "landmarks": "scan targets: 68 photo landmarks (.pts/.txt, x y px); mesh targets: "
                 "68 3D landmarks (.txt/.pts, x y z mm)",
    "landmarks_2d": "mesh targets: 68 photo landmarks (optional; else detected on the photo "
                    "or synthesized)",
    "photo": "the colour photo (optional)",
    "coarse": "coarse mesh (optional when a CoarseSource gives one)",
    "coarse_landmarks": "68 vertex indices of the coarse mesh (.txt/.npy/.npz)",
}


class MissingLandmarksError(ValueError):
    """A pair has no landmark file and they cannot be detected (no photo or no
    face-alignment weights); the message says what to provide."""


# ------------------------------------------------------------------ records

@dataclass(frozen=True)
class PairSpec:
    """Where one pair's inputs are: paths (str) and ids, no data.

    ``target``: the ground-truth scan or mesh; ``landmarks``: 68 photo
    landmarks file or None (then detected on ``photo``, or for a mesh target
    synthesized); ``landmarks_3d``: mesh targets' 68 3D landmarks file;
    ``coarse_mesh`` / ``coarse_landmarks``: the pair's own coarse mesh and its
    vertex-index file (used when the :class:`CoarseSource` gives neither a
    model nor a folder); ``landmark_weights``: face-alignment weights folder
    for detection; ``expected_landmarks``: the landmark files looked for (for
    messages); ``extra``: further (name, path) provenance, e.g. Bosphorus
    ``.lm2``/``.lm3``; ``origin``: where the spec came from (a manifest row).
    """

    pair_id: str
    subject: str
    target: str
    landmarks: str | None = None
    photo: str | None = None
    landmarks_3d: str | None = None
    coarse_mesh: str | None = None
    coarse_landmarks: str | None = None
    landmark_weights: str | None = None
    expected_landmarks: tuple = ()
    extra: tuple = ()
    origin: str = ""

    @property
    def is_mesh_target(self) -> bool:
        return Path(self.target).suffix.lower() in MESH_EXTENSIONS

    def where(self) -> str:
        """The pair as named in messages: its id and origin."""
        return f"pair {self.pair_id}" + (f" ({self.origin})" if self.origin else "")


@dataclass
class PairInput:
    """Everything the pipeline needs for one pair, loaded.

    ``scan``: the raw ground-truth range scan (None for a mesh target; its
    ``texture_path`` is the pair's photo); ``landmarks_2d`` (68, 2) float64
    photo pixels, iBUG order; ``photo`` (H, W, 3) uint8 RGB or None;
    ``coarse_mesh`` and ``coarse_landmark_vertices`` (68,) int64 vertex
    indices; ``source``: provenance strings (input paths, and how the
    landmarks and the coarse mesh were obtained); for a mesh target
    ``target_mesh`` and ``landmarks_3d`` (68, 3) mm.
    """

    pair_id: str
    subject: str
    scan: RangeScan | None
    landmarks_2d: np.ndarray
    photo: np.ndarray | None
    coarse_mesh: Mesh
    coarse_landmark_vertices: np.ndarray
    source: dict = field(default_factory=dict)
    target_mesh: Mesh | None = None
    landmarks_3d: np.ndarray | None = None


# ------------------------------------------------------------------ helpers

def _str(path) -> str | None:
    return None if path is None else str(path)


def _first_file(candidates) -> Path | None:
    return next((p for p in candidates if p.is_file()), None)


def _scan_stem(path: Path) -> str:
    name = path.name
    return name[:-len(".abs.gz")] if name.lower().endswith(".abs.gz") else path.stem


def _unique(specs: list, what: str) -> list:
    """``specs`` sorted by pair_id; ValueError naming both targets of a
    repeated pair_id (ids key the samples and the resume logic)."""
    specs = sorted(specs, key=lambda s: s.pair_id)
    for a, b in zip(specs, specs[1:]):
        if a.pair_id == b.pair_id:
            raise ValueError(f"{what}: pair id {a.pair_id!r} occurs twice ({a.target} and "
                             f"{b.target}); pair ids must be unique")
    return specs


def _landmark_candidates(stem: str, folders: Sequence[Path], extensions=LANDMARK_EXTENSIONS):
    return tuple(d / (stem + ext) for d in folders for ext in extensions)


def _landmark_folders(scan: Path, root: Path, landmarks_dir: PathLike | None) -> list:
    """Beside the scan, then ``landmarks_dir`` flat, then ``landmarks_dir``
    mirroring the scan's sub-folder below ``root``."""
    folders = [scan.parent]
    if landmarks_dir is not None:
        lm = Path(landmarks_dir)
        folders.append(lm)
        rel = scan.parent.relative_to(root)
        if rel != Path("."):
            folders.append(lm / rel)
    return folders


def _walk(root: PathLike, patterns: Sequence[str], what: str) -> tuple:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such {what} folder")
    found = sorted({p for pattern in patterns for p in root.rglob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"{root}: no {' or '.join(patterns)} files below this folder")
    return root, found


# -------------------------------------------------------------- enumerators

def synthetic_world(world_dir: PathLike) -> list:
    """Pairs of a synthetic world (``world.json``): scan ``scans/<stem>.abs.gz``,
    photo, ``.pts`` landmarks, and the world's own coarse fit
    ``coarse/<stem>.ply`` with ``world_model.npz``'s ``landmarks_68``
    (a :class:`CoarseSource` with ``model_path`` refits instead)."""
    from .synthetic import load_world
    root = Path(world_dir)
    world = load_world(root)
    model = root / world.get("model", "world_model.npz")
    specs = []
    for k, rec in enumerate(world["scans"]):
        try:
            files, stem, subject = rec["files"], rec["stem"], rec["subject"]
            spec = PairSpec(
                pair_id=stem, subject=str(subject), target=str(root / files["range"]),
                landmarks=str(root / files["landmarks"]), photo=str(root / files["photo"]),
                coarse_mesh=str(root / files["coarse_mesh"]), coarse_landmarks=str(model),
                expected_landmarks=(str(root / files["landmarks"]),),
                origin=f"{root / 'world.json'} scan {k}")
        except (KeyError, TypeError) as e:
            raise ValueError(f"{root / 'world.json'}: scan {k} lacks {e}") from None
        specs.append(spec)
    return _unique(specs, str(root / "world.json"))


def frgc_directory(root: PathLike, landmarks_dir: PathLike | None = None,
                   landmark_weights: PathLike | None = None) -> list:
    """Pairs of an FRGC v2 tree: every ``*.abs`` / ``*.abs.gz`` below ``root``
    (see the module docstring for ids, photos and landmarks).
    ``landmark_weights``: face-alignment weights folder for scans without a
    landmark file."""
    root, scans = _walk(root, ("*.abs", "*.abs.gz"), "FRGC")
    specs = []
    for scan in scans:
        stem = _scan_stem(scan)
        subject = stem.split("d", 1)[0] or stem
        candidates = _landmark_candidates(stem, _landmark_folders(scan, root, landmarks_dir))
        specs.append(PairSpec(
            pair_id=stem, subject=subject, target=str(scan),
            landmarks=_str(_first_file(candidates)),
            photo=_str(_first_file(scan.with_name(stem + e) for e in PHOTO_EXTENSIONS)),
            landmark_weights=_str(landmark_weights),
            expected_landmarks=tuple(str(p) for p in candidates)))
    return _unique(specs, f"FRGC folder {root}")


_BOSPHORUS_SUBJECT = re.compile(r"(bs\d+)", re.IGNORECASE)


def bosphorus_directory(root: PathLike, landmarks_dir: PathLike | None = None,
                        landmark_weights: PathLike | None = None) -> list:
    """Pairs of a Bosphorus tree: every ``*.bnt`` below ``root``. The 68 iBUG
    landmarks come from ``<stem>.pts`` or detection on the photo (the
    ``.lm2``/``.lm3`` 22-point files go to the provenance only; see the
    module docstring)."""
    root, scans = _walk(root, ("*.bnt",), "Bosphorus")
    specs = []
    for scan in scans:
        stem = scan.stem
        m = _BOSPHORUS_SUBJECT.match(stem)
        subject = m.group(1).lower() if m else stem.split("_", 1)[0]
        candidates = _landmark_candidates(stem, _landmark_folders(scan, root, landmarks_dir),
                                          (".pts",))
        extra = tuple((ext[1:], str(scan.with_suffix(ext))) for ext in (".lm2", ".lm3")
                      if scan.with_suffix(ext).is_file())
        specs.append(PairSpec(
            pair_id=stem, subject=subject, target=str(scan),
            landmarks=_str(_first_file(candidates)),
            photo=_str(_bosphorus_photo(scan)), landmark_weights=_str(landmark_weights),
            expected_landmarks=tuple(str(p) for p in candidates), extra=extra))
    return _unique(specs, f"Bosphorus folder {root}")


def _bnt_texture(scan: Path) -> Path | None:
    """The photo the .bnt header names (whether or not it exists), beside the
    scan; None when it names none or is unreadable (load() reports that with
    the reader's message). One small read."""
    try:
        with open(scan, "rb") as fh:
            head = fh.read(14)
            if len(head) == 14:
                n = int.from_bytes(head[12:14], "little")
                name = fh.read(n).decode("ascii", "replace").strip("\x00 ")
                if name and Path(name).name == name and name not in (".", ".."):
                    return scan.with_name(name)
    except OSError:
        pass
    return None


def _bosphorus_photo(scan: Path) -> Path | None:
    """The texture named in the .bnt header (when it exists), else
    ``<stem>.png``."""
    named = _bnt_texture(scan)
    if named is not None and named.is_file():
        return named
    return _first_file(scan.with_suffix(e) for e in PHOTO_EXTENSIONS)


def manifest(path: PathLike, landmark_weights: PathLike | None = None) -> list:
    """Pairs listed in a CSV (header row) or JSON manifest; columns in
    :data:`MANIFEST_COLUMNS`. Relative paths are resolved against the
    manifest's folder. Raises ``ValueError`` naming the manifest and the row
    for a missing required column, an unknown column or a repeated id; files
    that do not exist are reported when the pair is loaded (so one bad row
    does not stop a build)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    base = path.parent
    rows = _manifest_rows(path)
    specs = []
    for no, row in rows:
        where = f"{path} row {no}"
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            raise ValueError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(MANIFEST_COLUMNS)})")
        values = {k: str(v).strip() for k, v in row.items() if v is not None and str(v).strip()}
        for required in ("target", "subject"):
            if required not in values:
                raise ValueError(f"{where}: missing {required!r} "
                                 f"({MANIFEST_COLUMNS[required]})")

        def resolve(key):
            return str(base / values[key]) if key in values else None

        target = Path(resolve("target"))
        is_mesh = target.suffix.lower() in MESH_EXTENSIONS
        if not is_mesh and not (target.suffix.lower() == ".bnt" or
                                target.name.lower().endswith((".abs", ".abs.gz"))):
            raise ValueError(f"{where}: target {target}: unknown type (a scan .abs, .abs.gz, "
                             f".bnt or a mesh {', '.join(MESH_EXTENSIONS)})")
        if is_mesh and "landmarks" not in values:
            raise ValueError(f"{where}: a mesh target needs 'landmarks' (its 68 3D landmarks)")
        if not is_mesh and "landmarks_2d" in values:
            raise ValueError(f"{where}: 'landmarks_2d' is for mesh targets; a scan target's "
                             f"photo landmarks go in 'landmarks'")
        landmarks = resolve("landmarks_2d" if is_mesh else "landmarks")
        specs.append(PairSpec(
            pair_id=values.get("id") or (target.stem if is_mesh else _scan_stem(target)),
            subject=values["subject"], target=str(target), landmarks=landmarks,
            photo=resolve("photo"), landmarks_3d=resolve("landmarks") if is_mesh else None,
            coarse_mesh=resolve("coarse"), coarse_landmarks=resolve("coarse_landmarks"),
            landmark_weights=_str(landmark_weights),
            expected_landmarks=() if landmarks is None else (landmarks,), origin=where))
    return _unique(specs, str(path))


def _manifest_rows(path: Path) -> list:
    """[(row number from 1, {column: value})] of a CSV or JSON manifest."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: cannot read the manifest ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("pairs")
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise FormatError(f"{path}: expected a list of objects or {{\"pairs\": [...]}}")
        rows = list(enumerate(data, 1))
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise FormatError(f"{path}: empty manifest (no header row)")
        rows = []
        for no, row in enumerate(reader, 1):
            if None in row:  # more cells than header columns
                raise FormatError(f"{path} row {no}: {len(row[None])} cell(s) beyond the "
                                  f"{len(reader.fieldnames)} header columns")
            rows.append((no, {k.strip(): v for k, v in row.items()}))
    if not rows:
        raise FormatError(f"{path}: the manifest lists no pairs")
    return rows


# ------------------------------------------------------------------- loading

def load(spec: PairSpec, coarse: CoarseSource = CoarseSource()) -> PairInput:
    """Read one pair's files: the ground truth, the photo, the 68 photo
    landmarks (read, detected or synthesized) and the coarse mesh (read or
    fitted). Raises :class:`FormatError` / ``ValueError`` naming the file or
    the pair and the problem."""
    source = {"target": spec.target, **dict(spec.extra)}
    if spec.origin:
        source["origin"] = spec.origin
    scan = target_mesh = landmarks_3d = photo = None
    _require(spec.target, "target", spec)
    if spec.photo is not None:
        _require(spec.photo, "photo", spec)
        photo, _ = load_image(spec.photo)
        source["photo"] = spec.photo
    if spec.is_mesh_target:
        target_mesh = load_mesh(spec.target)
        _require(spec.landmarks_3d, "landmarks", spec)
        landmarks_3d = _read_points(spec.landmarks_3d, 3, "68 3D landmarks of the mesh")
        source["landmarks_3d"] = spec.landmarks_3d
    else:
        scan = read_bnt(spec.target) if spec.target.lower().endswith(".bnt") \
            else read_abs(spec.target)
        if spec.photo is not None:  # the photo the landmarks live in sizes the lifting
            scan.texture_path = Path(spec.photo)
        elif scan.texture_path is None and spec.target.lower().endswith(".bnt"):
            # a missing photo is still named, in the lifting's message
            scan.texture_path = _bnt_texture(Path(spec.target))

    landmarks_2d, how = _photo_landmarks(spec, photo, landmarks_3d)
    source["landmarks_2d"] = how
    mesh, vertices, how = coarse_side(spec, coarse, landmarks_2d)
    source.update(how)
    return PairInput(spec.pair_id, spec.subject, scan, landmarks_2d, photo, mesh, vertices,
                     source, target_mesh, landmarks_3d)


def _require(path: str | None, column: str, spec: PairSpec) -> None:
    if path is None:
        raise ValueError(f"{spec.where()}: no {column!r} file given")
    if not Path(path).is_file():
        raise FormatError(f"{path}: no such file ({column!r} of {spec.where()})")


def _read_points(path: str, dim: int, what: str) -> np.ndarray:
    lm = read_landmarks(path, expected=68)
    if lm.dim != dim:
        raise FormatError(f"{path}: expected {what} ({dim} numbers a point), found "
                          f"{lm.dim} numbers a point")
    return lm.points


def _photo_landmarks(spec: PairSpec, photo, landmarks_3d) -> tuple:
    """(68, 2) photo landmarks and how they were obtained (provenance)."""
    if spec.landmarks is not None:
        _require(spec.landmarks, "landmarks", spec)
        return _read_points(spec.landmarks, 2, "68 photo landmarks (x y px)"), spec.landmarks
    if photo is not None:
        try:
            points = detect_landmarks(photo, weights_dir=spec.landmark_weights)
        except MissingWeightsError as e:
            raise MissingLandmarksError(
                f"{spec.where()}: no landmark file ({_looked_for(spec)}) and no face-alignment "
                f"weights to detect them on {spec.photo}. Provide the 68 landmarks as a file "
                f"or the weights (landmark_weights option, {WEIGHTS_FLAG} DIR, or "
                f"${WEIGHTS_ENV}).\n{e}") from None
        return points, f"detected on {spec.photo}"
    if landmarks_3d is not None:
        return frontal_landmarks(landmarks_3d), f"projected frontally from {spec.landmarks_3d}"
    raise MissingLandmarksError(
        f"{spec.where()}: no landmark file ({_looked_for(spec)}) and no photo to detect them "
        f"on ({_missing_photo(spec)}); provide the 68 landmarks as a file (--landmarks-dir "
        f"for a folder of <stem>.pts) or the photo")


def _missing_photo(spec: PairSpec) -> str:
    """Where the pair's photo was looked for, for messages."""
    target = Path(spec.target)
    named = _bnt_texture(target) if target.suffix.lower() == ".bnt" else None
    if named is not None:
        return f"the scan's header names {named}, which is missing"
    stem = target.with_name(_scan_stem(target))
    return "looked for " + ", ".join(str(stem) + e for e in PHOTO_EXTENSIONS)


def _looked_for(spec: PairSpec) -> str:
    return ("looked for " + ", ".join(spec.expected_landmarks)) if spec.expected_landmarks \
        else "none given"


def frontal_landmarks(landmarks_3d: np.ndarray, face_px: float = FACE_PX) -> np.ndarray:
    """(68, 2) pixels of 68 3D landmarks (mm, +Y up, face toward +Z) seen by
    the frontal camera :func:`~dce.geom.projection.posed_camera` centred on the
    nose tip, in a ``2 * face_px`` image, scaled so that the larger side of
    the landmarks' x-y box spans ``face_px`` px."""
    L = np.asarray(landmarks_3d, dtype=np.float64)
    extent = float(np.ptp(L[:, :2], axis=0).max())
    if not extent > 0:
        raise ValueError("landmarks_3d: the 68 points have no extent in x-y")
    camera = posed_camera(L[IBUG68_NOSE_TIP], face_px / extent, int(2 * face_px))
    return camera.project(L)[:, :2]
