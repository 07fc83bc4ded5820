"""The commands run end to end on small inputs."""
import re

import numpy as np
import pytest
from PIL import Image

from dce.cli import demo
from dce.gan.report import plot_losses, read_log


def test_demo_runs_the_main_job_and_writes_a_report(tmp_path):
    """A tiny world, the tiny preset: every step runs and the report's
    links all resolve; a second run resumes (nothing is rebuilt)."""
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--identities", "3", "--poses", "1", "--size", "64",
            "--preset", "tiny", "--iters-per-resolution", "3", "--heatmaps", "2",
            "--detail-iterations", "3",
            "--workers", "1", "--data", str(tmp_path / "no-data")]
    assert demo.main(argv) == 0
    report = (out / "report.md").read_text()
    assert "| coarse |" in report and "| refined |" in report and "normal error" in report
    header = (out / "eval" / "mae.csv").read_text().splitlines()[0]
    assert header.startswith("model,resolution,images,eq4_mae,eq4_mae_mm,face_mae_mm,"
                             "normal_error_deg,detail_corr,roughness")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"loss_curves.png", "detail_loss_curves.png", "refined/side_by_side.png",
            "eval/heatmaps/shaded_000.png", "eval/heatmaps/detail_000.png"} <= set(links)
    for link in links:
        assert np.asarray(Image.open(out / link)).max() > 0, link
    assert (out / "refined" / "refined.ply").stat().st_size > 0
    check_3d_table(out, report)
    stamp = (out / "pairs.h5").stat().st_mtime_ns
    assert demo.main(argv) == 0
    assert (out / "pairs.h5").stat().st_mtime_ns == stamp


def check_3d_table(out, report):
    """The report's 3D table: a coarse and a refined row of finite numbers
    over the same scan points, one face per held-out photo view of the
    pair file (counted here from the file itself), the cumulative plot
    linked; the folders are dce-eval-mesh's."""
    import json

    import h5py

    with h5py.File(out / "pairs.h5", "r") as f:
        faces = int(((f["split"][()] == 1) & ~f["pose"][()].any(axis=1)).sum())
    assert faces == 2  # 3 identities: one held out, two scans of it
    section = report.split("### In 3D, against the world's scans", 1)[1].split("\n## ", 1)[0]
    assert f"{faces} held-out faces" in section
    assert "](eval_3d/cumulative_error.png)" in section
    assert "`eval_3d/coarse_eval/summary.md`, `eval_3d/refined_eval/summary.md`" in section
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in ("coarse", "refined"):
            rows[cells[0]] = [float(c) for c in cells[1:]]
    assert set(rows) == {"coarse", "refined"}
    for name, (median, mean, std, points) in rows.items():
        assert np.isfinite([median, mean, std]).all() and 0 < median and 0 < mean and 0 <= std
        summary = json.loads((out / "eval_3d" / f"{name}_eval" / "summary.json").read_text())
        assert summary["n_meshes"] == faces and summary["metric"] is True
        assert summary["n_points"] == points and summary["missing"] == []
        assert abs(summary["median_mm"] - median) <= 0.0005 + 1e-12
    assert rows["coarse"][3] == rows["refined"][3] > 0


def test_loss_curves_from_a_resumed_log(tmp_path):
    """A resumed run appends records; the last record of an iteration wins
    and the curve has one point per iteration."""
    log = tmp_path / "log.jsonl"
    lines = [f'{{"iteration": {i}, "resolution": {4 if i < 3 else 8}, "g_pixel": {1.0 / i}}}'
             for i in (1, 2, 3, 4)]
    lines.append('{"iteration": 4, "resolution": 8, "g_pixel": 0.125}')
    log.write_text("\n".join(lines) + "\n")
    records = read_log(log)
    np.testing.assert_array_equal(records["iteration"], [1, 2, 3, 4])
    np.testing.assert_allclose(records["g_pixel"], [1, 0.5, 1 / 3, 0.125])
    picture = Image.open(plot_losses(log, tmp_path / "curves.png"))
    assert picture.size[1] % 180 == 0 and picture.size[1] // 180 == 1  # only g_pixel logged


def test_a_demo_step_that_cannot_start_stops_the_demo_with_the_reason(tmp_path):
    """The demo calls the library: a setting the trainer refuses stops it
    with one line naming the step and the setting, before any file is made."""
    with pytest.raises(SystemExit) as stop:
        demo.train_global(tmp_path / "pairs.h5", tmp_path / "run", "no-such-preset", None, 0,
                          "cpu", 0)
    message = str(stop.value.code)
    assert message.startswith("dce-demo: the training failed: ") and "no-such-preset" in message
    assert "finished steps are kept" in message and not (tmp_path / "run").exists()
