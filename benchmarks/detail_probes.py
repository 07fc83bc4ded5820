"""What the missing detail band is made of, on the built-in world: three
predictors that need no training, scored with dce-eval's ``detail_corr``
on the held-out images of a pair file built from the world
(``dce-build synthetic``). They tell which information a refinement would
need to come near the ceiling of ``benchmarks/detail_ceiling.py``.

1. *Template mean band*: every coarse mesh of the world is its 3DMM
   (same vertices), so each pixel of a coarse image has template
   coordinates: the model's mean face at that vertex, (x, y) mm, rendered
   with the sample's coarse camera. The missing band BP(target - coarse)
   of the training images is averaged per 0.5 mm template bin (smoothed by
   one bin); the predictor adds that mean band at each held-out pixel's
   template coordinates. It knows where anatomy puts detail on average
   (mouth slit, nostrils, alar and lid creases, nasolabial folds), and
   nothing about the person, the expression or the pose. Two variants:
   (b) the band regressed per bin on the coarse fit's expression weights
   (ridge), so that a smile can deepen the folds; (c) an oracle: the
   template coordinates of the true face (no detail) in its true pose,
   for both the table and the prediction: what the mean band is worth when
   the anatomy is placed exactly, i.e. what the coarse fit's registration
   costs.
2. *Fine fields of the coarse fit*: the coarse mesh's own coefficients
   (exact least squares: a coarse mesh lies in its model's span) evaluated
   on the world's 0.5 mm ground-truth grid without detail: what the 2.5 mm
   mesh loses by its spacing alone.
3. *Posterior shape*: the identity's posterior-mean coefficients
   (``detail_ceiling.coefficient_posterior``) given the noisy landmarks of
   (a) this scan, (b) both scans of the identity, with
   the true expression, on the fine grid without detail: what the
   landmarks tell of the shape, finer than the coarse fit keeps.

With ``--checkpoint``, the detail stage's own refinement is scored too,
alone and with the template mean band added (one weight, no training).

    python benchmarks/detail_probes.py --data pairs.h5 --world world [--checkpoint det/last.pt]

Writes ``benchmarks/results/detail_probes.md``. About 5 minutes on 2 cores
for the default world's 240 held-out images.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, mean_se, write_report  # noqa: E402
from detail_ceiling import coefficient_posterior  # noqa: E402

from dce.gan import h5format as fmt  # noqa: E402
from dce.gan.metrics import band_pass, detail_band_px, detail_corr  # noqa: E402
from dce.geom import synthetic as S  # noqa: E402
from dce.geom.io import load_mesh  # noqa: E402
from dce.geom.projection import camera_from_array  # noqa: E402
from dce.geom.raster import rasterize  # noqa: E402

BIN_MM = 0.5
TEMPLATE_BOX = (-90.0, -110.0, 180.0, 220.0)  # x0, y0, width, height of the template, mm


class Pairs:
    """The depth channel, masks, cameras and scales of a pair file, per row."""

    def __init__(self, path: Path):
        self.f = h5py.File(path, "r")
        self.split = self.f["split"][()]
        self.ids = list(self.f["sample_id"].asstr()[()])
        self.provenance = [json.loads(s) for s in self.f["provenance"].asstr()[()]]
        self.cameras = self.f["coarse_camera"][()]

    def row(self, i: int) -> dict:
        f = self.f
        return {"coarse": fmt.dequantize(f["coarse"][i, 0]),
                "target": fmt.dequantize(f["target"][i, 0]),
                "coarse_mask": f["coarse_mask"][i] > 0, "face": f["target_mask"][i] > 0,
                "offset": f["coarse_offset"][i, 0], "scale": f["coarse_scale"][i, 0],
                "mm": abs(f["target_scale"][i, 0]), "pixel_mm": 1.0 / f["target_camera"][i, 3, 0]}


def score(refined_depth: np.ndarray, r: dict) -> float:
    """dce-eval's detail_corr of one refined depth image (file units)."""
    R, C, T = (torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]
               for a in (refined_depth, r["coarse"], r["target"]))
    return float(detail_corr(R, C, T, torch.from_numpy(r["face"])[None], r["pixel_mm"])[0])


def rendered_depth(P: np.ndarray, faces: np.ndarray, camera, r: dict) -> np.ndarray:
    """Coarse image with the surface P (model frame) where both have surface."""
    Q = camera.project(P)
    image, mask = rasterize(Q, faces, Q[:, 2], *r["coarse"].shape)
    return np.where(r["coarse_mask"] & mask, (image[..., 0] - r["offset"]) / r["scale"],
                    r["coarse"])


def coarse_mesh_path(pairs: Pairs, world: Path, i: int) -> Path:
    """The world's coarse mesh of row ``i`` (``<world>/coarse/<stem>.ply``)."""
    return world / "coarse" / Path(pairs.provenance[i]["coarse"]).name


def template_images(pairs: Pairs, world: Path, mean: np.ndarray) -> tuple:
    """(N, 2, H, W) template (x, y) mm of each pixel's coarse surface, and
    (N, H, W) where it is drawn."""
    N, H, W = len(pairs.ids), *pairs.f["coarse_mask"].shape[1:]
    uv, drawn, meshes = np.zeros((N, 2, H, W), np.float32), np.zeros((N, H, W), bool), {}
    for i in range(N):
        path = coarse_mesh_path(pairs, world, i)
        mesh = meshes.get(path) or meshes.setdefault(path, load_mesh(path))
        P = camera_from_array(pairs.cameras[i]).project(mesh.vertices)
        image, drawn[i] = rasterize(P, mesh.faces, mean[:, :2], H, W)
        uv[i] = image.transpose(2, 0, 1)
    return uv, drawn


def true_template_images(pairs: Pairs, world, manifest: dict, seed: int) -> tuple:
    """As :func:`template_images` for the true face without detail in its
    true pose, rendered with each sample's target camera: (N, 2, H, W), (N, H, W)."""
    N, H, W = len(pairs.ids), *pairs.f["coarse_mask"].shape[1:]
    records = {r["stem"]: r for r in manifest["scans"]}
    template = world.fine_mean[..., :2].reshape(-1, 2)
    uv, drawn, posed = np.zeros((N, 2, H, W), np.float32), np.zeros((N, H, W), bool), {}
    for i in range(N):
        r = records[pairs.ids[i].split("/")[0]]
        if r["stem"] not in posed:
            identity = S.draw_identity(world, seed, r["identity_index"])
            P = fine_surface(world, identity, identity.coefficients, r["expression"]["weights"])
            posed = {r["stem"]: P @ np.asarray(r["pose"]["rotation"]).T
                     + np.asarray(r["pose"]["translation_mm"])}
        P = camera_from_array(pairs.f["target_camera"][i]).project(posed[r["stem"]])
        image, drawn[i] = rasterize(P, world.fine_faces, template, H, W)
        uv[i] = image.transpose(2, 0, 1)
    return uv, drawn


def template_band(pairs: Pairs, uv, drawn, features=None, ridge: float = 5.0):
    """A function mapping a held-out row i to its predicted band (H, W) mm:
    per 0.5 mm template bin (smoothed by one bin), the training images'
    missing band BP(target - coarse) regressed on ``features(i)`` (a constant
    and, when given, the row's weights (E,), ridge-penalized by ``ridge``
    pixels); without ``features``, the plain mean."""
    x0, y0, width, height = TEMPLATE_BOX
    nx, ny = int(width / BIN_MM), int(height / BIN_MM)

    def z(i):
        return np.ones(1) if features is None else np.r_[1.0, features(i)]

    def bins(i, valid):
        bx = np.clip(((uv[i, 0][valid] - x0) / BIN_MM).astype(int), 0, nx - 1)
        by = np.clip(((uv[i, 1][valid] - y0) / BIN_MM).astype(int), 0, ny - 1)
        return by * nx + bx

    D = len(z(0))
    gram, moment = np.zeros((ny * nx, D, D)), np.zeros((ny * nx, D))
    for i in np.flatnonzero(pairs.split == fmt.TRAIN):
        r = pairs.row(i)
        valid = r["coarse_mask"] & r["face"] & drawn[i]
        fine, coarse = detail_band_px(r["pixel_mm"])
        band = band_pass(torch.from_numpy((r["target"] - r["coarse"]) * r["mm"])[None],
                         torch.from_numpy(valid)[None], fine, coarse)[0].numpy()
        b = bins(i, valid)
        zi = z(i)
        gram += np.bincount(b, minlength=ny * nx)[:, None, None] * np.outer(zi, zi)
        moment += np.bincount(b, band[valid], minlength=ny * nx)[:, None] * zi
    gram = gaussian_filter(gram.reshape(ny, nx, D * D), (1.0, 1.0, 0)).reshape(-1, D, D)
    moment = gaussian_filter(moment.reshape(ny, nx, D), (1.0, 1.0, 0)).reshape(-1, D)
    penalty = np.diag(np.r_[1e-6, np.full(D - 1, ridge)])
    table = np.linalg.solve(gram + penalty, moment[..., None])[..., 0]  # (bins, D)

    def predict(i, r):
        valid = r["coarse_mask"] & drawn[i]
        band = np.zeros_like(r["coarse"])
        band[valid] = table[bins(i, valid)] @ z(i)
        return band
    return predict


def fine_surface(world, identity, coefficients, expression) -> np.ndarray:
    """(n, 3) the world's fine grid for identity ``coefficients`` and
    ``expression``, no detail, model frame."""
    identity = dataclasses.replace(identity, coefficients=coefficients)
    return S.ground_truth_surface(world, identity, expression, detail=False).reshape(-1, 3)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="pair file built from --world")
    p.add_argument("--world", type=Path, required=True, help="the world's folder")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a detail-stage checkpoint to score alone and with the mean band")
    args = p.parse_args()
    started = time.perf_counter()
    pairs = Pairs(args.data)
    manifest = S.load_world(args.world)
    world, seed = S.build_world(S.settings_of(manifest)), manifest.get("seed", 0)
    model = world.model
    uv, drawn = template_images(pairs, args.world, model.mean)
    predict_band = template_band(pairs, uv, drawn)
    records = {r["stem"]: r for r in manifest["scans"]}
    fit_expression = lambda i: np.asarray(  # noqa: E731
        records[pairs.ids[i].split("/")[0]]["fit"]["expression"])
    true_uv, true_drawn = true_template_images(pairs, world, manifest, seed)
    variants = {"template band regressed on the fit's expression":
                template_band(pairs, uv, drawn, fit_expression),
                "template mean band, true registration (oracle)":
                template_band(pairs, true_uv, true_drawn)}
    basis = np.concatenate([model.identity_basis.reshape(len(model.identity_basis), -1),
                            model.expression_basis.reshape(len(model.expression_basis), -1)]).T
    K = len(model.identity_basis)
    refiner = None
    if args.checkpoint is not None:
        from dce.gan.inference import Refiner
        refiner = Refiner(args.checkpoint)

    names = ["template mean band", *variants, "fine fields of the coarse fit",
             "posterior shape, this scan's landmarks", "posterior shape, both scans' landmarks"]
    if refiner is not None:
        names += ["detail stage", "detail stage + template mean band"]
    scores = {name: [] for name in names}
    fits, posteriors = {}, {}
    for i in np.flatnonzero(pairs.split == fmt.TEST):
        r = pairs.row(i)
        camera = camera_from_array(pairs.cameras[i])
        band = predict_band(i, r)
        predictions = {names[0]: band} | {n: p(i, r) for n, p in variants.items()}
        for name, predicted in predictions.items():
            scores[name].append(score(np.where(r["coarse_mask"], r["coarse"] + predicted / r["mm"],
                                               r["coarse"]), r))
        stem = pairs.ids[i].split("/")[0]
        index, shot = int(stem[:5]) - S.SUBJECT_BASE, int(stem[-1])
        identity = S.draw_identity(world, seed, index)
        path = coarse_mesh_path(pairs, args.world, i)
        if path not in fits:
            V = load_mesh(path).vertices
            c = np.linalg.lstsq(basis, (V - model.mean).ravel(), rcond=None)[0]
            fits[path] = fine_surface(world, identity, c[:K], c[K:])
        scores["fine fields of the coarse fit"].append(
            score(rendered_depth(fits[path], world.fine_faces, camera, r), r))
        if (index, shot) not in posteriors:
            expression = S.draw_scan(world, identity, seed, shot).expression
            posteriors[index, shot] = [
                fine_surface(world, identity, coefficient_posterior(world, identity, seed, shots)[0],
                             expression) for shots in ((shot,), (1, 2))]
        for name, P in zip(names[4:6], posteriors[index, shot]):
            scores[name].append(score(rendered_depth(P, world.fine_faces, camera, r), r))
        if refiner is not None:
            x = np.stack([fmt.dequantize(pairs.f["coarse"][i, k])
                          for k in range(pairs.f["coarse"].shape[1])])
            channels = json.loads(pairs.f.attrs["channels"])
            refined = refiner(x[[channels.index(c) for c in refiner.input_channels]])[
                refiner.output_channels.index("depth")]
            scores[names[6]].append(score(refined, r))
            scores[names[7]].append(score(np.where(r["coarse_mask"], refined + band / r["mm"],
                                                   refined), r))
    n = len(scores[names[0]])
    lines = ["# What the missing detail band is made of (built-in world)", "",
             f"`python benchmarks/detail_probes.py --data {args.data.name} --world "
             f"{args.world.name}" + (" --checkpoint ..." if refiner is not None else "") + "`: "
             f"{n} held-out images at {pairs.f['coarse'].shape[-1]} px; predictors without "
             "training (see the script's docstring), scored with dce-eval's detail_corr.", "",
             "| predictor | detail_corr, mean ± s.e. |", "|---|---|"]
    lines += [f"| {name} | {mean_se(values)} |" for name, values in scores.items()]
    lines += ["", f"{time.perf_counter() - started:.0f} s on the machine that ran it."]
    return write_report(lines, ROOT / "benchmarks" / "results" / "detail_probes.md")


if __name__ == "__main__":
    sys.exit(main())
