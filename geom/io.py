"""The file formats of meshes, range scans and landmarks, in one import
(``from dce.geom.io import load_mesh, read_abs, read_landmarks, Mesh, ...``):
the public names of records, mesh_formats, scan_formats and
landmark_formats. Readers report bad input as :class:`FormatError` naming
the file; writers write atomically. Algorithms import the records from
:mod:`dce.geom.records`, not from here.

See docs/dataset-inputs.md (which module holds which name).
"""
from .landmark_formats import read_landmarks, read_vertex_indices, write_landmarks
from .mesh_formats import load_mesh, save_mesh
from .records import (
                      BOSPHORUS_NOSE_TIP,
                      IBUG68_BROWS,
                      IBUG68_CHIN,
                      IBUG68_EYES,
                      IBUG68_GROUPS,
                      IBUG68_INNER_LIPS,
                      IBUG68_JAW,
                      IBUG68_LEFT_BROW,
                      IBUG68_LEFT_EYE,
                      IBUG68_MOUTH,
                      IBUG68_NOSE,
                      IBUG68_NOSE_BRIDGE,
                      IBUG68_NOSE_TIP,
                      IBUG68_NOSTRILS,
                      IBUG68_OUTER_LIPS,
                      IBUG68_RIGHT_BROW,
                      IBUG68_RIGHT_EYE,
                      MAX_COORDINATE,
                      MAX_PIXEL,
                      MIN_SCAN_POINTS,
                      FormatError,
                      Landmarks,
                      Mesh,
                      PathLike,
                      RangeScan,
                      jaw_contour,
                      nose_tip,
)
from .scan_formats import (
                      MAX_ABS_BYTES_PER_PIXEL,
                      MAX_GRID_PIXELS,
                      MAX_NAME_BYTES,
                      read_abs,
                      read_bnt,
                      write_abs,
                      write_bnt,
)
from .vrml import MAX_VRML_TOKEN

__all__ = [
    # records and errors
    "FormatError", "PathLike", "Mesh", "RangeScan", "Landmarks",
    # plausibility limits of the readers
    "MAX_COORDINATE", "MAX_PIXEL", "MIN_SCAN_POINTS", "MAX_GRID_PIXELS",
    "MAX_ABS_BYTES_PER_PIXEL", "MAX_NAME_BYTES", "MAX_VRML_TOKEN",
    # meshes
    "load_mesh", "save_mesh",
    # range scans
    "read_abs", "write_abs", "read_bnt", "write_bnt",
    # landmarks
    "read_landmarks", "write_landmarks", "read_vertex_indices",
    "nose_tip", "jaw_contour", "BOSPHORUS_NOSE_TIP",
    "IBUG68_JAW", "IBUG68_CHIN", "IBUG68_RIGHT_BROW", "IBUG68_LEFT_BROW", "IBUG68_BROWS",
    "IBUG68_NOSE_BRIDGE", "IBUG68_NOSTRILS", "IBUG68_NOSE", "IBUG68_NOSE_TIP",
    "IBUG68_RIGHT_EYE", "IBUG68_LEFT_EYE", "IBUG68_EYES", "IBUG68_OUTER_LIPS",
    "IBUG68_INNER_LIPS", "IBUG68_MOUTH", "IBUG68_GROUPS",
]
