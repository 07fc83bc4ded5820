"""dce-landmarks: detect the 68 iBUG landmarks on photos with face-alignment
(FAN, Bulat & Tzimiropoulos 2017) and write them as .pts files.

Weights are never downloaded: point --landmark-weights (or the environment
variable DCE_FACE_ALIGNMENT_WEIGHTS) at a folder holding
2DFAN4-11f355bf06.pth.tar and, unless every image gets --box,
s3fd-619a316812.pth; without either, torch's hub cache is searched.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dce.cli.options import HelpFormatter

    p = argparse.ArgumentParser(prog="dce-landmarks", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("images", nargs="+", type=Path, help="photos (.png, .jpg, .ppm, ...)")
    p.add_argument("--landmark-weights", type=Path, default=None, metavar="DIR",
                   help="folder with the face-alignment weight files (default: "
                        "$DCE_FACE_ALIGNMENT_WEIGHTS, then torch's hub cache)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the .pts files (default: beside each image)")
    p.add_argument("--box", type=float, nargs=4, default=None, metavar=("X1", "Y1", "X2", "Y2"),
                   help="face box in pixels for every image; skips the face detector")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.cli.options import OutputError, check_output
    from dce.geom.io import Landmarks, write_landmarks
    from dce.geom.landmarks import MissingWeightsError, NoFaceError, detect_landmarks

    failures = 0
    for image in args.images:
        target = (args.out or image.parent) / f"{image.stem}.pts"
        try:
            check_output(target, args.images, replaceable=lambda p: p.suffix == ".pts")
            points = detect_landmarks(image, args.landmark_weights, args.device, args.box)
        except MissingWeightsError as error:
            print(f"dce-landmarks: {error}", file=sys.stderr)
            return 2
        except OutputError as error:
            print(f"dce-landmarks: {error}", file=sys.stderr)
            return 2
        except (NoFaceError, ValueError, OSError) as error:
            print(f"dce-landmarks: {image}: {error}", file=sys.stderr)
            failures += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_landmarks(target, Landmarks(points, [str(i) for i in range(len(points))]))
        print(f"{image} -> {target}")
    print(f"{len(args.images) - failures} of {len(args.images)} images done")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
