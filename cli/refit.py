"""dce-refit: re-fit a pair file's coarse faces with a map learned from its
training pairs, and write them as a second pair file.

A coarse fit to 68 landmarks gets the face's broad shape and pose a little
wrong; most of what the coarse image lacks in the 1-5 mm band is that
error (docs/refit.md). dce-refit fits the morphable model densely to each
training pair's target in the photo's view, learns one linear map from the
coarse fit's parameters and camera to that dense fit, and draws every
pair's re-fit face (held-out pairs included: the map needs no target) with
each image's coarse camera, as dce-build draws a coarse mesh. OUT holds the
same samples, targets, cameras and split as PAIRS, the re-fit faces as
their coarse images; OUT.map.npz holds the map (reused when run again on
the same file).

  dce-refit PAIRS.h5 -o refit.h5            # the model named in PAIRS (or --model)
  dce-eval PAIRS.h5 run/last.pt --refit refit.h5

The coarse meshes PAIRS was built from must exist (their paths are in its
provenance) and be faces of the model (a synthetic world's coarse/*.ply and
world_model.npz, or a --coarse-dir of fits of --model).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dce.cli.options import HelpFormatter, integer, number
    from dce.geom.refit_pairs import RefitSettings

    defaults = RefitSettings()
    p = argparse.ArgumentParser(prog="dce-refit", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("pairs", type=Path, help="DCE pair file from dce-build")
    p.add_argument("--model", type=Path, default=None,
                   help="the morphable model the coarse meshes are faces of (a .npz, .h5 or "
                        ".mat model dce-build reads; default: the one PAIRS's provenance names, "
                        "e.g. a synthetic world's world_model.npz)")
    p.add_argument("-o", "--out", type=Path, default=Path("refit.h5"),
                   help="the re-fit pair file to write; its map goes beside it, named as OUT "
                        "with .map.npz for .h5")
    p.add_argument("--iterations", type=integer(1), default=defaults.iterations,
                   help="Gauss-Newton steps of each training pair's dense fit")
    p.add_argument("--ridge", type=number(0.0), default=defaults.ridge,
                   help="ridge penalty of the map, per training pair, on standardized features")
    p.add_argument("--workers", type=integer(1), default=defaults.workers,
                   help="processes for the dense fits")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from dce.cli.options import OutputError, check_output, is_pair_file
    from dce.gan.h5format import PairFileError
    from dce.geom.records import FormatError
    from dce.geom.refit_pairs import RefitSettings, refit_pairs

    try:
        check_output(args.out, [args.pairs, args.model], replaceable=is_pair_file,
                     what="re-fit pair file")
        settings = RefitSettings(args.iterations, args.ridge, args.workers)
        report = refit_pairs(args.pairs, args.model, args.out, settings=settings)
    except (OutputError, PairFileError, FormatError, ValueError, OSError) as error:
        print(f"dce-refit: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dce-refit: interrupted; the images drawn so far are kept: rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    print(f"dce-refit: {report.images} images of {report.pairs} pairs re-fitted -> "
          f"{report.out} (map {report.map_path}, learned from {report.refit_map.pairs} training "
          f"pairs, dense fits {report.refit_map.fit_rms_mm:.3f} mm RMS; {report.seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
