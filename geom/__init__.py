"""Geometry for DCE images: scan and mesh I/O, cropping, filtering, normals,
curvature, orthographic projection and z-buffer rasterization.

Functions take and return plain arrays, as in libigl's Python API: ``V`` is an
(n, 3) float64 array of vertex positions in millimetres, ``F`` an (m, 3) integer
array of triangle indices.  One module per concept; import the module you need,
e.g. ``from dce.geom import curvature``.
"""
