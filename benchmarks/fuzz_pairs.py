"""The long mutation campaign of issue 12 over the training side: pair files,
checkpoints, and SIGKILLs of dce-train followed by --resume.

1. Pair files (``tests/test_fuzz_pairs.py``'s campaign, longer): byte
   mutants of a gzip file in dce-build's layout and every semantic mutant,
   classed refused / same / text / wrong / uncaught; then, for the record,
   byte mutants of an *uncompressed* file (``--compression none``), whose
   data carries no checksum in format v1.
2. Checkpoints: byte mutants of a run's ``last.pt`` (load_checkpoint must
   refuse every changed byte) and every semantic mutant through
   ``Trainer.resume`` and the Refiner.
3. Kill and resume: ``dce-train`` runs in a subprocess and is killed with
   SIGKILL at a seeded point (after a seeded number of logged iterations
   plus a seeded delay, so some kills land inside a checkpoint write), then
   resumed (``--resume`` when a checkpoint exists) until it completes,
   possibly killed again. The finished run must equal an uninterrupted one
   bit for bit (every tensor of last.pt: weights, optimizers, RNG) and its
   log.jsonl must hold each iteration once with the same losses.

Writes ``benchmarks/results/fuzz_pairs.md``. Counts are what they are on any
machine; the durations were taken on whatever machine ran it (for the
committed file: a shared, busy 2-core machine).

    python benchmarks/fuzz_pairs.py [--pair-mutants 3000] [--checkpoint-mutants 1000]
                                    [--kills 12] [--seed 12]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_fuzz_pairs import (  # noqa: E402
    CHECKPOINT_EDITS,
    SEMANTIC,
    checkpoint_campaign,
    classify,
    pair_campaign,
    write_pairs_file,
)

from dce.gan.checkpoint import load_checkpoint  # noqa: E402

CLASSES = ("refused", "same", "warned", "text", "wrong", "uncaught", "hang", "crash")


def _probe_worker(conn, reference, text) -> None:
    while True:
        path = conn.recv()
        if path is None:
            return
        conn.send(classify(Path(path), reference, text))


class Prober:
    """Classes mutants in a child process, so that a mutant on which HDF5
    hangs or crashes the interpreter is counted (``hang``: no answer within
    ``timeout`` seconds, the child is killed; ``crash``: the child died)
    rather than stopping the campaign; a new child takes over. A crashing
    mutant is kept in ``out/fuzz-crashes/``, for the record."""

    def __init__(self, reference, text, timeout: float = 120.0):
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")  # no fork of torch's threads
        self.args, self.timeout = (reference, text), timeout
        self.crashes = 0
        self._start()

    def _start(self):
        self.conn, child = self.context.Pipe()
        self.process = self.context.Process(target=_probe_worker, args=(child, *self.args),
                                            daemon=True)
        self.process.start()

    def __call__(self, path) -> tuple:
        self.conn.send(str(path))
        try:
            if self.conn.poll(self.timeout):
                return self.conn.recv()
            kind, detail = "hang", f"no answer within {self.timeout:.0f} s"
        except EOFError:
            self.crashes += 1
            kept = ROOT / "out" / "fuzz-crashes" / f"{os.getpid()}-{self.crashes}.h5"
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(Path(path).read_bytes())
            kind, detail = "crash", f"the reading process died; mutant kept as {kept}"
        self.process.kill()
        self.process.join()
        self._start()
        return kind, detail

    def close(self):
        self.conn.send(None)
        self.process.join(10)


def campaign_in_child(folder: Path, n: int, seed: int, size: int, compression) -> tuple:
    probers = []

    def make(reference, text):
        probers.append(Prober(reference, text))
        return probers[-1]

    try:
        return pair_campaign(folder, n, seed, size=size, prober=make, compression=compression)
    finally:
        for prober in probers:
            prober.close()


# ------------------------------------------------------------------ kill and resume
TRAIN_ARGS = ["--preset", "tiny", "--iters-per-resolution", "6", "--max-resolution", "8",
              "--batch-size", "2", "--workers", "0", "--crop-pad", "2", "--lr", "1e-3",
              "--checkpoint-every", "2", "--log-every", "1"]


def dce_train(pairs: Path, out: Path, resume: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "dce.cli.train", str(pairs), "-o", str(out), *TRAIN_ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen(command + (["--resume"] if resume else []), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged(out: Path) -> int:
    try:
        return sum(1 for _ in open(out / "log.jsonl", encoding="utf-8"))
    except OSError:
        return 0


def run_until_done(pairs: Path, out: Path, rng: random.Random, kills_left: int,
                   total: int) -> tuple:
    """Run dce-train into ``out`` until it exits 0, SIGKILLing it up to
    ``kills_left`` times at seeded points. Returns (kills done, runs)."""
    kills, runs = 0, 0
    while True:
        runs += 1
        process = dce_train(pairs, out, resume=(out / "last.pt").exists())
        if kills < kills_left:
            target = rng.randrange(1, total)  # kill once this many lines are logged
            delay = rng.uniform(0.0, 0.3)
            while process.poll() is None and logged(out) < target:
                time.sleep(0.02)
            time.sleep(delay)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                continue
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"dce-train exited {process.returncode}: {err[-2000:]}")
        return kills, runs


def same_tensors(a, b, where="") -> list:
    """Paths of the entries of two nested checkpoint states that differ."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b))
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [where + " (keys)"]
        return [d for k in a for d in same_tensors(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [where + " (length)"]
        return [d for k, (x, y) in enumerate(zip(a, b)) for d in same_tensors(x, y, f"{where}[{k}]")]
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return [] if np.array_equal(a, b) else [where]
    return [] if a == b else [where]


def log_records(out: Path) -> list:
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
            for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines()]


def kill_campaign(folder: Path, kills: int, seed: int) -> dict:
    """SIGKILL-and-resume trials of dce-train against one uninterrupted run."""
    folder.mkdir(parents=True, exist_ok=True)
    pairs = write_pairs_file(folder / "pairs.h5", subjects=4, poses=2, size=16, seed=seed)
    reference = folder / "reference"
    t0 = time.perf_counter()
    run_until_done(pairs, reference, random.Random(0), 0, 0)
    seconds_per_run = time.perf_counter() - t0
    expected_state = load_checkpoint(reference / "last.pt")
    expected_log = log_records(reference)
    total = expected_state["iteration"]
    rng = random.Random(seed)
    result = collections.Counter()
    trial = 0
    while result["kills"] < kills:
        trial += 1
        out = folder / f"trial{trial:02d}"
        done, runs = run_until_done(pairs, out, rng, min(rng.randint(1, 3),
                                                         kills - result["kills"]), total)
        result["kills"] += done
        result["runs"] += runs
        result["trials"] += 1
        state = load_checkpoint(out / "last.pt")
        state["settings"]["out"] = expected_state["settings"]["out"]  # the only intended change
        differ = same_tensors(state, expected_state)
        if differ:
            result["different_checkpoint"] += 1
            print(f"  trial {trial}: checkpoint differs in {differ[:3]}")
        if log_records(out) != expected_log:
            result["different_log"] += 1
            print(f"  trial {trial}: log differs: {[r['iteration'] for r in log_records(out)]}")
    result["iterations"] = total
    result["seconds_per_run"] = seconds_per_run
    return result


# ------------------------------------------------------------------ report
def row(name: str, counts: collections.Counter, note: str = "") -> str:
    total = sum(counts[c] for c in CLASSES) + counts["accepted"]
    return (f"| {name} | {total} | " + " | ".join(str(counts[c]) for c in CLASSES)
            + f" | {note} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pair-mutants", type=int, default=3000)
    p.add_argument("--uncompressed-mutants", type=int, default=500)
    p.add_argument("--checkpoint-mutants", type=int, default=1000)
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_pairs.md")
    args = p.parse_args(argv)
    lines, failures = [], []
    with tempfile.TemporaryDirectory(prefix="dce-fuzz-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        pair_counts, pair_failures = campaign_in_child(tmp / "pairs", args.pair_mutants,
                                                       args.seed, 32, "gzip")
        t_pairs = time.perf_counter() - t0
        print("pair file", dict(pair_counts["bytes"]), dict(pair_counts["semantic"]))
        failures += pair_failures
        t0 = time.perf_counter()
        plain = campaign_in_child(tmp / "plain", args.uncompressed_mutants, args.seed, 32,
                                  None)[0]["bytes"]
        t_plain = time.perf_counter() - t0
        print("uncompressed", dict(plain))
        t0 = time.perf_counter()
        ckpt_pairs = write_pairs_file(tmp / "ckpt-pairs.h5", subjects=4, poses=2, size=16)
        ckpt_counts, ckpt_failures = checkpoint_campaign(tmp / "ckpt", ckpt_pairs,
                                                         args.checkpoint_mutants, args.seed)
        t_ckpt = time.perf_counter() - t0
        print("checkpoint", dict(ckpt_counts["bytes"]), dict(ckpt_counts["semantic"]))
        failures += ckpt_failures
        t0 = time.perf_counter()
        kills = kill_campaign(tmp / "kills", args.kills, args.seed) if args.kills else {}
        t_kills = time.perf_counter() - t0
        print("kills", dict(kills))
    lines += [
        "# Mutation campaign: pair files, checkpoints, SIGKILL + resume (issue 12)",
        "",
        f"`python benchmarks/fuzz_pairs.py --pair-mutants {args.pair_mutants} "
        f"--uncompressed-mutants {args.uncompressed_mutants} --checkpoint-mutants "
        f"{args.checkpoint_mutants} --kills {args.kills} --seed {args.seed}`",
        "",
        "Classes: *refused* = the project's error (PairFileError, CheckpointError, or "
        "ValueError for a settings mismatch) naming the file; *same* = accepted and every "
        "number the readers deliver equals the original's bit for bit (most byte mutants "
        "of a small HDF5 file land in space reserved for chunk-index nodes); *warned* = as "
        "*text*, with the warning that the file has no text checksum to verify (the "
        "mutation hit that attribute's name); *text* = as *same*, but a text field no "
        "number depends on (provenance, config, created_by, a sample id) reads "
        "differently, unnoticed; *wrong* = "
        "accepted with different numbers (a silently wrong read); *uncaught* = any other "
        "exception; *hang* = no answer within 120 s; *crash* = the reading process died (the "
        "probe runs in a child process).",
        "",
        "| campaign | mutants | refused | same | warned | text | wrong | uncaught | hang | crash "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        row("pair file (gzip, 32 px), byte mutants", pair_counts["bytes"],
            "bit flips, random bytes, zeroed runs, cuts, appended bytes"),
        row("pair file, semantic mutants", pair_counts["semantic"],
            f"{len(SEMANTIC)} defects: NaN/inf/zero metadata, empty or non-0/1 masks, "
            "versions, undecodable text, a chunk missing from the index, ..."),
        row("pair file *uncompressed*, byte mutants", plain,
            "Fletcher-32 per chunk covers uncompressed data too"),
        row("checkpoint, byte mutants", ckpt_counts["bytes"],
            "SHA-256 of the payload; *same* = the mutation left the bytes unchanged"),
        row("checkpoint, semantic mutants", ckpt_counts["semantic"],
            f"{len(CHECKPOINT_EDITS)} edits through Trainer.resume and the Refiner"),
        "",
    ]
    if kills:
        lines += [
            "| SIGKILL + resume of dce-train | value |", "|---|---|",
            f"| trials (each resumed until done) | {kills['trials']} |",
            f"| SIGKILLs | {kills['kills']} |",
            f"| dce-train processes started | {kills['runs']} |",
            f"| iterations per run | {kills['iterations']} |",
            f"| final last.pt differing from the uninterrupted run (any tensor) | "
            f"{kills['different_checkpoint']} |",
            f"| log.jsonl differing (iterations repeated or missing, other losses) | "
            f"{kills['different_log']} |",
            "",
        ]
    lines += [
        f"Durations on the machine that ran it (shared and busy): pair files "
        f"{t_pairs:.0f} s, uncompressed {t_plain:.0f} s, checkpoints {t_ckpt:.0f} s, kills "
        f"{t_kills:.0f} s" + (f" (one uninterrupted dce-train run {kills['seconds_per_run']:.1f} s,"
                              " mostly importing torch)" if kills else "") + ".",
    ]
    if failures:
        lines += ["", "Failures:", ""] + [f"- {k}: {what}: {detail}"
                                          for k, what, detail in failures[:20]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    bad = failures or (kills and (kills["different_checkpoint"] or kills["different_log"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
