"""dce-build: aligned coarse/ground-truth DCE image pairs in HDF5.

Sources (sub-commands): the built-in synthetic world, an FRGC v2 directory,
a Bosphorus directory, or a CSV/JSON manifest of arbitrary pairs. Each pair
goes through the paper's pipeline (median filter, crop, curvature, normals,
cameras from the photo landmarks) once, then is rendered in its photo's view
and in --poses random poses. Samples are written to one HDF5 file (layout:
dce.gan.h5format). Builds are resumable (rerun the same command), can be
split with --shard K/N and joined with `dce-build merge`, and a bad input is
reported and skipped. `dce-build inspect FILE` prints what a file holds.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from dce.cli.options import (
    SEED_MAX,
    HelpFormatter,
    OutputError,
    check_disk,
    check_output,
    integer,
    is_pair_file,
    number,
)
from dce.gan.h5format import DEFAULT_TEST_FRACTION
from dce.geom.dataset import BuildConfig
from dce.geom.morphable import EXPRESSION_STIFFNESS, LANDMARK_NOISE, FitGate

BUILD = BuildConfig()  # the defaults of every build option
GATE = FitGate()
MAX_SIZE = 2048         # px: a 2048^2 sample is 100 MB in memory per side already
MAX_POSES = 100
MAX_IDENTITIES = 100_000
MAX_WORKERS = 256
SCAN_BYTES = 2_000_000  # a world scan's files (range, photo, landmarks, coarse mesh)

_positive_float = number(0.0, low_open=True)
_nonnegative_float = number(0.0)
_positive_int = integer(1)
_count = integer(0)
_seed = integer(0, SEED_MAX)
_fraction = number(0.0, high=1.0, high_open=True)


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("build options")
    g.add_argument("-o", "--out", type=Path, default=Path("dce_pairs.h5"),
                   help="output HDF5 file")
    g.add_argument("--size", type=integer(16, MAX_SIZE), default=BUILD.size,
                   help=f"image side in pixels, 16 .. {MAX_SIZE}")
    g.add_argument("--channels", default=BUILD.channels, choices=["D", "DCE", "DCE+RGB"],
                   help="channels rendered for both sides")
    g.add_argument("--poses", type=integer(0, MAX_POSES), default=BUILD.poses,
                   help=f"extra random poses per pair: yaw +-{BUILD.max_yaw:g}, pitch "
                        f"+-{BUILD.max_pitch:g}, roll +-{BUILD.max_roll:g} degrees, "
                        f"0 .. {MAX_POSES}, as in the paper")
    g.add_argument("--seed", type=_seed, default=BUILD.seed,
                   help="seed of the poses and the identity split, 0 .. 2^32 - 1")
    g.add_argument("--test-fraction", type=_fraction, default=DEFAULT_TEST_FRACTION,
                   help="fraction of identities in the test split, 0 <= F < 1")
    g.add_argument("--curvature", default=BUILD.curvature, choices=["mean", "absolute"],
                   help="curvature channel: mean curvature (paper) or the authors' demo "
                        "|k1|+|k2|")
    g.add_argument("--workers", type=integer(1, MAX_WORKERS), default=os.cpu_count(),
                   help=f"worker processes, 1 .. {MAX_WORKERS}; one per core")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="build only shard K of N (1-based), for cluster array jobs; "
                        "join the shard files with `dce-build merge`")
    g.add_argument("--preview", type=integer(0, 1000), default=0, metavar="K",
                   help="write a PNG grid of K random pairs next to the output")
    g.add_argument("--model", type=Path, default=None,
                   help="morphable model (.npz, ICT .npz, BFM .h5) to fit the coarse side "
                        "from the landmarks")
    g.add_argument("--coarse-dir", type=Path, default=None,
                   help="folder of coarse meshes made elsewhere, matched by name")
    g.add_argument("--landmark-weights", type=Path, default=None, metavar="DIR",
                   help="face-alignment weights, for photos without landmark files")
    g.add_argument("--max-gap", type=_positive_float, default=BUILD.max_gap, metavar="STEPS",
                   help="how far (scan grid steps) a photo landmark may lie from the scan's "
                        "valid points before the pair is refused; raise it for tight crops "
                        "that put jaw points at the scan's edge")
    g.add_argument("--photo-size", type=_positive_int, nargs=2, default=None,
                   metavar=("H", "W"),
                   help="height and width of the photos the 2D landmarks refer to, for "
                        "scans whose photo is missing (default: read from the photo)")
    f = p.add_argument_group("coarse fit (with --model)")
    f.add_argument("--n-identity", type=_count, default=None, metavar="K",
                   help="identity modes fitted (default: all)")
    f.add_argument("--n-expression", type=_count, default=None, metavar="E",
                   help="expression modes fitted, 0 for none (default: all)")
    f.add_argument("--landmark-noise", type=_nonnegative_float, default=LANDMARK_NOISE,
                   metavar="F",
                   help="the landmarks' error as a fraction of the outer-eye distance; sets "
                        "the fit's prior whatever the photo's resolution, 0 = unregularized")
    f.add_argument("--expression-stiffness", type=_nonnegative_float,
                   default=EXPRESSION_STIFFNESS, metavar="X",
                   help="the expression weights' prior over the identity's")
    f.add_argument("--contour", choices=["fixed", "sliding"], default="fixed",
                   help="jaw landmarks: fixed model vertices, or sliding along the model's "
                        "silhouette (for detected landmarks on turned faces)")
    f.add_argument("--fit-gate", choices=["skip", "flag", "off"], default="skip",
                   help="a pair whose fit fails the quality gate is skipped (reported with "
                        "its reasons), kept and flagged in its provenance and the report, or "
                        "not checked")
    f.add_argument("--gate-residual", type=_positive_float, default=GATE.max_residual,
                   metavar="F",
                   help="gate: largest RMS landmark residual, as a fraction of the fitted "
                        "outer-eye distance")
    f.add_argument("--gate-coefficient", type=_positive_float, default=GATE.max_coefficient,
                   metavar="SIGMA",
                   help="gate: largest |identity coefficient| in standard deviations")
    f.add_argument("--gate-eye-mm", type=_positive_float, nargs=2,
                   default=list(GATE.eye_distance_mm), metavar=("LO", "HI"),
                   help="gate: plausible fitted outer-eye distance in mm")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dce-build", description=__doc__,
                                formatter_class=HelpFormatter)
    # Sub-commands do not inherit the formatter: give it to every one at once.
    sub = p.add_subparsers(dest="command", required=True, parser_class=functools.partial(
        argparse.ArgumentParser, formatter_class=HelpFormatter))
    s = sub.add_parser("synthetic", help="the built-in synthetic world")
    s.add_argument("--world", type=Path, default=Path("dce_world"),
                   help="world folder; generated there if missing")
    s.add_argument("--identities", type=integer(1, MAX_IDENTITIES), default=60,
                   help="identities when generating the world, 1 .. "
                        f"{MAX_IDENTITIES} (about 4 MB of files each)")
    _common(s)
    for name, what in (("frgc", "an FRGC v2 folder (.abs/.abs.gz, .ppm, landmarks)"),
                       ("bosphorus", "a Bosphorus folder (.bnt, .png, .lm2/.lm3, landmarks)")):
        s = sub.add_parser(name, help=what)
        s.add_argument("root", type=Path, help="the folder, searched recursively")
        s.add_argument("--landmarks-dir", type=Path, default=None,
                       help="folder of <stem>.pts landmark files (default: beside the scans)")
        _common(s)
    s = sub.add_parser("manifest", help="a CSV or JSON list of pairs")
    s.add_argument("manifest", type=Path, help="columns: target, coarse, landmarks, photo, "
                                               "subject, id")
    _common(s)
    s = sub.add_parser("merge", help="join shard files into one")
    s.add_argument("out", type=Path, help="merged output file")
    s.add_argument("shards", type=Path, nargs="+", help="shard files")
    s.add_argument("--seed", type=_seed, default=BUILD.seed,
                   help="seed of the identity split")
    s.add_argument("--test-fraction", type=_fraction, default=DEFAULT_TEST_FRACTION,
                   help="fraction of identities in the test split, 0 <= F < 1")
    s = sub.add_parser("inspect", help="print what a DCE pair file holds, after reading every "
                                       "chunk of it back")
    s.add_argument("file", type=Path, help="DCE pair file")
    s.add_argument("--no-verify", action="store_true",
                   help="print the summary without reading every chunk (faster on large files)")
    s = sub.add_parser("preview", help="PNG grid of random pairs of a file")
    s.add_argument("file", type=Path, help="DCE pair file")
    s.add_argument("-k", type=integer(1, 1000), default=8, help="pairs shown")
    s.add_argument("-o", "--out", type=Path, default=None, help="PNG (default: FILE.png)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random choice of pairs")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def ensure_world(world: Path, identities: int, seed: int, workers: int) -> None:
    """Generate the synthetic world of ``identities`` in ``world`` unless it
    is there, after checking that the disk can hold it."""
    if not (world / "world.json").is_file():
        from dce.geom.synthetic import generate_world

        check_disk(world, 2 * identities * SCAN_BYTES, "the synthetic world")
        print(f"generating the synthetic world ({identities} identities) in {world}")
        generate_world(world, identities=identities, seed=seed, workers=workers)


def print_report(report) -> None:
    """What a finished build (a ``dce.geom.build.BuildReport``) did: the
    summary line and the time per stage on stdout, the failed and flagged
    pairs on stderr."""
    summary = report.summary
    print(f"done: {report.written} new samples, {summary['n_samples']} in the file "
          f"({summary['n_train']} train / {summary['n_test']} test), "
          f"{len(report.failures)} pair(s) failed, {len(report.flagged)} flagged, "
          f"{report.seconds:.1f} s -> {report.out}")
    if report.stage_seconds:
        total = sum(report.stage_seconds.values())
        print("time per stage (summed over workers): " + ", ".join(
            f"{k} {v:.1f} s ({100 * v / total:.0f} %)" for k, v in report.stage_seconds.items()))
    for pair_id, reason in report.failures:
        print(f"FAILED {pair_id}: {reason}", file=sys.stderr)
    for pair_id, reason in report.flagged:
        print(f"FLAGGED {pair_id} (kept): the coarse fit fails the gate: {reason}",
              file=sys.stderr)


def enumerate_pairs(args):
    """(specs, coarse source) for the chosen input."""
    from dce.geom import sources

    coarse = sources.CoarseSource(
        model_path=args.model, coarse_dir=args.coarse_dir, n_identity=args.n_identity,
        n_expression=args.n_expression, landmark_noise=args.landmark_noise,
        expression_stiffness=args.expression_stiffness, contour=args.contour,
        gate=None if args.fit_gate == "off" else FitGate(
            args.gate_residual, args.gate_coefficient, tuple(args.gate_eye_mm)),
        on_gate_failure="flag" if args.fit_gate == "flag" else "skip")
    if args.command == "synthetic":
        ensure_world(args.world, args.identities, args.seed, args.workers)
        return sources.synthetic_world(args.world), coarse
    if args.command == "frgc":
        return sources.frgc_directory(args.root, landmarks_dir=args.landmarks_dir,
                                      landmark_weights=args.landmark_weights), coarse
    if args.command == "bosphorus":
        return sources.bosphorus_directory(args.root, landmarks_dir=args.landmarks_dir,
                                           landmark_weights=args.landmark_weights), coarse
    return sources.manifest(args.manifest), coarse


def _build_inputs(args) -> list:
    """The files and folders a build reads, which its output must not be."""
    if args.command == "synthetic":
        return [args.world, args.world / "world.json", args.world / "world_model.npz"]
    if args.command == "manifest":
        return [args.manifest]
    return [args.root, args.landmarks_dir]


def run_build(args) -> int:
    from dce.geom import store
    from dce.geom.build import BuildInterrupted, build, shard_path

    try:
        shard = store.parse_shard(args.shard) if args.shard else None
        out = shard_path(args.out, shard)
        check_output(out, _build_inputs(args), replaceable=is_pair_file)
        if args.command == "synthetic":
            for part in ("scans", "coarse"):
                if out.resolve().is_relative_to((args.world / part).resolve()):
                    raise OutputError(f"output {out} is inside the world's {part} folder; "
                                      f"refusing to write among its inputs")
        config = BuildConfig(size=args.size, channels=args.channels, poses=args.poses,
                             seed=args.seed, curvature=args.curvature, max_gap=args.max_gap,
                             photo_size=args.photo_size)
        specs, coarse = enumerate_pairs(args)
    except (ValueError, OSError) as error:
        print(f"dce-build: {error}", file=sys.stderr)
        return 2
    try:
        report = build(specs, args.out, config, coarse, command=args.command,
                       workers=args.workers, shard=shard, test_fraction=args.test_fraction)
    except BuildInterrupted as error:
        print(f"\n{error}", file=sys.stderr)
        return 130
    except store.EmptyBuildError as error:
        for pair_id, reason in error.failures:
            print(f"FAILED {pair_id}: {reason}", file=sys.stderr)
        print(f"dce-build: {error} ({len(error.failures)} pair(s) failed)", file=sys.stderr)
        return 1
    if report.up_to_date:
        print(f"dce-build: {out} is already built with this configuration; nothing to do")
        return 0
    print_report(report)
    if args.preview and shard is None:
        png = store.preview_pairs(out, args.preview, out.with_suffix(".png"), seed=args.seed)
        print(f"preview: {png}")
    return 1 if report.failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command in ("inspect", "preview", "merge"):
        try:
            return _file_command(args)
        except (ValueError, OSError) as error:  # PairFileError is a ValueError
            print(f"dce-build: {error}", file=sys.stderr)
            return 2
    return run_build(args)


def _file_command(args) -> int:
    """dce-build inspect / preview / merge."""
    from dce.gan.h5format import describe, verify
    from dce.geom import store

    if args.command == "inspect":
        if not args.no_verify:
            chunks = verify(args.file, require_complete=False)["chunks_read"]
        print(describe(args.file))
        if not args.no_verify:
            print(f"verified: all {chunks} chunks read back, every target mask holds a face")
    elif args.command == "preview":
        out = check_output(args.out or args.file.with_suffix(".png"), [args.file],
                           replaceable=lambda p: p.suffix.lower() == ".png")
        print(store.preview_pairs(args.file, args.k, out, seed=args.seed))
    else:
        check_output(args.out, args.shards, replaceable=is_pair_file)
        store.merge_shards(args.shards, args.out, seed=args.seed, test_fraction=args.test_fraction)
        print(f"merged {len(args.shards)} shards -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
