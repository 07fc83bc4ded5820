"""What a coarse fit keeps of what its landmarks say, and what that is worth
to the missing detail band, on the built-in world.

``detail_ceiling.py --redraw landmarks`` bounds ``detail_corr`` by 0.483 for
any predictor of the band given the landmarks the coarse fit saw, while
every trained detail stage stays near 0.24, where a plain mean band in
template coordinates lies (``detail_probes.py``). This script measures the
two ways the landmarks could say more than a coarse image shows:

1. *The face's shape.* The identity coefficients (K) of each scan as the
   coarse fit found them, and as the landmarks' posterior mean
   (``detail_ceiling.landmark_posterior``: pose and coefficients given this
   scan's noisy landmarks, the scanner's own camera, true expression),
   against the truth: R^2 = 1 - sum (estimate - true)^2 / sum true^2 over
   the scans, per group of components. Then what each estimate is worth:
   the training images' missing band BP(target - coarse) regressed per
   1 mm template bin (at each pixel's coarse-fit template coordinates, as
   ``detail_probes.py``) on a constant and the coefficients, scored on the
   held-out images with each estimate, and with the true coefficients (an
   oracle), and on the fit's coefficients, expression weights and the log
   ratio of the coarse and target cameras' scales (the face's size in mm,
   which a fit with a free camera scale does not know), and on the view
   direction of the coarse camera (its z axis, to second order).
2. *Registration.* Each held-out pixel's template coordinates (x, y mm on
   the model's mean face) as the coarse fit places them, and as the
   posterior-mean face in its posterior-mean pose places them, against
   the true face in its true pose: RMS mm over the face, in the photo's
   view (pose 0) and in the rotated views. Then the mean band with the
   anatomy placed exactly (table and prediction at the true template
   coordinates, an oracle) and placed by the landmarks (table at the true
   coordinates, prediction at the posterior's).
3. *The face drawn again.* A predictor of the target depth made of a face
   of the world's model drawn in the scanner's frame, the pair's target
   camera: the posterior-mean face in its posterior-mean pose (with the
   true expression, so a little generous), alone and with the mean detail
   (``detail_field`` averaged over DETAIL_DRAWS identities' creases); the
   same without the scanner's mm per pixel (``free_scale``: the face's
   size estimated with its pose and shape, as a fit with a free camera
   scale must); the coarse fit's own face (its coefficients and
   expression) in the posterior's pose; a learned re-fit, which needs no
   landmarks and no posterior: the training scans' true pose and identity
   coefficients regressed (least squares) on their coarse fit's
   coefficients, expression weights and the two cameras of the photo's
   view, the held-out scans' face drawn from that regression with the
   fit's expression weights, alone and with the mean detail;
   and, as oracles, the true face with the mean detail and with its own
   creases (no pores, no scanner noise), in the true pose. Each is scored
   as a refinement: ``detail_corr``, ``normal_error_deg`` and
   ``face_mae_mm`` (dce-eval's) of the predicted depth where both it and
   the coarse image have surface, the coarse image elsewhere, beside the
   coarse image's own. The drawn faces keep the true depth along the view
   ray (an orthographic landmark does not fix it), which the face MAE sees
   and the other two do not: their face MAE is not a fair figure.

    python benchmarks/detail_registration.py --data pairs.h5 --world world

``--data`` a pair file built from ``--world`` (``dce-build synthetic``;
``detail_identities.py`` builds bigger worlds whose held-out images are the
default world's). Writes ``benchmarks/results/detail_registration.md``.
About 10 minutes on 2 cores for a world of 220 identities (2,400 training
images), most of it rendering the true faces.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import detail_probes as probes  # noqa: E402
from common import ROOT, mean_se, write_report  # noqa: E402
from detail_ceiling import landmark_posterior, observed_landmarks  # noqa: E402

from dce.gan import h5format as fmt  # noqa: E402
from dce.gan.evaluate import image_mae  # noqa: E402
from dce.gan.metrics import band_pass, detail_band_px, normal_error_deg  # noqa: E402
from dce.geom import synthetic as S  # noqa: E402
from dce.geom.face_detail import detail_field, draw_detail  # noqa: E402
from dce.geom.projection import camera_from_array, rotation_from_euler  # noqa: E402
from dce.geom.raster import rasterize  # noqa: E402
from dce.geom.synthetic_world import _radial  # noqa: E402

BIN_MM = 1.0
RIDGE = 5.0  # per-bin ridge penalty, in pixels (a bin holds thousands)
SHAPE_GROUPS = {"0-2": slice(0, 3), "3-16": slice(3, None)}
DETAIL_DRAWS = 100  # identities' creases averaged into the mean detail
NO_PORES = 2.0  # a grid step (mm) past detail_field's 1.25 mm: the creases without pores


def missing_band(r: dict) -> np.ndarray:
    """BP(target - coarse) mm of one row over its face, as dce-eval's
    ``detail_corr`` band-passes it."""
    valid = r["coarse_mask"] & r["face"]
    fine, coarse = detail_band_px(r["pixel_mm"])
    return band_pass(torch.from_numpy((r["target"] - r["coarse"]) * r["mm"])[None],
                     torch.from_numpy(valid)[None], fine, coarse)[0].numpy()


class TemplateGrid:
    """1 mm bins over the template box; ``bins`` maps template (x, y) to a
    bin index."""

    def __init__(self):
        self.x0, self.y0, width, height = probes.TEMPLATE_BOX
        self.nx, self.ny = int(width / BIN_MM), int(height / BIN_MM)
        self.size = self.nx * self.ny

    def bins(self, uv: np.ndarray, where: np.ndarray) -> np.ndarray:
        bx = np.clip(((uv[0][where] - self.x0) / BIN_MM).astype(int), 0, self.nx - 1)
        by = np.clip(((uv[1][where] - self.y0) / BIN_MM).astype(int), 0, self.ny - 1)
        return by * self.nx + bx


def bin_sums(grid: TemplateGrid, bands: dict, uv: dict, drawn: dict) -> tuple:
    """(pixel counts, band sums), each (training rows, bins), of the
    training rows' bands binned at template coordinates ``uv``."""
    rows = sorted(bands)
    counts = np.zeros((len(rows), grid.size), np.float32)
    sums = np.zeros_like(counts)
    for k, i in enumerate(rows):
        band, valid = bands[i]
        where = valid & drawn[i]
        b = grid.bins(uv[i], where)
        counts[k] = np.bincount(b, minlength=grid.size)
        sums[k] = np.bincount(b, band[where], minlength=grid.size)
    return counts, sums


def regression_table(counts, sums, Z: np.ndarray) -> np.ndarray:
    """(bins, D): per bin, the band regressed on the rows' features Z
    (rows, D) (first column the constant, not penalized), every pixel of
    the bin weighed alike."""
    D = Z.shape[1]
    outer = (Z[:, :, None] * Z[:, None, :]).reshape(len(Z), D * D).astype(np.float32)
    gram = (counts.T @ outer).astype(np.float64).reshape(-1, D, D)
    moment = (sums.T @ Z.astype(np.float32)).astype(np.float64)
    penalty = np.diag(np.r_[1e-6, np.full(D - 1, RIDGE)])
    return np.linalg.solve(gram + penalty, moment[..., None])[..., 0]


def predicted_score(grid, table, z, uv, drawn, r) -> float:
    """``detail_corr`` of the coarse image plus the table's band at the
    template coordinates ``uv`` (2, H, W) for features ``z`` (D,)."""
    where = r["coarse_mask"] & drawn
    band = np.zeros_like(r["coarse"])
    band[where] = table[grid.bins(uv, where)] @ z
    return probes.score(np.where(r["coarse_mask"], r["coarse"] + band / r["mm"], r["coarse"]), r)


def posed_template(world, pairs, i, identity, coefficients, expression, rotation,
                   translation) -> tuple:
    """Template (x, y) mm (2, H, W) of ``identity``'s face with
    ``coefficients`` (no detail) at a pose, rendered with row ``i``'s target
    camera, and where drawn."""
    P = probes.fine_surface(world, identity, coefficients, expression)
    Q = camera_from_array(pairs.f["target_camera"][i]).project(P @ rotation.T + translation)
    H, W = pairs.f["coarse_mask"].shape[1:]
    image, drawn = rasterize(Q, world.fine_faces, world.fine_mean[..., :2].reshape(-1, 2), H, W)
    return image.transpose(2, 0, 1), drawn


def mean_detail(world, expression, cache: dict) -> np.ndarray:
    """(nv, nu) mm: the creases of DETAIL_DRAWS drawn identities at
    ``expression``, averaged (without pores, whose mean is 0)."""
    key = tuple(np.round(expression, 6))
    if key not in cache:
        rng = np.random.default_rng(0)
        cache[key] = np.mean([detail_field(draw_detail(rng), expression, world.fine_u,
                                           world.fine_v, NO_PORES)
                              for _ in range(DETAIL_DRAWS)], axis=0)
    return cache[key]


def refinement_figures(refined: np.ndarray, r: dict) -> np.ndarray:
    """(detail_corr, normal_error_deg, face_mae_mm) of one refined depth
    image (file units), as dce-eval scores them."""
    R, T = (torch.from_numpy(np.ascontiguousarray(a, np.float32))[None]
            for a in (refined, r["target"]))
    face = torch.from_numpy(r["face"])[None]
    mm, px = torch.tensor([r["mm"]]), torch.tensor([r["pixel_mm"]])
    return np.array([probes.score(refined, r), float(normal_error_deg(R, T, mm, px, face)[0]),
                     float(image_mae(R, T, face_only=True)[0]) * r["mm"]])


def drawn_face_figures(world, pairs, i, r, identity, coefficients, expression, detail,
                       rotation, translation, size: float = 1.0) -> np.ndarray:
    """:func:`refinement_figures` of row ``i``'s coarse image with the depth
    of the face ``coefficients`` at ``expression`` plus ``detail`` ((nv, nu)
    mm or None), scaled by ``size`` about the model's origin, at a pose,
    drawn with the row's target camera where both have surface."""
    P = S.ground_truth_surface(world, dataclasses.replace(identity, coefficients=coefficients),
                               expression, detail=False)
    if detail is not None:
        P = P + _radial(detail, world.fine_u[None, :])
    Q = camera_from_array(pairs.f["target_camera"][i]).project(
        size * P.reshape(-1, 3) @ rotation.T + translation)
    image, drawn = rasterize(Q, world.fine_faces, Q[:, 2], *r["coarse"].shape)
    offset, scale = pairs.f["target_offset"][i, 0], pairs.f["target_scale"][i, 0]
    return refinement_figures(np.where(r["coarse_mask"] & drawn,
                                       (image[..., 0] - offset) / scale, r["coarse"]), r)


def cross_validated_r2(X: np.ndarray, Y: np.ndarray, folds: int = 5) -> np.ndarray:
    """(columns of Y,) R^2 of least squares Y ~ [1, X], each fold predicted
    by the others."""
    X = np.c_[np.ones(len(X)), X[:, X.std(axis=0) > 1e-9]]
    fold = np.arange(len(X)) % folds
    predicted = np.zeros_like(Y)
    for k in range(folds):
        w = np.linalg.lstsq(X[fold != k], Y[fold != k], rcond=None)[0]
        predicted[fold == k] = X[fold == k] @ w
    return 1.0 - np.square(predicted - Y).sum(0) / np.square(Y - Y.mean(0)).sum(0)


def view_features(camera: np.ndarray) -> np.ndarray:
    """The view direction of a camera array (its rotation's z row, x and y
    components, and the roll), with the direction's second-order terms."""
    a, b, roll = 3.0 * camera[2, 0], 3.0 * camera[2, 1], 3.0 * camera[1, 0]
    return np.array([a, b, roll, a * a, b * b, a * b])


def r2(estimate: np.ndarray, truth: np.ndarray) -> float:
    """1 - SSE / sum of squares about the prior mean 0."""
    return float(1.0 - np.square(estimate - truth).sum() / np.square(truth).sum())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="pair file built from --world")
    p.add_argument("--world", type=Path, required=True, help="the world's folder")
    args = p.parse_args()
    started = time.perf_counter()
    pairs = probes.Pairs(args.data)
    manifest = S.load_world(args.world)
    world, seed = S.build_world(S.settings_of(manifest)), manifest.get("seed", 0)
    records = {r["stem"]: r for r in manifest["scans"]}
    record = [records[sid.split("/")[0]] for sid in pairs.ids]
    train = np.flatnonzero(pairs.split == fmt.TRAIN)
    test = np.flatnonzero(pairs.split == fmt.TEST)

    # 1. the coefficients: the fit's, the landmarks' posterior mean, the truth
    posterior, free = {}, {}
    for r in manifest["scans"]:
        identity = S.draw_identity(world, seed, r["identity_index"])
        plan = S.draw_scan(world, identity, seed, r["shot"])
        noisy = observed_landmarks(world, identity, seed, plan)
        mu, _, _ = landmark_posterior(world, plan, noisy, identity.coefficients, plan.expression)
        posterior[r["stem"]] = (mu, identity, plan)
        free[r["stem"]] = landmark_posterior(world, plan, noisy, identity.coefficients,
                                             plan.expression, free_scale=True)[0]
    photo_rows = [i for i, sid in enumerate(pairs.ids) if sid.endswith("/pose0")]
    fit_parameters = np.array([np.r_[record[i]["fit"]["identity"], record[i]["fit"]["expression"],
                                     pairs.cameras[i].ravel()] for i in photo_rows])
    free_posterior = np.array([free[record[i]["stem"]] for i in photo_rows])
    refit_r2 = {"its pose (yaw, pitch, roll)": cross_validated_r2(fit_parameters,
                                                                  free_posterior[:, :3]),
                "its identity coefficients": cross_validated_r2(fit_parameters,
                                                                free_posterior[:, 6:])}
    true = np.array([r["identity"] for r in manifest["scans"]])
    fit = np.array([r["fit"]["identity"] for r in manifest["scans"]])
    post = np.array([posterior[r["stem"]][0][5:] for r in manifest["scans"]])
    print(f"posteriors of {len(true)} scans ({time.perf_counter() - started:.0f} s)", flush=True)

    # 2. the training bands, binned at the coarse fit's and the true template coordinates
    coarse_uv, coarse_drawn = probes.template_images(pairs, args.world, world.model.mean)
    rows = {i: pairs.row(i) for i in np.r_[train, test]}
    bands = {i: (missing_band(rows[i]), rows[i]["coarse_mask"] & rows[i]["face"]) for i in train}
    true_uv, true_drawn = {}, {}
    for n, i in enumerate(np.r_[train, test]):
        _, identity, plan = posterior[record[i]["stem"]]
        true_uv[i], true_drawn[i] = posed_template(
            world, pairs, i, identity, identity.coefficients, plan.expression, plan.rotation,
            plan.translation)
        if n % 400 == 0:
            print(f"true template coordinates: {n} of {len(train) + len(test)} rows "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    grid = TemplateGrid()
    at_coarse = bin_sums(grid, bands, coarse_uv, coarse_drawn)
    at_true = bin_sums(grid, bands, true_uv, true_drawn)

    log_ratio = np.log(pairs.cameras[:, 3, 0] / pairs.f["target_camera"][()][:, 3, 0])
    one = np.ones(1)
    features = {  # name: (features of row i, trained at the coarse fit's coordinates)
        "the mean band": lambda i: one,
        "the fit's identity coefficients": lambda i: np.r_[one, record[i]["fit"]["identity"]],
        "the fit's identity and expression, and the log scale ratio of the cameras":
            lambda i: np.r_[one, record[i]["fit"]["identity"], record[i]["fit"]["expression"],
                            10.0 * log_ratio[i]],
        "the landmarks' posterior-mean identity coefficients":
            lambda i: np.r_[one, posterior[record[i]["stem"]][0][5:]],
        "the coarse camera's view direction (to second order)":
            lambda i: np.r_[one, view_features(pairs.cameras[i])],
        "the true identity coefficients (oracle)": lambda i: np.r_[one, record[i]["identity"]],
        "the true coefficients 0-2 (oracle)": lambda i: np.r_[one, record[i]["identity"][:3]],
        "the true coefficients 3-16 (oracle)": lambda i: np.r_[one, record[i]["identity"][3:]],
    }
    scores = {}
    for name, z in features.items():
        table = regression_table(*at_coarse, np.stack([z(i) for i in train]))
        scores[name] = [predicted_score(grid, table, z(i), coarse_uv[i], coarse_drawn[i], rows[i])
                        for i in test]
    # the true table applied with the estimates: the linear map from the
    # shape to the band, known exactly, fed each estimate of the shape
    z_true = features["the true identity coefficients (oracle)"]
    table = regression_table(*at_coarse, np.stack([z_true(i) for i in train]))
    for name, z in (("the fit's", features["the fit's identity coefficients"]),
                    ("the posterior-mean",
                     features["the landmarks' posterior-mean identity coefficients"])):
        scores[f"the true coefficients' table, fed {name} coefficients"] = [
            predicted_score(grid, table, z(i), coarse_uv[i], coarse_drawn[i], rows[i])
            for i in test]
    print(f"shape regressions ({time.perf_counter() - started:.0f} s)", flush=True)

    # a re-fit learned from the training scans: their true pose and coefficients
    # regressed on the coarse fit's parameters and the cameras of the photo's view
    scan_row = {record[i]["stem"]: i for i in photo_rows}
    target_cameras = pairs.f["target_camera"][()]

    def refit_features(stem: str) -> np.ndarray:
        i = scan_row[stem]
        return np.r_[record[i]["fit"]["identity"], record[i]["fit"]["expression"],
                     pairs.cameras[i].ravel(), target_cameras[i].ravel()]

    def true_pose_and_coefficients(stem: str) -> np.ndarray:
        _, identity, plan = posterior[stem]
        return np.r_[plan.yaw, plan.pitch, plan.roll, plan.translation[:2], identity.coefficients]

    train_scans = sorted({record[i]["stem"] for i in train} & set(scan_row))
    X = np.array([refit_features(stem) for stem in train_scans])
    varies = X.std(axis=0) > 1e-9
    refit_map = np.linalg.lstsq(np.c_[np.ones(len(X)), X[:, varies]], np.array(
        [true_pose_and_coefficients(stem) for stem in train_scans]), rcond=None)[0]

    # 3. registration: the coarse fit's and the posterior's template coordinates against the truth
    mean_at_true = regression_table(*at_true, np.ones((len(train), 1)))
    errors = {"the coarse fit": {True: [], False: []},
              "the landmarks' posterior mean (shape and pose)": {True: [], False: []}}
    registered = {"exact (oracle)": [], "by the landmarks' posterior mean": []}
    drawn_faces = {name: [] for name in (
        "the coarse input itself",
        "the landmarks' posterior-mean face + the mean detail",
        "the landmarks' posterior-mean face",
        "the landmarks' posterior-mean face, the scanner's mm per pixel unknown (its size "
        "estimated too)",
        "the coarse fit's face (its coefficients and expression)",
        "a learned re-fit of the coarse fit, in its own pose: the face its parameters imply",
        "... + the mean detail",
        "the true face + the mean detail, true pose (oracle)",
        "the true face + its own creases, true pose (oracle)")}
    details = {}
    for i in test:
        mu, identity, plan = posterior[record[i]["stem"]]
        rotation = rotation_from_euler(*mu[:3])
        translation = plan.translation + np.array([mu[3], mu[4], 0.0])
        post_uv, post_drawn = posed_template(world, pairs, i, identity, mu[5:], plan.expression,
                                             rotation, translation)
        face = true_drawn[i] & rows[i]["coarse_mask"] & rows[i]["face"]
        photo_view = pairs.ids[i].endswith("/pose0")
        for name, (uv, drawn) in zip(errors, ((coarse_uv[i], coarse_drawn[i]),
                                              (post_uv, post_drawn))):
            where = face & drawn
            errors[name][photo_view].append(
                np.sqrt(np.square(uv[:, where] - true_uv[i][:, where]).sum(0).mean()))
        registered["exact (oracle)"].append(
            predicted_score(grid, mean_at_true, one, true_uv[i], true_drawn[i], rows[i]))
        registered["by the landmarks' posterior mean"].append(
            predicted_score(grid, mean_at_true, one, post_uv, post_drawn, rows[i]))
        average = mean_detail(world, plan.expression, details)
        own = detail_field(identity.detail, plan.expression, world.fine_u, world.fine_v,
                           NO_PORES)
        fitted = record[i]["fit"]
        unscaled = free[record[i]["stem"]]
        guess = np.r_[1.0, refit_features(record[i]["stem"])[varies]] @ refit_map
        guess_expression = np.clip(fitted["expression"], 0.0, None)
        guess_pose = (rotation_from_euler(*guess[:3]), np.r_[guess[3:5], plan.translation[2]])
        drawn_faces["the coarse input itself"].append(refinement_figures(rows[i]["coarse"],
                                                                          rows[i]))
        for name, (coefficients, expression, detail, R, T, size) in zip(list(drawn_faces)[1:], (
                (mu[5:], plan.expression, average, rotation, translation, 1.0),
                (mu[5:], plan.expression, None, rotation, translation, 1.0),
                (unscaled[6:], plan.expression, None, rotation_from_euler(*unscaled[:3]),
                 plan.translation + np.array([unscaled[3], unscaled[4], 0.0]),
                 np.exp(unscaled[5])),
                (np.asarray(fitted["identity"]), np.asarray(fitted["expression"]), None,
                 rotation, translation, 1.0),
                (guess[5:], guess_expression, None, *guess_pose, 1.0),
                (guess[5:], guess_expression, mean_detail(world, guess_expression, details),
                 *guess_pose, 1.0),
                (identity.coefficients, plan.expression, average, plan.rotation,
                 plan.translation, 1.0),
                (identity.coefficients, plan.expression, own, plan.rotation,
                 plan.translation, 1.0))):
            drawn_faces[name].append(drawn_face_figures(world, pairs, i, rows[i], identity,
                                                        coefficients, expression, detail, R, T,
                                                        size))

    lines = ["# What the coarse fit keeps of its landmarks (built-in world)", "",
             f"`python benchmarks/detail_registration.py --data {args.data.name} --world "
             f"{args.world.name}`: {len(true)} scans, {len(train)} training and {len(test)} "
             f"held-out images at {pairs.f['coarse'].shape[-1]} px (see the script's docstring).",
             "", "## The identity coefficients: R² against the truth, all scans", "",
             "| estimate | " + " | ".join(f"components {g}" for g in SHAPE_GROUPS) + " |",
             "|---|" + "---|" * len(SHAPE_GROUPS)]
    for name, estimate in (("the coarse fit", fit), ("the landmarks' posterior mean", post)):
        lines.append(f"| {name} | " + " | ".join(
            f"{r2(estimate[:, g], true[:, g]):.2f}" for g in SHAPE_GROUPS.values()) + " |")
    lines += ["", "The landmarks' posterior mean without the scanner's mm per pixel, from the "
              "coarse fit's coefficients, expression weights and camera by one linear map "
              f"({len(photo_rows)} scans in the photo's view, 5-fold cross-validated R², "
              "lowest and median over the parameters):", "",
              "| the posterior's | lowest R² | median R² |", "|---|---|---|"]
    lines += [f"| {name} | {v.min():.2f} | {np.median(v):.2f} |" for name, v in refit_r2.items()]
    lines += ["", "## Registration: RMS error (mm) of the held-out pixels' template coordinates",
              "", "| placed by | photo's view (pose 0) | rotated views |", "|---|---|---|"]
    for name, e in errors.items():
        lines.append(f"| {name} | {np.mean(e[True]):.2f} | {np.mean(e[False]):.2f} |")
    lines += ["", "## The missing band predicted in template coordinates: held-out `detail_corr`",
              "", "| the band per 1 mm template bin, regressed on | detail_corr, mean ± s.e. |",
              "|---|---|"]
    lines += [f"| {name} | {mean_se(v)} |" for name, v in scores.items()]
    lines += [f"| the mean band, anatomy placed {name} | {mean_se(v)} |"
              for name, v in registered.items()]
    lines += ["", "## A face of the world's model drawn in the scanner's frame: held-out "
              "figures", "",
              "| the predicted target depth, in the landmarks' posterior-mean pose unless "
              "named | detail_corr, mean ± s.e. | normal error (°) | face MAE (mm; the drawn "
              "faces at the true depth along the view ray: not a fair figure) |",
              "|---|---|---|---|"]
    for name, v in drawn_faces.items():
        v = np.asarray(v)
        lines.append(f"| {name} | {mean_se(v[:, 0])} | {np.nanmean(v[:, 1]):.2f} | "
                     f"{np.nanmean(v[:, 2]):.3f} |")
    lines += ["", f"{time.perf_counter() - started:.0f} s on the machine that ran it."]
    return write_report(lines, ROOT / "benchmarks" / "results" / "detail_registration.md")


if __name__ == "__main__":
    sys.exit(main())
