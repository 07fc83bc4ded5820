"""How much of what ``detail_corr`` scores can any method predict from the
coarse side? A Monte-Carlo ceiling on the built-in world.

``detail_corr`` correlates the refinement's added band with the missing
band d = BP(target - coarse) (1-5 mm difference of Gaussians, over the
face). No method that sees only the coarse images can do better than the
conditional mean E[d | what it sees]. This script estimates that mean by
building the default world again with everything the coarse side depends
on held fixed, and everything else drawn again from its distribution:

- ``--redraw detail``: each identity's person-specific creases, their
  depths and its pores (``geom.synthetic.draw_detail``) are drawn again;
  face shape, expression, pose, sensor noise seeds and landmarks stay.
  This conditions on the true shape: an upper bound that is far too kind.
- ``--redraw posterior`` (default): also the identity coefficients, drawn
  from their posterior given the noisy landmarks of both of the identity's
  scans (the landmarks the world's coarse fit saw; a linear-Gaussian model
  with the world's prior N(0, I) and its landmark noise, the true pose and
  expression held). The coarse fit, the landmark files, and so every coarse
  image, are the same in every copy (checked); the target is one more draw
  of what those coarse images leave open. Holding the true pose and
  expression, and conditioning on both scans, tells a predictor more than a
  coarse image does, so this is still an upper bound.
- ``--redraw scan+noise``: as ``posterior+noise``, with the identity
  coefficients drawn per scan from their posterior given that scan's
  landmarks only (each scan of an identity gets its own draw): what one
  coarse image's fit saw. Still an upper bound: the true pose and
  expression are held.
- ``--redraw pose+scan+noise``: as ``scan+noise``, with the head's pose
  (yaw, pitch, roll and the sideways translation) drawn jointly with the
  identity coefficients from their posterior given that scan's landmarks
  (linearized at the true pose; a flat prior on the pose): a coarse
  image's fit places the face only as well as its landmarks do, and so
  must any predictor. Still an upper bound: the true expression is held.
- ``--redraw landmarks``: as ``pose+scan+noise``, with the expression
  drawn too (neutral or one of the world's expressions at a weight, from
  the world's prior weighed by the landmarks' evidence). Everything the
  landmarks leave open is drawn again; a coarse image is made from those
  landmarks alone, so no method that sees it can beat this ceiling (up to
  the linearization of the pose).
- ``--redraw posterior+noise``: as ``posterior``, and the scanner's noise
  too (``ScanPlan.noise_seed``: sensor noise, spikes, the pixels lost in
  the brows and hair, the photo's noise). With the seeds held, every copy
  holds the same noise and the same filled holes, which no coarse image
  predicts but ``posterior`` counts as shared, i.e. predictable.

With copy 0 the world itself and copies 1..K redrawn, per held-out image
over the face pixels: m = mean_k d_k estimates the predictable part
E[d | fixed], the spread s^2 = sum_k (d_k - m)^2 / K the unpredictable part,
and ceiling = sqrt(var(m) - s^2/(K+1)) / sqrt(that + s^2): the correlation
of the ideal predictor with d. Beside it the evaluation's own
``detail_corr`` and ``normal_error_deg`` of a real predictor: coarse + the
mean of the K redrawn copies' (target - coarse) (each pixel over the copies
that have surface there), scored against copy 0; with K copies it keeps 1/K
of the unpredictable variance, so it falls a little below the ceiling.

    python benchmarks/detail_ceiling.py [--redraw posterior|posterior+noise|scan+noise|
                                                  pose+scan+noise|landmarks|detail]
                                        [--copies 3]
                                        [--out out/ceiling]

About 3.5 minutes per copy on 2 cores (world, build); finished copies are
kept. Writes ``benchmarks/results/detail_ceiling_<redraw>.md`` and ``.png`` (three
held-out images: the world's missing band beside the mean of the copies').
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

SEED = 0  # the default world's


def at_landmarks(world, expression) -> tuple:
    """(the mean face with expression weights ``expression`` (E,) (68, 3),
    the identity fields (K, 68, 3)) at the landmarks' nodes of the fine grid."""
    r, c = world.landmark_fine_rc.T
    mean = world.fine_mean[r, c].astype(np.float64) + np.tensordot(
        expression, world.fine_expression[:, r, c].astype(np.float64), 1)
    fields = np.einsum("jk,jlx->klx", world.mixing,
                       world.fine_identity[:, r, c].astype(np.float64))
    return mean, fields


def observed_landmarks(world, identity, seed: int, plan) -> np.ndarray:
    """(68, 2) scanner pixels: what the world's coarse fit saw of scan
    ``plan``, the rendered landmarks (creases included) plus their noise."""
    from dce.geom import synthetic

    r, c = world.landmark_fine_rc.T
    camera = synthetic.scanner_camera(world.settings)
    exact = synthetic.ground_truth_surface(world, identity, plan.expression)[r, c]
    exact = camera.project(exact @ plan.rotation.T + plan.translation)[:, :2]
    return exact + synthetic._rng(seed, 3, identity.index, plan.shot).normal(
        0.0, world.settings.landmark_noise_px, (68, 2))


def coefficient_posterior(world, identity, seed: int, shots) -> tuple:
    """(mean (K,), covariance (K, K)) of the identity coefficients given the
    noisy landmarks of ``identity``'s scans ``shots`` (the world's own, as its
    coarse fit saw them; true pose and expression held). Landmarks are linear
    in the coefficients (orthographic camera); the creases' small shift of
    them counts as noise."""
    from dce.geom import synthetic

    sigma2 = world.settings.landmark_noise_px ** 2
    camera = synthetic.scanner_camera(world.settings)
    precision = np.eye(len(identity.coefficients))
    rhs = np.zeros(len(identity.coefficients))
    for shot in shots:
        plan = synthetic.draw_scan(world, identity, seed, shot)
        mean, base_fields = at_landmarks(world, plan.expression)

        def pixels(X):
            return camera.project(X @ plan.rotation.T + plan.translation)[:, :2]

        x0 = pixels(mean)
        A = np.stack([(pixels(mean + B) - x0).ravel() for B in base_fields], axis=1)
        noisy = observed_landmarks(world, identity, seed, plan)
        precision += A.T @ A / sigma2
        rhs += A.T @ (noisy - x0).ravel() / sigma2
    cov = np.linalg.inv(precision)
    return cov @ rhs, cov


def posterior_coefficients(world, identity, seed: int, copy: int, shot: int = 0) -> np.ndarray:
    """A draw of the identity coefficients from their posterior given the
    landmarks of every scan of ``identity``, or of scan ``shot`` only when
    it is not 0 (:func:`coefficient_posterior`)."""
    shots = (shot,) if shot else range(1, 2 + EXPRESSIONS_PER_IDENTITY)
    mu, cov = coefficient_posterior(world, identity, seed, shots)
    key = (identity.index, shot) if shot else (identity.index,)
    rng = np.random.default_rng(np.random.SeedSequence(20_000 + copy, spawn_key=key))
    return mu + np.linalg.cholesky(cov) @ rng.standard_normal(len(mu))


# Finite-difference steps of the pose: degrees (yaw, pitch, roll), then mm (x, y).
POSE_STEPS = np.array([1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
# The world's expression weight, uniform on [0.6, 1] (draw_scan), on a grid.
EXPRESSION_WEIGHTS = np.linspace(0.6, 1.0, 9)


def landmark_posterior(world, plan, noisy: np.ndarray, coefficients, expression,
                       free_scale: bool = False) -> tuple:
    """(mean, covariance, log evidence) of theta = (yaw, pitch, roll degrees,
    x, y mm, identity coefficients (K,)) given the landmarks ``noisy`` (68,
    2) of the scan ``plan`` shows (true coefficients ``coefficients``), were
    the face's expression weights ``expression`` (E,): the landmarks
    linearized at the true pose (they are linear in the coefficients), a
    flat prior on the pose, N(0, I) on the coefficients. The log evidence is
    up to a constant that all expressions share. The translation along the
    view ray does not move an orthographic landmark and is not a parameter.
    ``free_scale``: the scanner's mm per pixel unknown, as to a fit with a
    free camera scale: theta gains the face's log size (flat prior) after
    the translation, the face scaled about the model's origin."""
    from dce.geom import synthetic
    from dce.geom.projection import rotation_from_euler

    camera = synthetic.scanner_camera(world.settings)
    mean, base_fields = at_landmarks(world, expression)
    K, n_pose = len(coefficients), 6 if free_scale else 5

    def pixels(theta):
        R = rotation_from_euler(*theta[:3])
        T = plan.translation + np.array([theta[3], theta[4], 0.0])
        X = mean + np.tensordot(theta[n_pose:], base_fields, 1)
        if free_scale:
            X = X * np.exp(theta[5])
        return camera.project(X @ R.T + T)[:, :2].ravel()

    theta0 = np.concatenate([[plan.yaw, plan.pitch, plan.roll, 0.0, 0.0],
                             np.zeros(n_pose - 5), coefficients])
    x0 = pixels(theta0)
    # the coefficients enter linearly; the pose (and the size) by finite differences
    steps = np.concatenate([POSE_STEPS, np.full(n_pose - 5, 1e-3), np.ones(K)])
    J = np.stack([(pixels(theta0 + h * e) - x0) / h for h, e in zip(steps, np.eye(n_pose + K))],
                 1)
    sigma2 = world.settings.landmark_noise_px ** 2
    y = noisy.ravel() - (x0 - J @ theta0)  # y = J theta + noise, linearized
    precision = J.T @ J / sigma2 + np.diag(np.concatenate([np.zeros(n_pose), np.ones(K)]))
    h = J.T @ y / sigma2
    cov = np.linalg.inv(precision)
    mu = cov @ h
    log_evidence = -0.5 * (y @ y / sigma2 - h @ mu + np.linalg.slogdet(precision)[1])
    return mu, cov, log_evidence


def landmark_draw(world, identity, seed: int, copy: int, shot: int,
                  open_expression: bool) -> tuple:
    """(ScanPlan, identity coefficients): scan ``shot`` of ``identity`` with
    its pose and coefficients drawn from :func:`landmark_posterior`, and with
    ``open_expression`` its expression too: neutral with prior 1/2, each of
    the E expressions with 1/(2E) at a weight on EXPRESSION_WEIGHTS (the
    world's prior), weighed by the landmarks' evidence."""
    from dce.geom import synthetic

    plan = synthetic.draw_scan(world, identity, seed, shot)
    noisy = observed_landmarks(world, identity, seed, plan)
    rng = np.random.default_rng(np.random.SeedSequence(40_000 + copy,
                                                       spawn_key=(identity.index, shot)))
    expression, name = plan.expression, plan.expression_name
    if open_expression:
        E = len(plan.expression)
        names = ["neutral"] + [n for n in synthetic.EXPRESSION_NAMES
                               for _ in EXPRESSION_WEIGHTS]
        options = [np.zeros(E)] + [w * np.eye(E)[k] for k in range(E)
                                   for w in EXPRESSION_WEIGHTS]
        log_prior = np.log([0.5] + [0.5 / (E * len(EXPRESSION_WEIGHTS))] * (len(options) - 1))
        log_post = log_prior + np.array([
            landmark_posterior(world, plan, noisy, identity.coefficients, w)[2] for w in options])
        p = np.exp(log_post - log_post.max())
        pick = int(rng.choice(len(options), p=p / p.sum()))
        expression, name = options[pick], names[pick]
    mu, cov, _ = landmark_posterior(world, plan, noisy, identity.coefficients, expression)
    theta = mu + np.linalg.cholesky(cov) @ rng.standard_normal(len(mu))
    plan = dataclasses.replace(
        plan, yaw=float(theta[0]), pitch=float(theta[1]), roll=float(theta[2]),
        translation=plan.translation + np.array([theta[3], theta[4], 0.0]),
        expression=expression, expression_name=name)
    return plan, theta[5:]


EXPRESSIONS_PER_IDENTITY = 1  # generate_world's default: scans 1 (neutral) and 2


def build_copy(out: Path, copy: int, redraw: str) -> Path:
    """World and pair file of one copy (0: the world itself); kept when built."""
    from dce.cli.build import main as build
    from dce.geom import synthetic

    world, data = out / f"world_{copy}", out / f"pairs_{copy}.h5"
    if data.exists():
        return data
    draw, render = synthetic.draw_identity, synthetic.render_scan

    def redrawn(world_, seed, index):
        own = draw(world_, seed, index)
        rng = np.random.default_rng(np.random.SeedSequence(10_000 + copy, spawn_key=(index,)))
        identity = dataclasses.replace(own, detail=synthetic.draw_detail(rng))
        if redraw.startswith("posterior"):  # scan+noise: per scan, in same_landmarks
            identity = dataclasses.replace(
                identity, coefficients=posterior_coefficients(world_, own, seed, copy))
        return identity

    def same_landmarks(world_, identity, plan):
        # The landmark files and the world's coarse fit must not move: keep
        # the landmarks of the world's own identity, so that only the
        # surface differs (and every coarse image stays the same).
        world_identity = draw(world_, SEED, identity.index)
        own = render(world_, world_identity, plan)
        if redraw == "scan+noise":
            identity = dataclasses.replace(identity, coefficients=posterior_coefficients(
                world_, world_identity, SEED, copy, plan.shot))
        if redraw in ("pose+scan+noise", "landmarks"):
            plan, coefficients = landmark_draw(world_, world_identity, SEED, copy, plan.shot,
                                               open_expression=redraw == "landmarks")
            identity = dataclasses.replace(identity, coefficients=coefficients)
        if redraw.endswith("+noise") or redraw == "landmarks":
            rng = np.random.default_rng(np.random.SeedSequence(
                30_000 + copy, spawn_key=(identity.index, plan.shot)))
            plan = dataclasses.replace(plan, noise_seed=int(rng.integers(2 ** 31)))
        scan = render(world_, identity, plan)
        return dataclasses.replace(scan, landmarks_3d=own.landmarks_3d,
                                   landmarks_2d=own.landmarks_2d)

    if copy:
        synthetic.draw_identity, synthetic.render_scan = redrawn, same_landmarks
    try:
        # In this process (workers=1): spawned workers would not see the redraw.
        synthetic.generate_world(world, seed=SEED, workers=1,
                                 expressions_per_identity=EXPRESSIONS_PER_IDENTITY)
    finally:
        synthetic.draw_identity, synthetic.render_scan = draw, render
    # A redrawn face can put a jaw landmark a little beyond its scan's edge:
    # a wider max_gap keeps every pair (it refuses, never changes, a sample),
    # so the identity split and the held-out samples stay those of copy 0.
    if build(["synthetic", "--world", str(world), "-o", str(data), "--seed", str(SEED),
              "--max-gap", "10"]) != 0:
        sys.exit(f"dce-build failed for copy {copy}")
    return data


def held_out(path: Path):
    """(coarse, target, face, pixel mm, depth mm per unit, sample ids) of the
    held-out split, depth channel, in file order."""
    import h5py

    from dce.gan.data import PairDataset
    from dce.gan.detail import pixel_sizes

    data = PairDataset(path, "test", ("depth",), ("depth",), augment=False)
    items = data.fetch(list(range(len(data))))
    coarse = torch.stack([it["coarse"] for it in items])[:, 0].double()
    target = torch.stack([it["target"] for it in items])[:, 0].double()
    face = torch.stack([it["target_mask"] for it in items])[:, 0] > 0
    mm = torch.stack([it["target_scale"][0] for it in items]).abs()
    px = torch.from_numpy(pixel_sizes(path, data.indices))
    with h5py.File(path, "r") as f:
        ids = [str(f["sample_id"][i]) for i in data.indices]
    return coarse, target, face, px, mm, ids


PICTURED = (0, 85, 170)  # held-out images of three identities (12 images each)


def write_picture(path: Path, d: torch.Tensor, valid: torch.Tensor, mm: torch.Tensor,
                  vmax_mm: float = 0.5) -> None:
    """One row per pictured image: the world's missing band BP(target -
    coarse) beside the mean of the redrawn copies' bands (the part the
    landmarks fix, as far as K copies tell), red a crease and blue a ridge,
    +-vmax_mm, as dce-eval's detail pictures."""
    from PIL import Image

    from dce.gan.evaluate import signed_color

    rows = []
    for i in PICTURED:
        shown = valid[i].numpy()
        world, copies = (float(mm[i]) * x for x in (d[0, i].numpy(), d[1:, i].mean(0).numpy()))
        rows.append(np.hstack([signed_color(world, vmax_mm, shown),
                               np.zeros((shown.shape[0], 8, 3), np.uint8),
                               signed_color(copies, vmax_mm, shown)]))
    Image.fromarray(np.vstack(rows)).save(path)


def mean_se(x: torch.Tensor) -> tuple:
    x = x[torch.isfinite(x)].numpy()
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


def main():
    from dce.gan.h5format import FOREGROUND_ABOVE
    from dce.gan.metrics import DETAIL_BAND_MM, band_pass, detail_corr, normal_error_deg

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--redraw", choices=["posterior", "posterior+noise", "scan+noise", "pose+scan+noise",
                            "landmarks", "detail"],
                   default="posterior",
                   help="what the copies draw again (default: posterior)")
    p.add_argument("--copies", type=int, default=3,
                   help="K, the redrawn copies besides the world itself (default: 3)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "ceiling",
                   help="working folder; copy 0 is shared by both modes (default: out/ceiling)")
    args = p.parse_args()
    if args.copies < 1:
        p.error("--copies must be >= 1")
    folder = args.out / args.redraw
    folder.mkdir(parents=True, exist_ok=True)
    paths = [build_copy(args.out, 0, args.redraw)] + [
        build_copy(folder, k, args.redraw) for k in range(1, args.copies + 1)]

    copies = [held_out(path) for path in paths]
    coarse, target0, face0, px, mm, ids = copies[0]
    for k, (c, _, _, _, _, other_ids) in enumerate(copies[1:], 1):
        if other_ids != ids:
            sys.exit(f"copy {k} holds other held-out samples than copy 0")
        difference = float((c - coarse).abs().max())
        print(f"copy {k}: largest coarse difference {difference:.2e}")
        if difference > 1e-4:
            sys.exit("the coarse images differ between copies: the ceiling would not hold")
    K = args.copies
    targets = torch.stack([t for _, t, _, _, _, _ in copies])
    faces = torch.stack([f for _, _, f, _, _, _ in copies])
    valid = faces.all(dim=0) & (coarse >= FOREGROUND_ABOVE)
    lo, hi = DETAIL_BAND_MM[0] / px, DETAIL_BAND_MM[1] / px
    d = torch.stack([band_pass(t - coarse, valid, lo, hi) for t in targets])
    w = valid.double()
    n_px = w.sum(dim=(1, 2))
    m = d.mean(dim=0)
    within = (((d - m) ** 2) * w).sum(dim=(0, 2, 3)) / (K * n_px)
    m_centred = (m - (m * w).sum(dim=(1, 2), keepdim=True) / n_px[:, None, None]) * w
    shared = ((m_centred ** 2).sum(dim=(1, 2)) / n_px - within / (K + 1)).clamp(min=0)
    ceiling = torch.sqrt(shared / (shared + within))

    def mean_of_others(j: int):
        """A real predictor: coarse + the mean added depth of every copy but
        ``j``, where they have surface."""
        others = [k for k in range(K + 1) if k != j]
        have = faces[others].double()
        added = ((targets[others] - coarse) * have).sum(dim=0) / have.sum(dim=0).clamp(min=1)
        return torch.where(have.sum(dim=0) > 0, coarse + added, coarse)

    predictor = mean_of_others(0)
    oracle_corr = detail_corr(predictor, coarse, target0, face0, px)
    # The ceiling assumes the world is one more draw like its copies: then
    # the predictor scores alike against any copy j from the others' mean.
    exchange = [mean_se(detail_corr(mean_of_others(j), coarse, targets[j], faces[j], px))[0]
                for j in range(1, K + 1)]
    oracle_normal = normal_error_deg(predictor, target0, mm, px, face0)
    coarse_normal = normal_error_deg(coarse, target0, mm, px, face0)
    band_rms = torch.sqrt((d[0] ** 2 * w).sum((1, 2)) / n_px) * mm

    n_coarse, n_oracle = mean_se(coarse_normal)[0], mean_se(oracle_normal)[0]
    rows = [
        ("held-out images", f"{len(ids)}"),
        ("copies (the world + redrawn)", f"1 + {K}"),
        ("missing band d = BP(target - coarse), RMS (mm)", f"{float(band_rms.mean()):.3f}"),
        ("its part fixed by what is held, RMS (mm)",
         f"{float((torch.sqrt(shared) * mm).mean()):.3f}"),
        ("its part left open, RMS (mm)", f"{float((torch.sqrt(within) * mm).mean()):.3f}"),
        ("**ceiling of detail_corr**, mean ± s.e.", "{:.3f} ± {:.3f}".format(*mean_se(ceiling))),
        (f"predictor coarse + mean of {K} copies: detail_corr",
         "{:.3f} ± {:.3f}".format(*mean_se(oracle_corr))),
        (f"the same predictor against each redrawn copy in turn (the mean of the {K} others)",
         ", ".join(f"{c:.3f}" for c in exchange)),
        ("coarse normal error (°)", f"{n_coarse:.2f}"),
        (f"predictor coarse + mean of {K} copies: normal error (°)",
         f"{n_oracle:.2f} ({n_oracle / n_coarse:.2f}x coarse)"),
    ]
    table = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    picture = ROOT / "benchmarks" / "results" / f"detail_ceiling_{args.redraw}.png"
    write_picture(picture, d, valid, mm)
    out = ROOT / "benchmarks" / "results" / f"detail_ceiling_{args.redraw}.md"
    out.write_text(f"# Ceiling of detail_corr: copies with the {args.redraw} drawn again\n\n"
                   f"`python benchmarks/detail_ceiling.py --redraw {args.redraw} --copies {K}` "
                   f"(default world, 256 px, held-out identities; see the script's "
                   f"docstring).\n\n{table}\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
