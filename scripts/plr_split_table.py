"""PLR's nominal level frequencies next to the replay split a step executes (`ceil`, the
authors', and `largest_remainder`) on each preset network, and the classifier replay
pass's cost relative to replaying everything at a_0 (internal replay in the same
machinery): sum_k n_k C_k / (B C_0), C_k the parameters above level k.

    python scripts/plr_split_table.py      # the README table
"""

from __future__ import annotations

import torch

from cl_bench.methods.latent_replay import chunk_sizes
from cl_bench.methods.plr import RULES, plr_frequencies
from cl_bench.models.levels import LevelView
from cl_bench.models.mlp import MLP

NETWORKS = {  # name: (input shape, hidden, classes, replay batch sizes)
    "split MNIST 784-400-400-10": ((1, 28, 28), (400, 400), 10, (128,)),
    "CIFAR-100, PLR authors' 1024-1000-1000-1000-100": ((1024,), (1000,) * 3, 100, (256, 128)),
    "CIFAR-100, BI-R's 1024-2000-2000-100": ((1024,), (2000, 2000), 100, (256, 128)),
}


def main() -> None:
    print("| network | B | rule | nominal f_k x B | ceil | largest remainder | "
          "replay cost vs all at a_0 (nominal / ceil / largest remainder) |")
    print("|---|---|---|---|---|---|---|")
    for name, (shape, hidden, classes, batches) in NETWORKS.items():
        with torch.device("meta"):
            params = LevelView(MLP(shape, classes, hidden=hidden)).param_counts()
        cost = [sum(params[k:]) for k in range(len(params))]
        for b in batches:
            for rule in (r for r in RULES if r != "explicit"):
                f = plr_frequencies(rule, params)
                splits = [chunk_sizes(f, b, s) for s in ("ceil", "largest_remainder")]
                ratios = [sum(n * c for n, c in zip(sizes, cost, strict=True)) / (b * cost[0])
                          for sizes in ([fk * b for fk in f], *splits)]
                print(f"| {name} | {b} | {rule} | {', '.join(f'{fk * b:.2f}' for fk in f)} | "
                      f"{' / '.join(map(str, splits[0]))} | {' / '.join(map(str, splits[1]))} | "
                      f"{' / '.join(f'{r:.3f}' for r in ratios)} |")


if __name__ == "__main__":
    main()
