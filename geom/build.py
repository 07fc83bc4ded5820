"""Building a pair file: the library side of ``dce-build``. :func:`build` runs
the pairs an input source lists through the pipeline in worker processes
and writes their samples with :class:`dce.geom.store.PairWriter`; a build
is resumable, can be one shard of N, and reports a failing pair and goes on.

See docs/dataset-inputs.md (a usage example).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dce.gan.h5format import DEFAULT_TEST_FRACTION, PairFileError, validate

from . import dataset, sources, store
from .dataset import BuildConfig
from .dce import resolve_channels
from .records import PathLike
from .sources import CoarseSource, PairSpec


class BuildInterrupted(Exception):
    """Ctrl-C during a build: ``written`` new samples are kept in the
    partial build ``partial``; rerunning the same build resumes."""

    def __init__(self, written: int, partial: str):
        super().__init__(f"interrupted: {written} new samples kept in {partial}; rerun the "
                         "same build to resume")
        self.written, self.partial = written, partial


@dataclass
class BuildReport:
    """What :func:`build` did. ``summary``: :func:`dce.gan.h5format.validate`'s
    summary of the finished file; ``failures`` and ``flagged``: (pair_id,
    reason) of the pairs skipped, and of those kept although their coarse fit
    failed the gate; ``stage_seconds``: load / geometry / render time summed
    over the workers."""

    out: Path
    pairs: int
    already_built: int
    written: int
    summary: dict
    failures: list = field(default_factory=list)
    flagged: list = field(default_factory=list)
    stage_seconds: dict = field(default_factory=dict)
    seconds: float = 0.0
    up_to_date: bool = False


def shard_path(out: PathLike, shard: tuple | None) -> Path:
    """The file of shard (K, N) of a build to ``out``: ``pairs.shardK-of-N.h5``."""
    out = Path(out)
    if shard is None:
        return out
    return out.with_name(f"{out.stem}.shard{shard[0]}-of-{shard[1]}{out.suffix}")


def build_record(config: BuildConfig, command: str, coarse: CoarseSource) -> dict:
    """The configuration a pair file stores (and a resume compares): the
    build settings, the input kind and, with a morphable model, the fit's
    settings, which decide the coarse side's pixels."""
    record = {**config.to_dict(), "command": command}
    if coarse.model_path is not None:
        gate = coarse.gate
        record["coarse_fit"] = {
            "model": coarse.model_path, "n_identity": coarse.n_identity,
            "n_expression": coarse.n_expression, "landmark_noise": coarse.landmark_noise,
            "expression_stiffness": coarse.expression_stiffness, "contour": coarse.contour,
            "gate": None if gate is None else [
                gate.max_residual, gate.max_coefficient, list(gate.eye_distance_mm)],
            "on_gate_failure": coarse.on_gate_failure}
    return record


def build_pair(job: tuple) -> tuple:
    """Worker: load, prepare and render one pair ``job`` = (spec, coarse
    source, config). Returns (pair_id, samples, {stage: seconds}) or
    (pair_id, None, the error's text)."""
    spec, coarse, config = job
    try:
        t0 = time.perf_counter()
        pair = sources.load(spec, coarse)
        t1 = time.perf_counter()
        prepared = dataset.prepare_pair(pair, config)
        t2 = time.perf_counter()
        samples = dataset.pair_samples(pair.pair_id, pair.subject, *prepared, pair.landmarks_2d,
                                       config, pair.source)
        t3 = time.perf_counter()
        return spec.pair_id, samples, {"load": t1 - t0, "geometry": t2 - t1, "render": t3 - t2}
    except Exception as error:  # reported per pair; the build goes on
        detail = str(error) or error.__class__.__name__
        if not isinstance(error, (ValueError, OSError)):
            detail += "\n" + traceback.format_exc(limit=3)
        return spec.pair_id, None, detail


def _init_worker() -> None:
    # One BLAS thread per worker: the workers already use every core.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _consume(results, writer: store.PairWriter, report: BuildReport, bar) -> None:
    for pair_id, samples, info in results:
        if samples is None:
            report.failures.append((pair_id, info))
        else:
            gate = samples[0].source.get("fit_gate", "") if samples else ""
            if gate.startswith("FAILED"):
                report.flagged.append((pair_id, gate[len("FAILED: "):]))
            for sample in samples:
                if not writer.has(sample.sample_id):
                    writer.append(sample)
                    report.written += 1
            writer.commit()
            for stage, seconds in info.items():
                report.stage_seconds[stage] = report.stage_seconds.get(stage, 0.0) + seconds
        if bar is not None:
            bar.update(1)
            bar.set_postfix(failed=len(report.failures))


def build(specs: Sequence[PairSpec], out: PathLike, config: BuildConfig | None = None,
          coarse: CoarseSource = CoarseSource(), *, command: str = "manifest",
          workers: int = 1, shard: tuple | None = None,
          test_fraction: float = DEFAULT_TEST_FRACTION, progress: bool = True,
          log=print) -> BuildReport:
    """Build the pair file ``out`` (or shard (K, N)'s file, :func:`shard_path`)
    from ``specs`` with ``config`` (None: the defaults), the coarse side from
    ``coarse``.

    ``command`` names the input kind in the file's configuration
    ("synthetic", "frgc", "bosphorus", "manifest"); ``workers`` > 1 renders
    in that many spawned processes; ``progress`` shows a progress bar;
    ``log`` gets the one-line messages. A file already built with the same
    configuration is left as it is (``up_to_date``). Raises
    :class:`BuildInterrupted` on Ctrl-C (the samples so far are kept),
    :class:`dce.geom.store.EmptyBuildError` (with ``failures``) when every
    pair fails, PairFileError when a partial build of other settings is in
    the way."""
    start = time.perf_counter()
    config = BuildConfig() if config is None else config  # a fresh one: BuildConfig is mutable
    out = shard_path(out, shard)
    if shard is not None:
        specs = [s for s in specs if store.shard_of(s.pair_id, *shard)]
    record = build_record(config, command, coarse)
    if out.exists() and not Path(store.partial_path(out)).exists():
        try:
            summary = validate(out)
            if summary["config"] == record:
                return BuildReport(out, len(specs), len(specs), 0, summary, up_to_date=True,
                                   seconds=time.perf_counter() - start)
        except PairFileError:
            pass  # not a finished file of ours: rebuilt, replaced only at the end
    channels = resolve_channels(config.channels)
    report = BuildReport(out, len(specs), 0, 0, {})
    with store.PairWriter(out, channels, config.size, config.size, record,
                          shard=shard) as writer:
        done = writer.done_ids()
        todo = [s for s in specs
                if any(f"{s.pair_id}/pose{k}" not in done for k in range(config.poses + 1))]
        report.already_built = len(specs) - len(todo)
        log(f"dce-build: {len(specs)} pairs, {report.already_built} already built, "
            f"{len(todo)} to build with {workers} worker(s) -> {out}")
        jobs = [(s, coarse, config) for s in todo]
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), unit="pair", dynamic_ncols=True, file=sys.stdout)
        try:
            if workers > 1 and len(jobs) > 1:
                context = multiprocessing.get_context("spawn")
                with context.Pool(workers, initializer=_init_worker) as pool:
                    _consume(pool.imap_unordered(build_pair, jobs), writer, report, bar)
            else:
                _consume(map(build_pair, jobs), writer, report, bar)
        except KeyboardInterrupt:
            raise BuildInterrupted(report.written, writer.partial) from None
        finally:
            if bar is not None:
                bar.close()
        try:
            report.summary = writer.finalize(seed=config.seed, test_fraction=test_fraction)
        except store.EmptyBuildError as error:
            error.failures = report.failures
            raise
    report.seconds = time.perf_counter() - start
    return report
