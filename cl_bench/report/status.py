"""`clbench-status DIR`: how far a sweep or study has got: runs completed, running, failed
(with their error line), interrupted and missing, and an estimate of the time left."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cl_bench.report.load import find_run_dirs

JOBS_FILE = "study_jobs.json"  # a study's expected jobs (cl_bench.study writes it)
STATES = ("completed", "running", "failed", "interrupted", "missing")


@dataclass
class SweepStatus:
    runs: dict[str, list[Path]] = field(default_factory=lambda: {s: [] for s in STATES})
    errors: dict[Path, str] = field(default_factory=dict)
    idle_seconds: dict[Path, float] = field(default_factory=dict)  # running: since last write
    eta_seconds: float | None = None

    def counts(self) -> dict[str, int]:
        return {s: len(v) for s, v in self.runs.items()}


def expected_dirs(root: Path) -> list[Path]:
    """The run directories a sweep should hold: a study's listed jobs, or every directory
    under `root` that a job of a Hydra sweep made (`.hydra/`) or a run wrote (summary.json)."""
    jobs = root / JOBS_FILE
    if jobs.is_file():
        return [root / job["dir"] for job in json.loads(jobs.read_text())]
    return find_run_dirs([root])


def sweep_status(root: str | Path, now: float | None = None,
                 expected: list[Path] | None = None) -> SweepStatus:
    """The state of every expected run under `root` (see `expected_dirs`): `running` is a
    run whose summary says so (it may have died without a word: `idle_seconds` tells since
    when nothing was written), `missing` one that has not started. The ETA is the median
    wall time of the completed runs times the runs left, over the runs going at once.
    `expected` lists the run folders instead (a study's grid)."""
    root, now = Path(root), time.time() if now is None else now
    status, walls = SweepStatus(), []
    for run_dir in expected if expected is not None else expected_dirs(root):
        path = run_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        state = summary.get("status", "missing")
        state = state if state in STATES else "failed"
        status.runs[state].append(run_dir)
        if state in ("failed", "interrupted"):
            status.errors[run_dir] = (str(summary.get("error") or "").splitlines() or [""])[0]
        if state == "running":
            newest = max((p.stat().st_mtime for p in run_dir.iterdir() if p.is_file()),
                         default=path.stat().st_mtime)
            status.idle_seconds[run_dir] = now - newest
        if state == "completed" and summary.get("wall_seconds"):
            walls.append(float(summary["wall_seconds"]))
    left = len(status.runs["missing"]) + len(status.runs["running"])
    if walls and left:
        status.eta_seconds = statistics.median(walls) * left / max(1, len(status.runs["running"]))
    elif not left:
        status.eta_seconds = 0.0
    return status


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def format_status(root: Path, status: SweepStatus) -> str:
    counts = status.counts()
    total = sum(counts.values())
    lines = [f"{root}: {total} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATES)]
    for run_dir in status.runs["running"]:
        idle = status.idle_seconds.get(run_dir, 0.0)
        lines.append(f"  running      {run_dir.name} (last write {_duration(idle)} ago)")
    for state in ("failed", "interrupted"):
        for run_dir in status.runs[state]:
            lines.append(f"  {state:<12} {run_dir.name}: {status.errors.get(run_dir) or '?'}")
    if status.eta_seconds is None:
        lines.append("ETA: unknown until a run completes")
    elif status.eta_seconds:
        lines.append(f"ETA: ~{_duration(status.eta_seconds)} (median wall time of the completed "
                     "runs x runs left / runs going at once)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="clbench-status", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a sweep or study directory")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.dir.is_dir():
        print(f"clbench-status: {args.dir} is not a directory (give a sweep's "
              "hydra.sweep.dir or a study's output folder)", file=sys.stderr)
        return 2
    status = sweep_status(args.dir)
    print(format_status(args.dir, status))
    return 0 if not (status.runs["failed"] or status.runs["interrupted"]) else 1


if __name__ == "__main__":
    sys.exit(main())
