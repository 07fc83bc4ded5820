"""Long seeded mutation campaign over every reader (issue 12).

    python benchmarks/fuzz_readers.py [--per-format N] [--seed S] [--bomb-mib M]

Runs the campaign of ``tests/test_fuzz_readers.py`` (the CI test runs 30
mutants per format) with N mutants per format (default 1,000: 13,000 over
the 13 formats) and gzip bombs of M MiB (default 1,024: 1 GiB of padding
behind a valid .abs.gz, about 1 MB compressed). Each mutant is judged
against an independent reference decoder: refused with a FormatError naming
the file, read clean to exactly the original's arrays (a change the format
ignores), or to exactly the reference's (a valid file with other content).
Anything else is counted as uncaught, silently wrong, refused although
valid, or an error without the file's name.

Writes ``benchmarks/results/fuzz_readers.md`` (counts per format, the first
bad mutants if any, the wall time on this shared, busy machine). Exit
status 1 if any bad outcome was counted.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_fuzz_readers as campaign  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "fuzz_readers.md"
COLUMNS = [("mutants", None), ("FormatError", "FormatError"),
           ("clean = original", "clean, equal to the original"),
           ("clean = reference", "clean, equal to the reference"),
           ("uncaught", "uncaught"), ("silently wrong", "silently wrong"),
           ("refused valid", "refused valid"), ("error without file name",
                                                "error without file name")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-format", type=int, default=1000,
                    help="mutants per format (default 1000)")
    ap.add_argument("--seed", type=int, default=2024, help="campaign seed (default 2024)")
    ap.add_argument("--bomb-mib", type=int, default=1024,
                    help="padding of each .abs.gz bomb in MiB (default 1024)")
    ap.add_argument("--out", type=Path, default=RESULT, help=f"report (default {RESULT})")
    args = ap.parse_args()
    if args.per_format < 1 or args.bomb_mib < 1:
        ap.error("--per-format and --bomb-mib must be >= 1")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = campaign.run_campaign(args.per_format, args.seed, Path(tmp),
                                        bomb_size=args.bomb_mib << 20)
    wall = time.perf_counter() - t0

    rows, bad, total = [], [], {c: 0 for c, _ in COLUMNS}
    for name, (counts, worst) in results.items():
        row = [sum(counts.values()) if key is None else counts[key] for _, key in COLUMNS]
        rows.append([name] + row)
        for (col, _), v in zip(COLUMNS, row):
            total[col] += v
        bad += [(name, *b) for b in worst]
    rows.append(["**all**"] + [total[c] for c, _ in COLUMNS])
    lines = [
        "# Reader mutation campaign (`benchmarks/fuzz_readers.py`)", "",
        f"Seed {args.seed}, {args.per_format} mutants per format, gzip bombs of "
        f"{args.bomb_mib} MiB. Wall time {wall:.0f} s on the shared, busy 2-core "
        f"machine. Reproduce: `python benchmarks/fuzz_readers.py --per-format "
        f"{args.per_format} --seed {args.seed} --bomb-mib {args.bomb_mib}`.", "",
        "Each mutant of a valid file (bit flips, telling bytes, truncation at every kind "
        "of position, numbers replaced by NaN/huge/negative/fractional values, lines "
        "repeated/deleted/swapped, header counts and binary fields overwritten, slices "
        "deleted or repeated, corrupt gzip streams and bombs) is refused with a "
        "FormatError naming the file, or read to exactly the original's arrays (a change "
        "the format ignores), or to exactly those of an independent reference decoder "
        "that proves the mutant a valid file (`clean = reference`: e.g. one coordinate "
        "changed to another plausible value).", "",
        "| format | " + " | ".join(c for c, _ in COLUMNS) + " |",
        "|---" * (len(COLUMNS) + 1) + "|",
    ]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
    if bad:
        lines += ["", "First bad mutants:", ""]
        lines += [f"- {n}: {what}: {outcome}: {detail[-200:]}" for n, what, outcome, detail
                  in bad[:30]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
