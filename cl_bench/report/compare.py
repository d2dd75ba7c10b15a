"""`clbench-compare PATH...`: tables (and plots) of saved runs, grouped by what varies."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from cl_bench.report.load import load_summaries
from cl_bench.report.tables import (
    CELL,
    aggregate,
    display_table,
    group_keys,
    to_latex,
    to_markdown,
)

FORMATS = ("md", "tex", "csv")
LISTED = ["run_dir", "status", "error"]  # how a run that did not complete is listed


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="clbench-compare",
        description="Compare saved clbench runs: mean ± std and 95% CI over seeds per group.")
    parser.add_argument("paths", nargs="+", help="run or sweep directories (searched recursively)")
    parser.add_argument("--by", help="comma-separated group keys, e.g. method,memory.size "
                        "(default: the config keys that vary between runs)")
    parser.add_argument("--format", default="md,tex,csv",
                        help="comma-separated output formats among md, tex, csv (default: all)")
    parser.add_argument("--out", help="folder for the tables and plots (default: first PATH)")
    parser.add_argument("--metrics", help="comma-separated metrics to show and write, e.g. "
                        "acc_class_il,forgetting_class_il,train_flops (default: all; the csv "
                        "keeps all)")
    parser.add_argument("--plot", action="store_true",
                        help="also write acc_matrices.png, stability_curves.png, acc_vs_flops.png")
    parser.add_argument("--flops", choices=("theoretical", "executed"), default="theoretical",
                        help="x axis of acc_vs_flops.png: theoretical (summary train_flops, "
                        "sparse layers at their density; default) or executed "
                        "(train_flops_dense, as PyTorch's dense kernels run them)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    console = Console()
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        console.print(f"[red]clbench-compare: unknown --format {bad}; choose from {FORMATS}")
        return 2
    try:
        runs = load_summaries(args.paths)
    except FileNotFoundError as err:
        console.print(f"[red]{err}")
        return 2
    runs = runs.reindex(columns=list(dict.fromkeys([*runs.columns, *LISTED])))
    completed = runs[runs.status == "completed"]
    unfinished = runs[runs.status != "completed"]
    out = Path(args.out or args.paths[0])
    out.mkdir(parents=True, exist_ok=True)

    if completed.empty:
        console.print(f"[red]clbench-compare: none of the {len(runs)} runs under "
                      f"{', '.join(args.paths)} completed, so there is nothing to average "
                      "(a run without summary.json died before writing one)")
    else:
        keys = [k.strip() for k in args.by.split(",")] if args.by else group_keys(completed)
        missing = [k for k in keys if k not in completed]
        if missing:
            console.print(f"[red]clbench-compare: --by keys {missing} are not columns of the "
                          f"runs' summaries; e.g. {sorted(completed.columns)[:12]}")
            return 2
        table = aggregate(completed, keys)
        shown = display_table(table, keys)
        if args.metrics:
            wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
            unknown = [m for m in wanted if m not in shown.columns]
            if unknown:
                known = [c for c in shown.columns if c not in [*keys, "n"]]
                console.print(f"[red]clbench-compare: --metrics {unknown} are not metrics of "
                              f"these runs; choose from {known}")
                return 2
            shown = shown[[*keys, "n", *wanted]]
        # one column per group reads better in a terminal than one column per metric
        labels = [" ".join(str(v) for v in row) for row in shown[keys].itertuples(index=False)]
        transposed = shown.drop(columns=keys).T.reset_index()
        transposed.columns = [" ".join(keys)] + labels
        _print(console, transposed,
               f"{len(completed)} completed runs grouped by {', '.join(keys)}: {CELL}")
        written = _write(table, shown, unfinished, out, formats)
        if args.plot:
            written += _plots(completed, table, keys, out, args.flops, console)
        console.print("wrote " + ", ".join(str(p) for p in written))
    if not unfinished.empty:
        listing = unfinished[LISTED].astype(object).fillna("")
        _print(console, listing, f"{len(unfinished)} runs not completed (not averaged)")
    return 1 if completed.empty else 0


def _print(console: Console, frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title)
    for col in frame.columns:
        table.add_column(str(col), overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)


def _write(table, shown, unfinished, out: Path, formats) -> list[Path]:
    written = []
    extra = ""
    if not unfinished.empty:
        extra = "\n**Runs not completed (not averaged):**\n\n" + to_markdown(
            unfinished[LISTED].astype(object).fillna(""))
    for fmt in formats:
        path = out / f"compare.{fmt}"
        if fmt == "csv":
            table.to_csv(path, index=False)
        elif fmt == "md":
            path.write_text(f"Cells: {CELL} over seeds.\n\n" + to_markdown(shown) + extra)
        else:
            path.write_text(to_latex(shown))
        written.append(path)
    if not unfinished.empty:
        path = out / "compare_unfinished.csv"
        unfinished[LISTED].to_csv(path, index=False)
        written.append(path)
    return written


def _plots(runs, table, keys, out: Path, flops: str, console: Console) -> list[Path]:
    from cl_bench.report.plots import (
        plot_acc_matrices,
        plot_acc_vs_flops,
        plot_stability_curves,
        with_flops,
    )

    scenario = runs["scenario"].iloc[0]
    flops_table, note = with_flops(runs, table, keys, flops)
    if note:
        console.print(f"clbench-compare: note: {note}")
    paths = [plot_acc_matrices(runs, keys, out / "acc_matrices.png"),
             plot_stability_curves(runs, keys, out / "stability_curves.png"),
             plot_acc_vs_flops(flops_table, keys, f"acc_{scenario}", out / "acc_vs_flops.png",
                               flops)]
    return [p for p in paths if p is not None]

if __name__ == "__main__":
    sys.exit(main())
