"""Mesh, range-scan and landmark I/O: round trips, files built byte by byte
from the documented layouts, error messages, and the real sample scans."""
import gzip
import struct

import numpy as np
import pytest

from dce.geom import io
from dce.geom.io import FormatError, Landmarks, Mesh, RangeScan

# ----------------------------------------------------------------- helpers

def grid_mesh(H=4, W=5, seed=0):
    """A bumpy H x W grid: x = col, y = -row, random z; random 8-bit colours
    and uv. Faces (row-major cells): (00, 10, 11) and (00, 11, 01)."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:H, 0:W]
    V = np.column_stack([c.ravel() * 1.5, -r.ravel() * 1.5, rng.normal(size=H * W)])
    i = np.arange(H * W).reshape(H, W)
    a, b, cc, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel()
    F = np.concatenate([np.column_stack([a, cc, d]), np.column_stack([a, d, b])])
    colors = rng.integers(0, 256, (H * W, 3)) / 255.0
    return Mesh(V, F, colors, rng.random((H * W, 2)))


def face_normals(V, F):
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


# ------------------------------------------------------------ mesh formats

@pytest.mark.parametrize("ext", ["ply", "obj", "off", "stl", "wrl"])
def test_mesh_round_trip(tmp_path, ext):
    m = grid_mesh()
    path = tmp_path / f"m.{ext}"
    io.save_mesh(path, m)
    q = io.load_mesh(path)
    if ext == "stl":
        # Binary STL: float32 triangle soup, welded in order of first appearance.
        assert q.n_vertices == m.n_vertices and q.n_faces == m.n_faces
        match = np.argmin(np.linalg.norm(q.vertices[:, None] - m.vertices[None], axis=2), axis=1)
        np.testing.assert_allclose(q.vertices, m.vertices[match], atol=1e-6)
        np.testing.assert_array_equal(match[q.faces], m.faces)
        assert sorted(match) == list(range(m.n_vertices))
        assert q.colors is None and q.uv is None
        return
    atol = {"wrl": 1e-6}.get(ext, 0.0)  # pymeshlab parses VRML in float32
    np.testing.assert_allclose(q.vertices, m.vertices, rtol=0, atol=atol)
    np.testing.assert_array_equal(q.faces, m.faces)
    assert q.faces.dtype == np.int32 and q.colors.dtype == np.float32
    # 8-bit colours survive (VRML through pymeshlab's 8-bit colour store).
    np.testing.assert_allclose(q.colors, m.colors, atol=1.0 / 255 + 1e-6 if ext == "wrl" else 1e-7)
    if ext in ("ply", "obj"):
        np.testing.assert_array_equal(q.uv, m.uv)
    else:
        assert q.uv is None


@pytest.mark.parametrize("ext", ["ply", "obj", "off", "stl", "wrl"])
def test_pymeshlab_reads_what_we_write(tmp_path, ext):
    pymeshlab = pytest.importorskip("pymeshlab")
    m = grid_mesh(seed=1)
    io.save_mesh(tmp_path / f"m.{ext}", m)
    ms = pymeshlab.MeshSet()
    ms.load_new_mesh(str(tmp_path / f"m.{ext}"))
    p = ms.current_mesh()
    assert p.vertex_number() == m.n_vertices and p.face_number() == m.n_faces
    if ext != "stl":
        np.testing.assert_allclose(p.vertex_matrix(), m.vertices, atol=1e-6)
        np.testing.assert_array_equal(p.face_matrix(), m.faces)


@pytest.mark.parametrize("ext", ["ply", "off", "stl"])
def test_we_read_what_pymeshlab_writes(tmp_path, ext):
    pymeshlab = pytest.importorskip("pymeshlab")
    m = grid_mesh(seed=2)
    ms = pymeshlab.MeshSet()
    rgba = np.column_stack([m.colors, np.ones(m.n_vertices)])
    ms.add_mesh(pymeshlab.Mesh(m.vertices, m.faces, v_color_matrix=rgba))
    kw = {"stl": {}}.get(ext, {"save_vertex_color": True, "save_vertex_normal": False})
    ms.save_current_mesh(str(tmp_path / f"m.{ext}"), **kw)
    q = io.load_mesh(tmp_path / f"m.{ext}")
    assert q.n_faces == m.n_faces
    if ext != "stl":
        np.testing.assert_allclose(q.vertices, m.vertices, atol=1e-12)
        np.testing.assert_array_equal(q.faces, m.faces)
        np.testing.assert_allclose(q.colors, m.colors, atol=1e-7)


def test_obj_polygons_negative_indices_and_corner_forms(tmp_path):
    # A quad (fan -> 2 triangles) and a pentagon (-> 3), written with the
    # v, v/vt, v//vn and v/vt/vn corner forms and relative (negative) indices.
    (tmp_path / "p.obj").write_text(
        "# polygons\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvn 0 0 1\n"
        "f 1 2 3 4\n"
        "v 2 0 0\nv 3 0 0\nv 3 1 0\nv 2.5 2 0\nv 2 1 0\n"
        "f -5//1 -4//1 -3//1 -2//1 -1//1\n")
    m = io.load_mesh(tmp_path / "p.obj")
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7], [4, 7, 8]])
    assert m.uv is None and m.colors is None
    assert (face_normals(m.vertices, m.faces)[:, 2] > 0.99).all()  # CCW kept


def test_obj_corner_uv_to_vertex_uv_and_seams(tmp_path):
    # Two triangles sharing the edge 1-2; vt indices differ per corner but the
    # values agree per vertex -> per-vertex uv.
    head = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\n"
    uv_ok = "vt 0 0\nvt 1 0\nvt 0 1\nvt 1 0\nvt 1 1\nvt 0 1\n"
    (tmp_path / "a.obj").write_text(head + uv_ok + "f 1/1 2/2 3/3\nf 2/4 4/5 3/6\n")
    m = io.load_mesh(tmp_path / "a.obj")
    np.testing.assert_array_equal(m.uv, [[0, 0], [1, 0], [0, 1], [1, 1]])
    # A seam: vertex 2 (index 1) has uv (1, 0) in one triangle, (0.5, 0) in the other.
    seam = "vt 0 0\nvt 1 0\nvt 0 1\nvt 0.5 0\nvt 1 1\nvt 0 1\n"
    (tmp_path / "b.obj").write_text(head + seam + "f 1/1 2/2 3/3\nf 2/4 4/5 3/6\n")
    assert io.load_mesh(tmp_path / "b.obj").uv is None
    s = io.load_mesh(tmp_path / "b.obj", split_uv_seams=True)
    assert s.n_vertices == 5
    np.testing.assert_array_equal(s.vertex_index, [0, 1, 1, 2, 3])
    np.testing.assert_array_equal(s.vertices, np.array(
        [[0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], float))
    np.testing.assert_array_equal(s.vertex_index[s.faces], [[0, 1, 2], [1, 3, 2]])
    np.testing.assert_array_equal(s.uv[s.faces], [[[0, 0], [1, 0], [0, 1]],
                                                  [[0.5, 0], [1, 1], [0, 1]]])


def ply_header(fmt, nv, nf, vprops, face_prop="property list uchar int vertex_indices"):
    lines = ["ply", f"format {fmt} 1.0", f"element vertex {nv}", *vprops,
             f"element face {nf}", face_prop, "end_header"]
    return ("\n".join(lines) + "\n").encode()


def test_binary_ply_mixed_polygons_big_endian(tmp_path):
    # Hand-packed binary PLYs (both byte orders) with a triangle, a quad and a
    # pentagon: the list lengths vary, so records have different sizes.
    V = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [2, 0, 1], [2, 1, 1]], float)
    polys = [[0, 1, 2], [0, 2, 3, 1], [1, 4, 5, 2, 3]]
    want = [[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 4, 5], [1, 5, 2], [1, 2, 3]]
    for fmt, e in (("binary_little_endian", "<"), ("binary_big_endian", ">")):
        data = ply_header(fmt, len(V), len(polys),
                          ["property float x", "property float y", "property float z",
                           "property uchar red", "property uchar green", "property uchar blue"])
        for k, p in enumerate(V):
            data += struct.pack(f"{e}3f3B", *p, 10 * k, 20 * k, 255 - k)
        for p in polys:
            data += struct.pack(f"{e}B{len(p)}i", len(p), *p)
        path = tmp_path / f"{fmt}.ply"
        path.write_bytes(data)
        m = io.load_mesh(path)
        np.testing.assert_array_equal(m.vertices, V)
        np.testing.assert_array_equal(m.faces, want)
        np.testing.assert_allclose(m.colors[3], [30 / 255, 60 / 255, 252 / 255], rtol=1e-6)


def test_ascii_ply_polygons_uv_and_wedge_texcoords(tmp_path):
    body = ("0 0 0 0 0\n1 0 0 1 0\n1 1 0 1 1\n0 1 0 0 1\n"
            "4 0 1 2 3\n3 0 2 1\n")
    (tmp_path / "a.ply").write_bytes(ply_header(
        "ascii", 4, 2, ["property double x", "property double y", "property double z",
                        "property float s", "property float t"]) + body.encode())
    m = io.load_mesh(tmp_path / "a.ply")
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3], [0, 2, 1]])
    np.testing.assert_array_equal(m.uv, [[0, 0], [1, 0], [1, 1], [0, 1]])
    # MeshLab-style per-corner texcoord lists on the faces.
    head = ply_header("ascii", 3, 1, ["property float x", "property float y", "property float z"],
                      "property list uchar int vertex_indices\nproperty list uchar float texcoord")
    (tmp_path / "w.ply").write_bytes(head + b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2 6 .1 .2 .3 .4 .5 .6\n")
    np.testing.assert_allclose(io.load_mesh(tmp_path / "w.ply").uv,
                               [[.1, .2], [.3, .4], [.5, .6]], rtol=1e-6)


def test_off_quad_and_integer_colours(tmp_path):
    (tmp_path / "q.off").write_text(
        "COFF\n# comment\n4 1 0\n0 0 0 255 0 0 255\n1 0 0 0 255 0 255\n"
        "1 1 0 0 0 255 255\n0 1 0 51 102 153 255\n4 0 1 2 3\n")
    m = io.load_mesh(tmp_path / "q.off")
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])
    np.testing.assert_allclose(m.colors[3], [0.2, 0.4, 0.6], rtol=1e-6)


def test_ascii_stl_welds_shared_corners(tmp_path):
    facet = ("facet normal 0 0 1\nouter loop\nvertex {}\nvertex {}\nvertex {}\n"
             "endloop\nendfacet\n")
    (tmp_path / "s.stl").write_text(
        "solid test\n" + facet.format("0 0 0", "1 0 0", "1 1 0")
        + facet.format("0 0 0", "1 1 0", "0 1 0") + "endsolid test\n")
    m = io.load_mesh(tmp_path / "s.stl")
    np.testing.assert_array_equal(m.vertices, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_array_equal(m.faces, [[0, 1, 2], [0, 2, 3]])


# ------------------------------------------------------------ mesh errors

def test_mesh_errors_name_file_and_problem(tmp_path):
    def raises(path, *words, **kw):
        with pytest.raises(FormatError) as e:
            io.load_mesh(path, **kw)
        msg = str(e.value)
        assert path.name in msg, msg
        for w in words:
            assert w in msg.lower(), msg

    raises(tmp_path / "missing.ply", "no such file")
    (tmp_path / "x.xyz").write_text("0 0 0\n")
    raises(tmp_path / "x.xyz", "unknown mesh extension")

    vprops = ["property float x", "property float y", "property float z"]
    (tmp_path / "nan.ply").write_bytes(
        ply_header("ascii", 3, 1, vprops) + b"0 0 0\nnan 1 0\n0 1 0\n3 0 1 2\n")
    raises(tmp_path / "nan.ply", "nan", "index 1")

    (tmp_path / "word.ply").write_bytes(
        ply_header("ascii", 3, 1, vprops) + b"0 0 0\n1 abc 0\n0 1 0\n3 0 1 2\n")
    raises(tmp_path / "word.ply", "non-numeric value 'abc'")

    (tmp_path / "nofaces.ply").write_bytes(
        ply_header("ascii", 3, 0, vprops) + b"0 0 0\n1 1 0\n0 1 0\n")
    raises(tmp_path / "nofaces.ply", "no faces")

    good = tmp_path / "good.ply"
    io.save_mesh(good, grid_mesh())
    (tmp_path / "cut.ply").write_bytes(good.read_bytes()[:-7])
    raises(tmp_path / "cut.ply", "truncated", "face")

    (tmp_path / "badidx.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    raises(tmp_path / "badidx.obj", "indices span", "3 vertices")

    (tmp_path / "junk.obj").write_text("v 0 0 0\nv 1 x 0\nv 0 1 0\nf 1 2 3\n")
    raises(tmp_path / "junk.obj", "line 2")

    (tmp_path / "cut.stl").write_bytes(b"\0" * 80 + struct.pack("<I", 2) + b"\0" * 60)
    raises(tmp_path / "cut.stl", "84 + 50 x 2")

    (tmp_path / "bad.wrl").write_text("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet { "
                                      "coord Coordinate { point [ 0 0 0, nan 1 0 ] } } }\n")
    raises(tmp_path / "bad.wrl", "vrml")


# -------------------------------------------------------------- .abs files

def abs_text(H, W, flags, X, Y, Z):
    """An FRGC .abs built directly from the documented layout."""
    line = lambda a, fmt: " ".join(fmt % v for v in np.ravel(a)) + " \n"
    return (f"{H} rows\n{W} columns\npixels (flag X Y Z):\n" + line(flags, "%d")
            + line(X, "%.6f") + line(Y, "%.6f") + line(Z, "%.6f"))


def abs_grid():
    H, W = 3, 4
    r, c = np.mgrid[0:H, 0:W]
    flags = np.ones((H, W), int)
    flags[0, 0] = flags[2, 3] = 0
    X, Y, Z = c * 0.8 - 1.0, 2.0 - r * 0.8, -1000.0 + 0.5 * r
    for a in (X, Y, Z):
        a[flags == 0] = -999999.0
    return flags, X, Y, Z


@pytest.mark.parametrize("name", ["04201d123.abs", "04201d124.abs.gz"])
def test_read_abs_from_documented_layout(tmp_path, name):
    flags, X, Y, Z = abs_grid()
    text = abs_text(3, 4, flags, X, Y, Z).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    (tmp_path / (name.split(".")[0] + ".ppm")).write_bytes(b"P6\n1 1\n255\n\0\0\0")
    s = io.read_abs(path)
    assert s.shape == (3, 4) and s.source == path
    np.testing.assert_array_equal(s.valid, flags == 1)
    assert np.isnan(s.xyz[0, 0]).all() and np.isnan(s.xyz[2, 3]).all()
    np.testing.assert_allclose(s.xyz[1, 2], [0.6, 1.2, -999.5])  # row 1, col 2
    np.testing.assert_allclose(s.xyz[..., 0][s.valid], X[flags == 1])
    assert s.texture_path == tmp_path / (name.split(".")[0] + ".ppm")
    assert s.uv is None


def test_read_abs_with_wrapped_data_lines(tmp_path):
    # Some writers break the long data lines; the 4 x H x W values still parse.
    flags, X, Y, Z = abs_grid()
    head, body = abs_text(3, 4, flags, X, Y, Z).split(":\n", 1)
    tokens = body.split()
    wrapped = "\n".join(" ".join(tokens[i:i + 5]) for i in range(0, len(tokens), 5))
    (tmp_path / "w.abs").write_text(head + ":\n" + wrapped + "\n")
    s = io.read_abs(tmp_path / "w.abs")
    np.testing.assert_array_equal(s.valid, flags == 1)
    np.testing.assert_allclose(s.xyz[..., 2][s.valid], Z[flags == 1])


@pytest.mark.parametrize("name", ["s.abs", "s.abs.gz"])
def test_write_abs_round_trip(tmp_path, name):
    flags, X, Y, Z = abs_grid()
    scan = RangeScan(np.stack([X, Y, Z], -1), flags == 1)
    io.write_abs(tmp_path / name, scan)
    raw = (tmp_path / name).read_bytes()
    text = gzip.decompress(raw) if name.endswith(".gz") else raw
    assert text.decode().splitlines()[:3] == ["3 rows", "4 columns", "pixels (flag X Y Z):"]
    assert "-999999.000000" in text.decode()
    s = io.read_abs(tmp_path / name)
    np.testing.assert_array_equal(s.valid, scan.valid)
    np.testing.assert_allclose(s.xyz[s.valid], scan.xyz[scan.valid], atol=5e-7)
    assert s.texture_path is None
    assert not list(tmp_path.glob(".*.tmp"))  # temporary file renamed away


def test_abs_errors(tmp_path):
    flags, X, Y, Z = abs_grid()
    good = abs_text(3, 4, flags, X, Y, Z)
    cases = {
        "hdr.abs": (good.replace("4 columns", "4 cols"), ["header line 2", "columns"]),
        "hdr2.abs": (good.replace("pixels (flag X Y Z):", "points:"), ["header line 3"]),
        "short.abs": (good.rsplit(" ", 3)[0] + "\n", ["data line 7", "(z)", "expected 3 x 4 = 12"]),
        "flag.abs": (good.replace("\n0 1 1 1", "\n2 1 1 1"), ["flags must be 0 or 1"]),
        "text.abs": (good.replace("-999999.000000", "abc", 1), ["non-numeric", "line 5"]),
    }
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(FormatError) as e:
            io.read_abs(tmp_path / name)
        msg = str(e.value)
        assert name in msg and all(w.lower() in msg.lower() for w in words), msg
    (tmp_path / "cut.abs.gz").write_bytes(gzip.compress(good.encode())[:-20])
    with pytest.raises(FormatError, match="cut.abs.gz"):
        io.read_abs(tmp_path / "cut.abs.gz")
    with pytest.raises(FormatError, match="nothere.abs: no such file"):
        io.read_abs(tmp_path / "nothere.abs")


# -------------------------------------------------------------- .bnt files

def bnt_bytes(nrows, ncols, zmin, imfile, cols):
    """A Bosphorus .bnt from the documented layout: cols = [x, y, z, u, v],
    each (nrows, ncols) with the stored first row = bottom of the face."""
    name = imfile.encode()
    data = np.concatenate([np.ravel(c) for c in cols])  # column-major N x 5
    return (struct.pack("<HHdH", nrows, ncols, zmin, len(name)) + name
            + struct.pack("<I", data.size) + struct.pack(f"<{data.size}d", *data))


def bnt_grid(zmin=-1e9):
    # Stored bottom-first: stored row 0 has the smallest y.
    nrows, ncols = 3, 4
    r, c = np.mgrid[0:nrows, 0:ncols]
    x, y, z = c * 0.75 - 1.0, -10.0 + 0.75 * r, 5.0 + 0.1 * c
    u, v = (c + 0.5) / ncols, 1.0 - (r + 0.5) / nrows
    bg = np.zeros((nrows, ncols), bool)
    bg[0, 0] = bg[2, 1] = True
    for a in (x, y, z):
        a[bg] = zmin
    return nrows, ncols, [x, y, z, u, v], bg


def test_read_bnt_from_documented_layout(tmp_path):
    nrows, ncols, cols, bg = bnt_grid()
    (tmp_path / "bs000_N_N_0.bnt").write_bytes(
        bnt_bytes(nrows, ncols, -1e9, "bs000_N_N_0.png", cols))
    (tmp_path / "bs000_N_N_0.png").write_bytes(b"")
    s = io.read_bnt(tmp_path / "bs000_N_N_0.bnt")
    assert s.shape == (3, 4)
    # Image orientation: scan row 0 is the stored last row (top of the face).
    np.testing.assert_array_equal(s.valid, ~bg[::-1])
    assert not s.valid[0, 1] and not s.valid[2, 0]
    np.testing.assert_allclose(s.xyz[0, 2], [0.5, -8.5, 5.2])
    assert s.xyz[0, 2, 1] > s.xyz[1, 2, 1] > s.xyz[2, 2, 1]  # y decreases down the image
    assert np.isnan(s.xyz[~s.valid]).all()
    # u, v stay valid on the background and follow the same flip.
    np.testing.assert_allclose(s.uv[0, 1], [1.5 / 4, 1 - 2.5 / 3])
    np.testing.assert_allclose(s.uv[..., 1][:, 0], [1 / 6, 0.5, 5 / 6])
    assert s.texture_path == tmp_path / "bs000_N_N_0.png"
    # write_bnt is the exact inverse.
    io.write_bnt(tmp_path / "w.bnt", s)
    assert (tmp_path / "w.bnt").read_bytes() == (tmp_path / "bs000_N_N_0.bnt").read_bytes()


def test_bnt_errors(tmp_path):
    nrows, ncols, cols, bg = bnt_grid()
    good = bnt_bytes(nrows, ncols, -1e9, "t.png", cols)
    wrong_n = bytearray(good)
    struct.pack_into("<I", wrong_n, 14 + 5, 59)
    cases = {"cut.bnt": (good[:-8], ["truncated", "3 x 4"]),
             "hdr.bnt": (good[:10], ["truncated header"]),
             "name.bnt": (good[:16], ["truncated header"]),
             "count.bnt": (bytes(wrong_n), ["59 values", "60"]),
             "extra.bnt": (good + b"\0" * 8, ["file size", "expected"])}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FormatError) as e:
            io.read_bnt(tmp_path / name)
        assert name in str(e.value) and all(w in str(e.value) for w in words), e.value


# ------------------------------------------------------------- RangeScan.to_mesh

def plane_scan(H=5, W=6, spacing=0.8):
    """A frontal plane: x = col * spacing, y = -row * spacing, z = 0 (+z
    toward the viewer), all pixels valid."""
    r, c = np.mgrid[0:H, 0:W]
    xyz = np.stack([c * spacing, -r * spacing, np.zeros((H, W))], -1)
    return RangeScan(xyz, np.ones((H, W), bool))


def test_to_mesh_counts_orientation_and_image_rc():
    s = plane_scan()
    m = s.to_mesh()
    assert m.n_faces == 2 * 4 * 5 and m.n_vertices == 30
    assert (face_normals(m.vertices, m.faces)[:, 2] > 0.999).all()  # toward the viewer
    np.testing.assert_array_equal(m.vertices, s.xyz[m.image_rc[:, 0], m.image_rc[:, 1]])
    # Invalid pixels: (2, 3) inside; (0, 0), (0, 1), (1, 0) in a corner; (3, 5)
    # and (4, 4), which leave the valid pixel (4, 5) without a triangle.
    for rc in [(2, 3), (0, 0), (0, 1), (1, 0), (3, 5), (4, 4)]:
        s.valid[rc] = False
    m = s.to_mesh()
    # 20 cells: (0, 0) has one valid pixel -> 0 triangles; (3, 4) has two -> 0;
    # (0, 1), (1, 0), the 4 cells around (2, 3), (2, 4) and (3, 3) have three
    # -> 1 each; the other 10 cells -> 2 each.
    assert m.n_faces == 10 * 2 + 8
    assert (face_normals(m.vertices, m.faces)[:, 2] > 0.999).all()
    used = {tuple(rc) for rc in m.image_rc.tolist()}
    assert (4, 5) not in used and (1, 1) in used
    assert m.n_vertices == 30 - 6 - 1
    np.testing.assert_array_equal(m.vertices, s.xyz[m.image_rc[:, 0], m.image_rc[:, 1]])


def test_to_mesh_skips_depth_jumps_and_keeps_uv():
    s = plane_scan(H=4, W=6, spacing=1.0)
    s.xyz[:, 3:, 2] = -40.0  # a 40 mm step between columns 2 and 3
    s.uv = np.stack(np.meshgrid(np.arange(6) / 6, np.arange(4) / 4), -1)
    m = s.to_mesh()
    assert m.n_faces == 2 * 3 * 5 - 2 * 3  # the 3 cells straddling the step go
    np.testing.assert_array_equal(m.uv, s.uv[m.image_rc[:, 0], m.image_rc[:, 1]])
    assert s.to_mesh(max_edge=100.0).n_faces == 2 * 3 * 5
    assert s.to_mesh(keep_uv=False).uv is None


def test_to_mesh_shorter_diagonal_and_curved_orientation():
    # A spherical cap bulging toward +z: every face normal has n_z > 0, and a
    # fold along one diagonal is split along the shorter 3D diagonal.
    r, c = np.mgrid[0:9, 0:9]
    x, y = (c - 4) * 2.0, (4 - r) * 2.0
    z = np.sqrt(30.0**2 - x**2 - y**2)
    m = RangeScan(np.stack([x, y, z], -1), np.ones((9, 9), bool)).to_mesh()
    assert m.n_faces == 2 * 64 and (face_normals(m.vertices, m.faces)[:, 2] > 0).all()
    xyz = np.array([[[0, 0, 0], [1, 0, 0]], [[0, -1, 0], [1, -1, 5.0]]])
    cell = RangeScan(xyz, np.ones((2, 2), bool)).to_mesh(max_edge=10.0)
    # |p00 - p11| = sqrt(27) > |p01 - p10| = sqrt(2): split along 01-10.
    edges = {tuple(sorted(e)) for f in cell.image_rc[cell.faces].tolist()
             for e in ((tuple(f[0]), tuple(f[1])), (tuple(f[1]), tuple(f[2])),
                       (tuple(f[2]), tuple(f[0])))}
    assert ((0, 1), (1, 0)) in edges and ((0, 0), (1, 1)) not in edges


def test_to_mesh_colours_from_texture(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    tex = np.zeros((4, 6, 3), np.uint8)
    tex[..., 0] = np.arange(6) * 40
    tex[..., 1] = (np.arange(4) * 60)[:, None]
    Image.fromarray(tex).save(tmp_path / "t.png")
    s = plane_scan(H=4, W=6)
    s.texture_path = tmp_path / "t.png"
    m = s.to_mesh(colors=True)  # no uv: texture registered with the grid
    r, c = m.image_rc.T
    np.testing.assert_allclose(m.colors[:, 0], c * 40 / 255, atol=1e-6)
    np.testing.assert_allclose(m.colors[:, 1], r * 60 / 255, atol=1e-6)
    s.uv = np.stack(np.meshgrid((np.arange(6) + 0.5) / 6, np.arange(4) / 4), -1)
    m = s.to_mesh(colors=True)  # halfway between texel columns
    np.testing.assert_allclose(m.colors[:, 0], np.minimum(c * 40 + 20, 200) / 255, atol=1e-6)


# -------------------------------------------------------------- landmarks

LM3 = """# 3D Landmark File
*
Generated for a test.

3 landmarks:
Outer left eyebrow
-90.275 13.1 -6.515
Nose tip
0.5 -20.25 48.0
Chin middle
1 -80 20
"""

LM2 = """# 2D Landmark File

2 landmarks

Labels:
Nose tip
Left mouth corner

2D Image coordinates:
574.3 641.5
413.3 996.9
"""


def test_bosphorus_landmarks(tmp_path):
    (tmp_path / "a.lm3").write_text(LM3)
    lm = io.read_landmarks(tmp_path / "a.lm3")
    assert lm.labels == ["Outer left eyebrow", "Nose tip", "Chin middle"]
    np.testing.assert_array_equal(lm["Nose tip"], [0.5, -20.25, 48.0])
    np.testing.assert_array_equal(lm["chin_middle"], [1, -80, 20])
    np.testing.assert_array_equal(io.nose_tip(lm), [0.5, -20.25, 48.0])
    np.testing.assert_array_equal(lm.as_array(["Chin middle", "Outer left eyebrow"]),
                                  [[1, -80, 20], [-90.275, 13.1, -6.515]])
    with pytest.raises(KeyError, match="Left ear lobe"):
        lm["Left ear lobe"]
    (tmp_path / "a.lm2").write_text(LM2)
    lm2 = io.read_landmarks(tmp_path / "a.lm2")
    assert lm2.dim == 2 and lm2.labels == ["Nose tip", "Left mouth corner"]
    np.testing.assert_array_equal(io.nose_tip(lm2), [574.3, 641.5])
    for name, text in (("b.lm3", LM3.replace("3 landmarks:", "4 landmarks:")),
                       ("b.lm2", LM2.replace("413.3 996.9\n", ""))):
        (tmp_path / name).write_text(text)
        with pytest.raises(FormatError, match=f"{name}: header says"):
            io.read_landmarks(tmp_path / name)
    (tmp_path / "c.lm3").write_text(LM3.replace("0.5 -20.25 48.0", "0.5 -20.25"))
    with pytest.raises(FormatError, match=r"c.lm3: line 9: expected 3 numbers"):
        io.read_landmarks(tmp_path / "c.lm3")


def test_pts_and_text_landmarks(tmp_path):
    pts = np.arange(68 * 2, dtype=float).reshape(68, 2) / 4
    text = "version: 1\nn_points:  68\n{\n" + "".join(f"{x} {y}\n" for x, y in pts) + "}\n"
    (tmp_path / "a.pts").write_text(text)
    lm = io.read_landmarks(tmp_path / "a.pts", expected=68)
    np.testing.assert_array_equal(lm.points, pts)
    np.testing.assert_array_equal(io.nose_tip(lm), pts[30])
    np.testing.assert_array_equal(io.jaw_contour(lm.points), pts[:17])
    (tmp_path / "b.pts").write_text(text.replace("n_points:  68", "n_points: 67"))
    with pytest.raises(FormatError, match="b.pts: n_points says 67 but 68"):
        io.read_landmarks(tmp_path / "b.pts")
    (tmp_path / "c.pts").write_text(text.replace("}\n", ""))
    with pytest.raises(FormatError, match=r"c.pts: no '}' closing"):
        io.read_landmarks(tmp_path / "c.pts")
    (tmp_path / "d.txt").write_text("# x y z\n1 2 3\n4 5 6  # trailing comment\n\n7,8,9\n")
    np.testing.assert_array_equal(io.read_landmarks(tmp_path / "d.txt").points,
                                  [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    with pytest.raises(FormatError, match="d.txt: expected 68 landmarks, found 3"):
        io.read_landmarks(tmp_path / "d.txt", expected=68)
    (tmp_path / "e.csv").write_text("x,y\n1.5,2\n3,4\n")
    np.testing.assert_array_equal(io.read_landmarks(tmp_path / "e.csv").points, [[1.5, 2], [3, 4]])
    bad = {"f.txt": ("1 2 3\n4 five 6\n", "line 2: cannot parse"),
           "g.txt": ("1 2 3\n4 nan 6\n", "line 2: NaN"),
           "h.txt": ("1 2 3\n4 5\n", "line 2: 2 numbers, earlier lines have 3"),
           "i.pts": ("version: 1\nn_points: 2\n{\n1 2\n3 x\n}\n", "line 5: cannot parse")}
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(FormatError, match=f"{name}: {msg}"):
            io.read_landmarks(tmp_path / name)
    with pytest.raises(FormatError, match="nope.pts: no such file"):
        io.read_landmarks(tmp_path / "nope.pts")
    with pytest.raises(ValueError, match="68 iBUG points"):
        io.nose_tip(np.zeros((5, 3)))


@pytest.mark.parametrize("ext,dim", [("pts", 2), ("pts", 3), ("txt", 3), ("csv", 2),
                                     ("lm3", 3), ("lm2", 2)])
def test_landmark_round_trip(tmp_path, ext, dim):
    rng = np.random.default_rng(dim)
    lm = Landmarks(rng.normal(size=(5, dim)) * 50, [f"point {k}" for k in range(5)])
    io.write_landmarks(tmp_path / f"l.{ext}", lm)
    back = io.read_landmarks(tmp_path / f"l.{ext}")
    np.testing.assert_array_equal(back.points, lm.points)
    if ext in ("lm2", "lm3"):
        assert back.labels == lm.labels


def test_ibug_groups_partition_68():
    groups = [io.IBUG68_JAW, io.IBUG68_BROWS, io.IBUG68_NOSE, io.IBUG68_EYES, io.IBUG68_MOUTH]
    assert sorted(sum(groups, ())) == list(range(68))
    assert sorted(sum(io.IBUG68_GROUPS.values(), ())) == list(range(68))
    assert io.IBUG68_NOSE_TIP in io.IBUG68_NOSE_BRIDGE and io.IBUG68_CHIN == io.IBUG68_JAW[8]


# ----------------------------------------------------------- real samples

@pytest.mark.realdata
def test_real_lee_perry_smith(shared_data):
    d = shared_data / "lee-perry-smith"
    m = io.load_mesh(d / "lps_detailed_face.ply")
    assert (m.n_vertices, m.n_faces) == (262425, 523892)
    assert m.colors.dtype == np.float32 and 0 <= m.colors.min() and m.colors.max() <= 1
    assert m.colors.std() > 0.01
    # Cross-check against pymeshlab as an independent reader.
    pymeshlab = pytest.importorskip("pymeshlab")
    ms = pymeshlab.MeshSet()
    ms.load_new_mesh(str(d / "lps_detailed_face.ply"))
    ref = ms.current_mesh()
    np.testing.assert_array_equal(m.vertices, ref.vertex_matrix())
    np.testing.assert_array_equal(m.faces, ref.face_matrix())
    np.testing.assert_allclose(m.colors, ref.vertex_color_matrix()[:, :3], atol=1e-6)
    lm = io.read_landmarks(d / "lps_landmarks_68.txt", expected=68)
    assert lm.points.shape == (68, 3)
    np.testing.assert_allclose(io.nose_tip(lm), [0.3, -34.7, 53.1], atol=0.06)  # README
    assert io.jaw_contour(lm).shape == (17, 3)


@pytest.mark.realdata
def test_real_james(shared_data):
    d = shared_data / "menpo-james"
    ply = io.load_mesh(d / "james.ply")
    assert (ply.n_vertices, ply.n_faces) == (6393, 12228)
    obj = io.load_mesh(d / "james.obj")
    # Same vertices (OBJ has 6 decimals, PLY float32) and faces (README).
    np.testing.assert_allclose(obj.vertices, ply.vertices, atol=1e-5)
    np.testing.assert_array_equal(obj.faces, ply.faces)
    assert obj.uv is None  # per-corner vt with seams: 269 vertices have two uvs
    split = io.load_mesh(d / "james.obj", split_uv_seams=True)
    assert split.n_vertices == 6393 + 287  # = the 6680 distinct (vertex, vt) pairs
    assert 0 <= split.uv.min() and split.uv.max() <= 1
    np.testing.assert_array_equal(split.vertex_index[split.faces], ply.faces)
    np.testing.assert_allclose(split.vertices, ply.vertices[split.vertex_index], atol=1e-5)
    lm = io.read_landmarks(d / "james_landmarks_68.txt", expected=68)
    assert lm.points.shape == (68, 3)


# ------------------------------------------- hostile input (issues 11 and 12)

def refuses(read, path, *words):
    """``read(path)`` raises a FormatError naming the file and all ``words``."""
    with pytest.raises(FormatError) as e:
        read(path)
    msg = str(e.value)
    assert path.name in msg, msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def peak_bytes(fn):
    """Peak Python-heap allocation (bytes) while ``fn()`` runs (it may raise)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    except FormatError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_abs_gz_corrupt_stream_and_bomb(tmp_path):
    import zlib

    flags, X, Y, Z = abs_grid()
    text = abs_text(3, 4, flags, X, Y, Z).encode()
    packed = bytearray(gzip.compress(text, mtime=0))
    packed[len(packed) // 2] ^= 0xFF  # inside the deflate stream
    (tmp_path / "bad.abs.gz").write_bytes(bytes(packed))
    refuses(io.read_abs, tmp_path / "bad.abs.gz", "cannot read")
    # A bomb: the valid text, then 256 MiB of spaces (256 KB compressed).
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [c.compress(text)] + [c.compress(b" " * (1 << 20)) for _ in range(256)]
    (tmp_path / "bomb.abs.gz").write_bytes(b"".join(parts) + c.flush())
    refuses(io.read_abs, tmp_path / "bomb.abs.gz", "decompression bomb", "3 x 4")
    # ... refused after inflating at most what a 3 x 4 grid's text can hold.
    assert peak_bytes(lambda: io.read_abs(tmp_path / "bomb.abs.gz")) < 1 << 20


def test_abs_sentinel_truncation_and_plausibility(tmp_path):
    flags, X, Y, Z = abs_grid()
    good = abs_text(3, 4, flags, X, Y, Z)
    # A flag flipped 0 -> 1 where the coordinates hold the -999999 sentinel.
    (tmp_path / "flag.abs").write_text(good.replace("\n0 1 1 1", "\n1 1 1 1"))
    refuses(io.read_abs, tmp_path / "flag.abs", "row 0, col 0", "-999999")
    # Cut inside the last number: "-999999.000000 \n" -> "-999999.0". It would
    # read as a valid file with the right count; the missing line break tells.
    cut = good[:good.rindex("-999999.000000") + 9]
    (tmp_path / "cut.abs").write_text(cut)
    refuses(io.read_abs, tmp_path / "cut.abs", "ends inside the value '-999999.0'", "truncated")
    (tmp_path / "cut.abs.gz").write_bytes(gzip.compress(cut.encode()))
    refuses(io.read_abs, tmp_path / "cut.abs.gz", "ends inside the value")
    # A complete last value followed by a space (no newline) is whole: read.
    (tmp_path / "space.abs").write_text(good.rstrip("\n"))
    assert io.read_abs(tmp_path / "space.abs").valid.sum() == 10
    # A valid point 20 m away; a scan with 2 valid pixels; a grid the file
    # cannot hold (refused before anything is allocated).
    far = good.replace("-1000.000000", "-20000.000000", 1)
    (tmp_path / "far.abs").write_text(far)
    refuses(io.read_abs, tmp_path / "far.abs", "-20000", "10000 mm")
    few = abs_text(3, 4, np.where(np.arange(12).reshape(3, 4) < 2, 1, 0), X, Y, Z)
    (tmp_path / "few.abs").write_text(few.replace("-999999.000000", "1.000000"))
    refuses(io.read_abs, tmp_path / "few.abs", "only 2 valid points")
    (tmp_path / "big.abs").write_text(good.replace("3 rows", "3000 rows"))
    refuses(io.read_abs, tmp_path / "big.abs", "cannot hold")


def test_bnt_background_marker_texture_name_and_empty_grid(tmp_path):
    nrows, ncols, cols, bg = bnt_grid()
    # zmin damaged: NaN, inf, 0 and a real z all make the -1e9 background
    # "valid" (or hide it); the marker must be a value no coordinate takes.
    for k, zmin in enumerate([float("nan"), float("inf"), 0.0, 5.1]):
        data = bytearray(bnt_bytes(nrows, ncols, -1e9, "t.png", cols))
        struct.pack_into("<d", data, 4, zmin)
        (tmp_path / f"z{k}.bnt").write_bytes(bytes(data))
        refuses(io.read_bnt, tmp_path / f"z{k}.bnt", "zmin")
    # Marker changed to another far value: the old background is now data
    # 1e6 km away.
    data = bytearray(bnt_bytes(nrows, ncols, -1e9, "t.png", cols))
    struct.pack_into("<d", data, 4, -2e9)
    (tmp_path / "z4.bnt").write_bytes(bytes(data))
    refuses(io.read_bnt, tmp_path / "z4.bnt", "valid pixel", "10000 mm")
    # Background pixel whose x is not the marker.
    x = cols[0].copy()
    x[0, 0] = 1.0
    (tmp_path / "x.bnt").write_bytes(bnt_bytes(nrows, ncols, -1e9, "t.png", [x] + cols[1:]))
    refuses(io.read_bnt, tmp_path / "x.bnt", "background pixel")
    # A 0-row grid.
    (tmp_path / "empty.bnt").write_bytes(bnt_bytes(0, 4, -1e9, "t.png", [[]] * 5))
    refuses(io.read_bnt, tmp_path / "empty.bnt", "0 x 4", "empty")
    # Texture names: path separators, '..', a 65,535-byte name.
    for k, name in enumerate(["../../etc/passwd", "sub/t.png", "..", "a\\b.png",
                              "x" * 65535, "t\x00.png"]):
        (tmp_path / f"n{k}.bnt").write_bytes(bnt_bytes(nrows, ncols, -1e9, name, cols))
        refuses(io.read_bnt, tmp_path / f"n{k}.bnt", "texture")
    # uv outside the photo.
    u = cols[3].copy()
    u[1, 1] = 1.5
    (tmp_path / "uv.bnt").write_bytes(bnt_bytes(nrows, ncols, -1e9, "t.png",
                                                cols[:3] + [u, cols[4]]))
    refuses(io.read_bnt, tmp_path / "uv.bnt", "texture coordinates", "outside [0, 1]")


def test_ply_counts_checked_before_allocating(tmp_path):
    m = grid_mesh()
    io.save_mesh(tmp_path / "good.ply", m)
    raw = (tmp_path / "good.ply").read_bytes()
    nv, nf = f"element vertex {m.n_vertices}".encode(), f"element face {m.n_faces}".encode()
    for k, (old, new) in enumerate([(nv, b"element vertex -1"), (nf, b"element face -1"),
                                    (nv, b"element vertex 2147483648"),
                                    (nf, b"element face 4294967296"),
                                    (nv, b"element vertex 18446744073709551616")]):
        path = tmp_path / f"c{k}.ply"
        path.write_bytes(raw.replace(old, new))
        refuses(io.load_mesh, path, "element")
        assert peak_bytes(lambda: io.load_mesh(path)) < 4 * len(raw) + (1 << 20)
    # One face short: the last face's 13 bytes are left over.
    (tmp_path / "short.ply").write_bytes(raw.replace(nf, f"element face {m.n_faces - 1}".encode()))
    refuses(io.load_mesh, tmp_path / "short.ply", "13 bytes after the last element")
    # Float vertex indices would read every face as garbage.
    (tmp_path / "float.ply").write_bytes(raw.replace(b"list uchar int", b"list uchar float"))
    refuses(io.load_mesh, tmp_path / "float.ply", "integer type")
    # Ascii counts 0 and -1, a face index 1.5, a cut last number.
    vprops = ["property float x", "property float y", "property float z"]
    body = b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    cases = {"v0.ply": (ply_header("ascii", 0, 1, vprops) + body, "values after the last"),
             "vneg.ply": (ply_header("ascii", -1, 1, vprops) + body, "non-negative integer"),
             "fneg.ply": (ply_header("ascii", 3, -1, vprops) + body, "non-negative integer"),
             "half.ply": (ply_header("ascii", 3, 1, vprops) + body.replace(b" 1 2", b" 1.5 2"),
                          "1.5 is not an integer"),
             "cut.ply": (ply_header("ascii", 3, 1, vprops) + b"0 0 0\n1 0 0\n0 1 0\n3 0 1 2",
                         "ends inside the value '2'"),
             "nanuv.ply": (ply_header("ascii", 3, 1, vprops + ["property float u",
                                                               "property float v"])
                           + b"0 0 0 0 0\n1 0 0 nan 0\n0 1 0 1 1\n3 0 1 2\n", "texture coordinate")}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        refuses(io.load_mesh, tmp_path / name, words)


def test_off_obj_stl_wrl_silent_errors(tmp_path):
    off = "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n"
    cases = {
        # A duplicated face line: more face lines than the count.
        "dup.off": (off + "3 0 1 2\n", "1 data lines after"),
        # One face short, trailing data.
        "short.off": (off.replace("3 1 0", "3 0 0"), "1 data lines after"),
        "cut.off": (off.rstrip("\n"), "ends inside the value"),
        "colour.off": ("COFF\n3 1 0\n0 0 0 300 0 0 255\n1 0 0 9 9 9 255\n0 1 0 9 9 9 255\n"
                       "3 0 1 2\n", "not 8-bit"),
        "half.off": (off.replace("3 0 1 2", "3 0 1.5 2"), "1.5 is not an integer"),
        # 'f a/b' with no vt; mixed corner forms in one face; a NaN vt.
        "novt.obj": ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/2 3/3\n", "texture index"),
        "mixed.obj": ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nf 1/1 2/1 3\n", "mixes corner forms"),
        "nanvt.obj": ("v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt nan 0\nf 1/1 2/2 3/1\n",
                      "texture coordinate"),
        "far.obj": ("v 0 0 0\nv 1e5 0 0\nv 0 1 0\nf 1 2 3\n", "100000 mm"),
        "open.stl": ("solid s\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\n"
                     "vertex 0 1 0\nendloop\nendfacet\n", "endsolid"),
    }
    wrl = ("#VRML V2.0 utf8\nShape { geometry IndexedFaceSet {\n"
           "coord Coordinate { point [ 0 0 0, 1 0 0, 0 1 0, 1 1 0 ] }\n"
           "coordIndex [ 0 1 2 -1, 1 3 2 -1 ] } }\n")
    cases.update({
        "huge.wrl": (wrl.replace("1 3 2 -1", "1 3 1000000000000 -1"), "not a vertex index"),
        "frac.wrl": (wrl.replace("1 3 2 -1", "1 3 1.5 -1"), "not a vertex index"),
        "inf.wrl": (wrl.replace("1 1 0 ]", "1 -1e999 0 ]"), "nan or infinite"),
        "repeat.wrl": (wrl.replace("1 3 2 -1", "1 3 1 -1"), "repeats a vertex"),
        "token.wrl": (wrl.replace("1 1 0 ]", "1 " + "1" * 100000 + " 0 ]"), "token of 100000"),
        "cut.wrl": (wrl[:wrl.index("coordIndex") + 20], "do not balance"),
        "node.wrl": (wrl.replace("Coordinate {", "Coordinatf {"), "'coordinatf' node"),
    })
    for name, (text, words) in cases.items():
        (tmp_path / name).write_text(text)
        refuses(io.load_mesh, tmp_path / name, words)
    # Files other tools write without a final newline, where the format has
    # a terminator or nothing to cut, still read.
    (tmp_path / "ok.wrl").write_text(wrl.rstrip("\n"))
    assert io.load_mesh(tmp_path / "ok.wrl").n_faces == 2
    (tmp_path / "ok.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3")
    assert io.load_mesh(tmp_path / "ok.obj").n_faces == 1
    (tmp_path / "ok.stl").write_text(cases["open.stl"][0] + "endsolid s")
    assert io.load_mesh(tmp_path / "ok.stl").n_faces == 1
    # A VRML quad is fan-triangulated like every other format.
    (tmp_path / "quad.wrl").write_text(wrl.replace("0 1 2 -1, 1 3 2 -1", "0 1 3 2 -1"))
    np.testing.assert_array_equal(io.load_mesh(tmp_path / "quad.wrl").faces, [[0, 1, 3], [0, 3, 2]])


def test_landmark_truncation_and_plausibility(tmp_path):
    (tmp_path / "cut.lm3").write_text(LM3.rstrip("\n")[:-1])  # "1 -80 20" -> "1 -80 2"
    refuses(io.read_landmarks, tmp_path / "cut.lm3", "ends inside the value '2'")
    (tmp_path / "cut.lm2").write_text(LM2.rstrip("\n"))
    refuses(io.read_landmarks, tmp_path / "cut.lm2", "ends inside the value '996.9'")
    (tmp_path / "far.lm3").write_text(LM3.replace("0.5 -20.25 48.0", "0.5 -20.25 48000.0"))
    refuses(io.read_landmarks, tmp_path / "far.lm3", "line 9", "48000")
    (tmp_path / "far.lm2").write_text(LM2.replace("574.3 641.5", "574.3 1e6"))
    refuses(io.read_landmarks, tmp_path / "far.lm2", "1e+06 beyond", "pixels")
    pts = "version: 1\nn_points: 2\n{\n1 2\n3 4\n}"
    (tmp_path / "a.pts").write_text(pts)  # the closing brace is the evidence
    np.testing.assert_array_equal(io.read_landmarks(tmp_path / "a.pts").points, [[1, 2], [3, 4]])
    (tmp_path / "b.pts").write_text(pts + "\n5 6\n")
    refuses(io.read_landmarks, tmp_path / "b.pts", "after the closing")
    (tmp_path / "c.pts").write_text(pts.replace("n_points: 2", "n_points: 1_0"))
    refuses(io.read_landmarks, tmp_path / "c.pts", "cannot parse n_points")
    (tmp_path / "d.txt").write_text("1 2 3\n4 1_0 6\n")  # Python's float() would take it
    refuses(io.read_landmarks, tmp_path / "d.txt", "line 2: cannot parse")
