"""The commands run end to end on small inputs."""
import json

import numpy as np
from PIL import Image

from dce.cli import demo


def test_demo_on_a_tiny_synthetic_world(tmp_path):
    out = tmp_path / "demo"
    code = demo.main(["--out", str(out), "--identities", "2", "--pairs", "1", "--workers", "1",
                      "--data", str(tmp_path / "no-data"), "--size", "128"])
    assert code == 0
    world = json.loads((out / "world" / "world.json").read_text())
    assert len(world["scans"]) == 4  # 2 identities x (neutral + 1 expression)
    picture = np.asarray(Image.open(out / "synthetic_pairs.png"))
    # 1 scan x 2 poses x (coarse, ground truth) rows of 128 px; D, C, E, shading panels.
    assert picture.shape == (4 * 128, 4 * 128, 3)
    assert picture.max() > 0
