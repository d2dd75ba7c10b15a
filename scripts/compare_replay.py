"""Generative, internal and progressive latent replay against finetuning, same protocol,
several seeds: class-IL and task-IL accuracy (mean +/- std), total replay FLOPs (generator
sampling + classifier replay pass), train FLOPs and wall time per method, and whether a PLR
rule is within 2 points of the reference replay method at <= 0.6x its replay FLOPs.

    CLBENCH_DATA=../shared/data python scripts/compare_replay.py mnist --jobs 2
    CLBENCH_DATA=../shared/data python scripts/compare_replay.py cifar100 --jobs 2

`mnist`: split MNIST, the gr_mnist / plr_mnist presets (2x400 MLP, Adam 1e-3, batch 128 +
128 replayed, 2000 iterations per task), reference generative_replay. `cifar100`: split
CIFAR-100 on the frozen CIFAR-10 conv5 extractor's cached features (fc 2000-2000 for BI-R's
methods, 1000-1000-1000 for plr, Adam 1e-4), `protocol=cpu` (500 iterations per task, batch
128 + 128) unless `--protocol paper`, reference internal_replay. `plr_a0` is the PLR
authors' control: their machinery with all replay at a_0. Per-run numbers go to
`--out`/results.json; runs already completed under `--out` are reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from _pool import mean_sd, run_rows

RULES = ("uniform", "cumulative_weights", "total_weights")
PROTOCOLS = {
    "mnist": {
        "reference": "generative_replay",
        "methods": {
            "finetune": ["experiment=gr_mnist", "method=finetune"],
            "generative_replay": ["experiment=gr_mnist"],
            "internal_replay": ["experiment=gr_mnist", "method=internal_replay"],
            **{f"plr_{r}": ["experiment=plr_mnist", f"method.rule={r}"] for r in RULES},
            # the PLR authors' internal-replay control: the same machinery, all replay at a_0
            "plr_a0": ["experiment=plr_mnist", "method.rule=explicit",
                       "method.frequencies=[1,0,0]"],
            "plr_cumulative_weights_extra_layer": [
                "experiment=plr_mnist", "method.rule=cumulative_weights",
                "method.generator_extra_layer=true"],
        },
    },
    "cifar100": {
        "reference": "internal_replay",
        "methods": {
            **{m: ["benchmark=split_cifar100", f"method={m}"]
               for m in ("finetune", "joint", "internal_replay")},
            **{f"plr_{r}": ["benchmark=split_cifar100", "method=plr", f"method.rule={r}"]
               for r in RULES},
            # plr runs the PLR authors' 1024-1000-1000-1000-100
            # (experiment/split_cifar100_mlp_plr): finetuning
            # on it, and their all-at-a_0 control in the same machinery
            "finetune_plr_net": ["benchmark=split_cifar100", "method=finetune",
                                 "model.hidden=[1000,1000,1000]"],
            "plr_a0": ["benchmark=split_cifar100", "method=plr", "method.rule=explicit",
                       "method.frequencies=[1,0,0,0]"],
        },
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", choices=list(PROTOCOLS))
    ap.add_argument("--protocol", choices=["cpu", "paper"], default="cpu",
                    help="cifar100: the CPU-sized or the published budget")
    ap.add_argument("--iters", type=int, default=None,
                    help="iterations per task (default: the protocol's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None,
                    help="subset of the benchmark's methods (default: all)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (worker processes)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default outputs/compare_replay_<benchmark>[_paper]")
    args = ap.parse_args()
    proto = PROTOCOLS[args.benchmark]
    methods = args.methods or list(proto["methods"])
    if unknown := set(methods) - set(proto["methods"]):
        ap.error(f"--methods {sorted(unknown)}: choose from {list(proto['methods'])}")
    paper = args.benchmark == "cifar100" and args.protocol == "paper"
    out = args.out or Path(f"outputs/compare_replay_{args.benchmark}{'_paper' if paper else ''}")
    extra = ["eval.every=0", "logger.console=false"]
    if args.benchmark == "cifar100":
        extra.append(f"protocol={args.protocol}")
    if args.iters:
        extra.append(f"budget.iters={args.iters}")
    found = run_rows({name: proto["methods"][name] for name in methods}, extra, args.seeds,
                     out, args.jobs)
    results = {name: [{"seed": seed, "acc": s["acc_class_il"], "acc_task": s.get("acc_task_il"),
                       "replay": s.get("flops_replay", 0), "train": s["train_flops"],
                       "seconds": s["train_seconds"]} for seed, s in runs]
               for name, runs in found.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    ref_name = proto["reference"]
    ref = results.get(ref_name)
    ref_acc = statistics.mean(100 * r["acc"] for r in ref) if ref else None
    ref_replay = statistics.mean(r["replay"] for r in ref) if ref else None
    print(f"split {args.benchmark} class-IL, {' '.join(extra)}, seeds {args.seeds}\n")
    print("| method | class-IL ACC % (mean ± std) | task-IL ACC % | replay FLOPs | "
          f"× {ref_name} replay FLOPs | train FLOPs | train time |\n|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        accs = [100 * r["acc"] for r in rows]
        tasks = [100 * r["acc_task"] for r in rows if r.get("acc_task") is not None]
        replay = statistics.mean(r["replay"] for r in rows)
        ratio = replay / ref_replay if ref_replay else float("nan")
        ok = (name.startswith("plr") and ref_acc is not None
              and ref_acc - statistics.mean(accs) <= 2 and ratio <= 0.6)
        task = f"{statistics.mean(tasks):.2f}" if tasks else "–"
        print(f"| {name} | {mean_sd(accs)} | {task} | {replay:.3e} | {ratio:.3f} | "
              f"{statistics.mean(r['train'] for r in rows):.3e} | "
              f"{statistics.mean(r['seconds'] for r in rows):.0f} s |"
              f"{f' within 2 points of {ref_name} at <= 0.6x' if ok else ''}")


if __name__ == "__main__":
    main()
