"""`clbench-study NAME [overrides]`: a results table as config (`conf/study/NAME.yaml`).

A study is rows (label -> overrides) x seeds on a protocol, the columns to report and,
optionally, published values with their source and a tolerance. The command expands it into
one Hydra multirun (the `clbench_study` sweeper of `hydra_plugins/`, so any launcher runs it:
`hydra/launcher=local`, `hydra/launcher=slurm`, `hydra/launcher=submitit_local`), reuses the
runs already completed in its folder, and writes the table (md, csv, tex) with the published
value, the difference and a verdict per row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench.paths import CONF_DIR
from cl_bench.report.status import JOBS_FILE, format_status, sweep_status
from cl_bench.report.tables import aggregate, to_latex

STUDY_DIR = Path(CONF_DIR) / "study"
# fractions, shown in %
PERCENT = ("acc_", "forgetting_", "bwt_", "min_acc_", "wc_acc_", "anytime_acc_", "gap_depth_",
           "task_infer_acc", "task_select_acc", "capacity_used")


@dataclass
class ReferenceConf:
    """Published values of `metric` per row: `values: {row: [mean, sem]}` (sem may be null)
    on the paper's scale (`scale` x the summary's value: 100 for a percentage)."""

    metric: str = "???"
    source: str = "???"  # paper, table, protocol notes
    scale: float = 100.0
    tolerance: float = 2.0  # |ours - published| within this is agreement
    # the paper's seed count: its seeds' spread (SEM x sqrt(n)) also counts as agreement
    paper_seeds: int | None = None
    values: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass
class StudyConf:
    """One results table: `protocol` overrides shared by every row, `rows` label ->
    overrides, `seeds`, the summary `columns` to report (fractions in % when `percent`),
    `ratio_to` a row whose cost the cost columns are also given relative to."""

    title: str = "???"
    protocol: list[str] = field(default_factory=list)
    rows: dict[str, list[str]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    columns: list[str] = field(default_factory=lambda: ["train_flops"])
    percent: bool = True
    ratio_to: str | None = None
    reference: ReferenceConf | None = None
    readme: str | None = None  # the README block `<!-- table NAME -->` this study writes
    notes: str = ""  # printed under the table (protocol caveats, where CIFAR runs came from)


class StudyError(Exception):
    """A study file or a study command that cannot work, with the fix."""


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml") if not p.stem.startswith("_"))


def load_study(name: str) -> StudyConf:
    """conf/study/NAME.yaml, or the yaml file at path `name`."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else STUDY_DIR / f"{name}.yaml"
    if not path.is_file():
        raise StudyError(f"no study {name!r} in {STUDY_DIR}; studies: {', '.join(study_names())}")
    try:
        conf = OmegaConf.merge(OmegaConf.structured(StudyConf), OmegaConf.load(path))
        study = OmegaConf.to_object(conf)
    except OmegaConfBaseException as err:
        raise StudyError(f"{path}: {err}".splitlines()[0] + " (keys: "
                         + ", ".join(StudyConf.__dataclass_fields__) + ")") from err
    if not study.rows:
        raise StudyError(f"{path}: a study needs rows (label: [overrides])")
    if study.ratio_to is not None and study.ratio_to not in study.rows:
        raise StudyError(f"{path}: ratio_to {study.ratio_to!r} is not a row; rows: "
                         f"{', '.join(study.rows)}")
    if study.reference is not None:
        unknown = sorted(set(study.reference.values) - set(study.rows))
        if unknown:
            raise StudyError(f"{path}: reference values for {unknown}, which are not rows")
    return study


def _key(override: str) -> str:
    """The key an override sets (`+a.b=1` -> a.b, `method=er` -> method)."""
    return re.split(r"[=@]", override.lstrip("+~"), maxsplit=1)[0]


def merge_overrides(*groups: list[str]) -> list[str]:
    """The overrides of `groups` in order, a later one replacing an earlier one of its key."""
    merged: dict[str, str] = {}
    for group in groups:
        for override in group:
            merged.pop(_key(override), None)
            merged[_key(override)] = override
    return list(merged.values())


def job_dir(row: str, seed: int) -> str:
    return f"{row}_seed{seed}"


def jobs(study: StudyConf, out: Path, extra: list[str]) -> list[dict]:
    """Every row x seed as {dir, row, seed, overrides}: protocol, row, the command line's
    `extra`, then the study's own bookkeeping (seed, the row as logger.group, the study folder
    as output_root so skip_done looks nowhere else)."""
    return [{"dir": job_dir(row, seed), "row": row, "seed": seed,
             "overrides": merge_overrides(study.protocol, overrides, extra, [
                 f"seed={seed}", f"logger.group={row}", "skip_done=true",
                 f"output_root={out}"])}
            for seed in study.seeds for row, overrides in study.rows.items()]


def subset(study: StudyConf, rows: str | None, seeds: str | None) -> StudyConf:
    """The study restricted to `rows` and `seeds` (comma-separated; None: all)."""
    chosen = [r.strip() for r in rows.split(",")] if rows else list(study.rows)
    unknown = [r for r in chosen if r not in study.rows]
    if unknown:
        raise StudyError(f"--rows {unknown} are not rows of this study: {', '.join(study.rows)}")
    try:
        picked = [int(x) for x in seeds.split(",")] if seeds else study.seeds
    except ValueError as err:
        raise StudyError(f"--seeds {seeds!r}: give integers separated by commas") from err
    return replace(study, rows={r: study.rows[r] for r in chosen}, seeds=picked)


def launch(study: StudyConf, out: Path, extra: list[str], hydra_args: list[str],
           now: StudyConf | None = None) -> None:
    """Runs the study's jobs (those of `now`, a subset, when given) as one Hydra multirun
    into `out`, each in out/<row>_seed<seed>; out/study_jobs.json lists the whole grid (for
    `clbench-status`)."""
    from hydra.core.plugins import Plugins

    from cl_bench import cli
    from hydra_plugins.clbench_study.study_sweeper import StudySweeper

    # Hydra's plugin scan cannot list a package an editable install maps in: name it
    Plugins.instance().register(StudySweeper)
    out.mkdir(parents=True, exist_ok=True)
    grid = out / f".{JOBS_FILE}.{os.getpid()}"  # the whole grid, replaced atomically
    grid.write_text(json.dumps(jobs(study, out, extra), indent=1))
    os.replace(grid, out / JOBS_FILE)
    # one file per invocation: two studies may run subsets into one folder at once
    launched = out / f".study_launch_{os.getpid()}.json"
    launched.write_text(json.dumps(jobs(now or study, out, extra), indent=1))
    argv = ["clbench", "-m", "hydra/sweeper=clbench_study",
            f"hydra.sweeper.jobs_file={launched}", f"hydra.sweep.dir={out}",
            "hydra.sweep.subdir=${logger.group}_seed${seed}", *hydra_args]
    saved = sys.argv
    sys.argv = argv
    try:
        cli.main(prog="clbench-study")
    finally:
        sys.argv = saved
        launched.unlink(missing_ok=True)


def run_in(overrides: list[str], run_dir: str | Path) -> dict:
    """The summary of the run `overrides` compose to, in the fixed folder `run_dir` (for
    scripts: benchmarks, golden matrices); a run already completed there with this config is
    read back, one interrupted there resumes from its checkpoint."""
    from hydra import compose, initialize_config_dir

    import cl_bench.cli  # noqa: F401  (registers the config's resolvers and schemas)
    from cl_bench.experiment import Run, reuse_in_place

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return reuse_in_place(cfg, Path(run_dir).resolve()) or Run(cfg, run_dir).execute()


def collect(study: StudyConf, out: Path) -> pd.DataFrame:
    """The completed runs of the study's grid under `out`, one row each with its `row`."""
    found = []
    for row in study.rows:
        for seed in study.seeds:
            path = out / job_dir(row, seed) / "summary.json"
            if path.is_file():
                summary = json.loads(path.read_text())
                if summary.get("status") == "completed":
                    found.append({**summary, "row": row})
    return pd.DataFrame(found)


def _is_fraction(metric: str) -> bool:
    return metric.startswith(PERCENT)


def _is_cost(metric: str) -> bool:
    """FLOPs (`train_flops`, a component's `flops_replay`), bytes and seconds."""
    return metric.endswith(("flops", "bytes", "seconds")) or metric.startswith("flops_")


def _cell(mean: float, std: float, ci: float, scale: float, metric: str) -> str:
    if pd.isna(mean):
        return "-"
    if _is_cost(metric):  # costs: the mean; seeds barely differ
        return f"{mean:.0f}" if metric.endswith("seconds") else f"{mean:.3g}"
    fmt = "{:.2f}" if scale == 100 else "{:.4f}"
    text = fmt.format(mean * scale)
    if not pd.isna(std):
        text += " ± " + fmt.format(std * scale)
        if not pd.isna(ci):
            text += f" [{fmt.format((mean - ci) * scale)}, {fmt.format((mean + ci) * scale)}]"
    return text


def verdict(mean: float, sem: float, published: float, published_sem: float | None,
            ref: ReferenceConf) -> tuple[float, float, bool]:
    """(ours - published, the allowed gap, within?): the tolerance, or the paper's own seed
    spread when `paper_seeds` is given, or twice the combined SEM of both means."""
    gap = mean - published
    psem = published_sem or 0.0
    allowed = max(ref.tolerance, 2 * math.hypot(0.0 if pd.isna(sem) else sem, psem))
    if ref.paper_seeds:
        allowed = max(allowed, psem * math.sqrt(ref.paper_seeds))
    return gap, allowed, abs(gap) <= allowed


def table(study: StudyConf, runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shown, numbers): the display table (strings) and the aggregated numbers per row, in
    the study's row order; rows without a completed run are listed with n = 0."""
    columns = list(dict.fromkeys([*([study.reference.metric] if study.reference else []),
                                  *study.columns]))
    if runs.empty:
        numbers = pd.DataFrame({"row": list(study.rows), "n": 0, "seeds": ""})
    else:
        # a column no run has yet (a component only some rows count) stays "-"
        runs = runs.assign(**{c: math.nan for c in columns if c not in runs})
        odd = [c for c in columns if not pd.api.types.is_numeric_dtype(runs[c])]
        if odd:
            raise StudyError(f"columns {odd} are not numbers in the summaries (a list or a "
                             "text): choose numeric summary keys")
        numbers = aggregate(runs[["row", "seed", *columns]], ["row"], columns)
        numbers = numbers.set_index("row").reindex(list(study.rows)).reset_index()
        numbers["n"] = numbers["n"].fillna(0).astype(int)
    shown = pd.DataFrame({"row": numbers["row"]})
    asked = len(study.seeds)
    shown["seeds"] = [f"{n}/{asked}" + ("" if n == asked else " (fewer than asked)")
                      for n in numbers["n"]]
    for metric in columns:
        if f"{metric}_mean" not in numbers:
            shown[metric] = "-"
            continue
        scale = 100.0 if study.percent and _is_fraction(metric) else 1.0
        shown[metric + (" %" if scale == 100 else "")] = [
            _cell(m, s, c, scale, metric) for m, s, c in zip(
                numbers[f"{metric}_mean"], numbers[f"{metric}_std"], numbers[f"{metric}_ci95"],
                strict=True)]
    if study.ratio_to is not None:
        base = numbers.set_index("row")
        for metric in (c for c in columns if _is_cost(c)):
            ref_value = base.loc[study.ratio_to].get(f"{metric}_mean", math.nan)
            shown[f"{metric} / {study.ratio_to}"] = [
                "-" if pd.isna(v) or not ref_value else f"{v / ref_value:.3g}x"
                for v in numbers.get(f"{metric}_mean", pd.Series(math.nan, numbers.index))]
    if study.reference is not None:
        ref = study.reference
        published, diff, verdicts = [], [], []
        for _, row in numbers.iterrows():
            value = ref.values.get(row["row"])
            if value is None:
                published.append("–")
                diff.append("–")
                verdicts.append("–")
                continue
            pub, psem = (list(value) + [None])[:2] if isinstance(value, list | tuple) else \
                (value, None)
            published.append(f"{pub:.2f}" + ("" if psem is None else f" ± {psem:.2f}"))
            if row["n"] == 0:
                diff.append("–")
                verdicts.append("no run")
                continue
            mean = row[f"{ref.metric}_mean"] * ref.scale
            sem = row[f"{ref.metric}_std"] * ref.scale / math.sqrt(row["n"])
            gap, allowed, within = verdict(mean, sem, pub, psem, ref)
            diff.append(f"{gap:+.2f}")
            verdicts.append(f"within ({allowed:.2f})" if within else
                            f"OUTSIDE by {abs(gap) - allowed:.2f} (allowed {allowed:.2f})")
        shown["published"] = published
        shown["ours − published"] = diff
        shown["verdict"] = verdicts
    if not runs.empty and "git_commit" in runs:
        commits = runs.groupby("row")["git_commit"].agg(lambda c: " ".join(sorted(set(c))))
        shown["commit"] = [commits.get(r, "") for r in numbers["row"]]
    return shown, numbers


def render(study: StudyConf, name: str, shown: pd.DataFrame) -> str:
    """The markdown block: the table and what its cells are."""
    lines = [shown.to_markdown(index=False, tablefmt="github", disable_numparse=True), "",
             "Cells: mean ± sample std [95% CI, Student t] over the seeds present."]
    if study.reference is not None:
        ref = study.reference
        lines.append(f"Published: {ref.source} (mean ± SEM). Verdict: within when |ours − "
                     f"published| ≤ max({ref.tolerance:g}, 2 × combined SEM"
                     + (f", the paper's seed std = SEM × √{ref.paper_seeds}"
                        if ref.paper_seeds else "") + ").")
    if study.notes:
        lines.append(study.notes.strip())
    lines.append(f"Produced by `clbench-study {name}`.")
    return "\n".join(lines) + "\n"


def write_tables(study: StudyConf, name: str, out: Path, shown: pd.DataFrame,
                 numbers: pd.DataFrame) -> str:
    text = render(study, name, shown)
    (out / "study.md").write_text(f"### {study.title}\n\n{text}")
    (out / "study.tex").write_text(to_latex(shown))
    numbers.to_csv(out / "study.csv", index=False)
    return text


def update_readme(readme: Path, block: str, text: str) -> None:
    """Replaces the lines between `<!-- table BLOCK -->` and `<!-- /table -->` in `readme`."""
    content = readme.read_text()
    pattern = re.compile(rf"(<!-- table {re.escape(block)} -->\n).*?(<!-- /table -->)", re.S)
    if not pattern.search(content):
        raise StudyError(f"{readme} has no block '<!-- table {block} -->' ... '<!-- /table -->'")
    readme.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="clbench-study", description=__doc__.splitlines()[0],
        epilog="Studies: " + ", ".join(study_names()))
    parser.add_argument("name", help="a study of conf/study/ (or the path of a study yaml)")
    parser.add_argument("overrides", nargs="*",
                        help="overrides for every run (budget.iters=50), or Hydra's "
                        "(hydra/launcher=local hydra.launcher.n_jobs=2)")
    parser.add_argument("--out", type=Path, help="study folder (default outputs/studies/NAME)")
    parser.add_argument("--rows", help="comma-separated rows to run now (default: all); the "
                        "table still lists every row")
    parser.add_argument("--seeds", help="comma-separated seeds to run now (default: the "
                        "study's)")
    parser.add_argument("--report-only", action="store_true",
                        help="tabulate the runs already in the folder; train nothing")
    parser.add_argument("--status", action="store_true",
                        help="runs completed / running / failed / missing, and an ETA")
    parser.add_argument("--readme", type=Path, nargs="?", const=Path("README.md"),
                        help="also write the table into this README's block (default "
                        "README.md)")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        study = load_study(args.name)
        out = (args.out or Path("outputs") / "studies" / Path(args.name).stem).resolve()
        if args.status:
            grid = [out / job_dir(row, seed) for seed in study.seeds for row in study.rows]
            print(format_status(out, sweep_status(out, expected=grid)))
            return 0
        hydra_args = [o for o in args.overrides if o.lstrip("+~").startswith("hydra")]
        extra = [o for o in args.overrides if o not in hydra_args]
        if not args.report_only:
            launch(study, out, extra, hydra_args, subset(study, args.rows, args.seeds))
        if not out.is_dir():
            raise StudyError(f"{out} does not exist: run the study first (without "
                             "--report-only), or give its folder with --out")
        shown, numbers = table(study, collect(study, out))
        text = write_tables(study, args.name, out, shown, numbers)
        print(f"### {study.title}\n\n{text}")
        print(f"wrote {out / 'study.md'}, study.csv, study.tex")
        if args.readme:
            update_readme(args.readme, study.readme or args.name, text)
            print(f"updated the block '{study.readme or args.name}' of {args.readme}")
    except StudyError as err:
        print(f"clbench-study: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
