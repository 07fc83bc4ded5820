"""dce.geom.mesh_eval's folder writers (the layout dce-eval-mesh reads,
checked by reading it back) and its comparison table (hand-made numbers)."""
import numpy as np
import pytest

from dce.geom.alignment import AlignmentError
from dce.geom.io import FormatError, Mesh, RangeScan, read_abs, write_abs
from dce.geom.mesh_eval import (
    comparison_markdown,
    find_pairs,
    read_ground_truth,
    read_prediction,
    write_ground_truth,
    write_prediction,
)


def tetrahedron():
    V = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    return Mesh(V, np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]))


def seven(offset=0.0):
    return np.arange(21, dtype=np.float64).reshape(7, 3) * 1.5 + offset


def test_prediction_written_reads_back(tmp_path):
    mesh = tetrahedron()
    path = write_prediction(tmp_path / "pred", "face01", mesh, seven())
    assert path == tmp_path / "pred" / "face01.ply"
    back, landmarks = read_prediction(path)
    np.testing.assert_array_equal(back.vertices, mesh.vertices)
    np.testing.assert_array_equal(back.faces, mesh.faces)
    np.testing.assert_array_equal(landmarks, seven())


@pytest.mark.parametrize("landmarks", [np.zeros((5, 3)), np.zeros((7, 2)),
                                       np.full((7, 3), np.nan)])
def test_prediction_with_unusable_landmarks_is_refused(tmp_path, landmarks):
    with pytest.raises(AlignmentError, match="face01"):
        write_prediction(tmp_path, "face01", tetrahedron(), landmarks)
    assert not list(tmp_path.iterdir())


def scan_file(path):
    """A 3 x 4 range scan (one invalid pixel) written as .abs.gz."""
    j, i = np.meshgrid(np.arange(4.0), np.arange(3.0))
    xyz = np.stack([j * 2.0, -i * 2.0, 100.0 + i + j], axis=-1)
    valid = np.ones((3, 4), dtype=bool)
    valid[1, 2] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    write_abs(path, RangeScan(xyz, valid))
    return path


def test_ground_truth_placed_under_the_stem_reads_back(tmp_path):
    """The scan keeps its extension under the new stem, reads back as the
    original file's triangulation, with the given landmarks; placing it
    again replaces it; the folder matches a prediction of the same stem."""
    original = scan_file(tmp_path / "world" / "04200d7.abs.gz")
    folder = tmp_path / "gt"
    for _ in range(2):
        path = write_ground_truth(folder, "face01", original, seven())
    assert path == folder / "face01.abs.gz"
    assert path.read_bytes() == original.read_bytes()
    V, F, landmarks = read_ground_truth(path)
    expected = read_abs(original).to_mesh(keep_uv=False)
    np.testing.assert_array_equal(V, expected.vertices)
    np.testing.assert_array_equal(F, expected.faces)
    np.testing.assert_array_equal(landmarks, seven())
    assert sorted(p.name for p in folder.iterdir()) == ["face01.abs.gz", "face01.landmarks.txt"]
    write_prediction(tmp_path / "pred", "face01", tetrahedron(), seven(1.0))
    pairs, missing, extra = find_pairs(tmp_path / "pred", folder)
    assert [stem for stem, _, _ in pairs] == ["face01"] and missing == extra == []


def test_ground_truth_that_is_no_scan_or_has_bad_landmarks_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a scan\n")
    with pytest.raises(FormatError, match="notes.txt"):
        write_ground_truth(tmp_path / "gt", "face01", text, seven())
    original = scan_file(tmp_path / "s.abs.gz")
    with pytest.raises(FormatError, match="s.abs.gz"):
        write_ground_truth(tmp_path / "gt", "face01", original, seven()[:6])


def test_comparison_table_rows_in_order_to_the_micrometre():
    summaries = {
        "coarse": {"median_mm": 1.23456, "mean_mm": 2.0, "std_mm": 0.5004, "n_points": 1200},
        "refined": {"median_mm": 0.9995, "mean_mm": 1.5, "std_mm": 0.25, "n_points": 1200},
        "nothing": {"median_mm": None, "mean_mm": None, "std_mm": None, "n_points": 0},
    }
    assert comparison_markdown(summaries).splitlines() == [
        "| | median (mm) | mean (mm) | std (mm) | points |",
        "|---|---|---|---|---|",
        "| coarse | 1.235 | 2.000 | 0.500 | 1200 |",
        "| refined | 1.000 | 1.500 | 0.250 | 1200 |",
        "| nothing | - | - | - | 0 |",
    ]
