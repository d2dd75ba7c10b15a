"""Pretrain the conv5 feature extractor on CIFAR-10 and save it as a `.npz` that
`benchmark=split_cifar100_features` (and the split CIFAR-100 protocol of the presets
conf/experiment/split_cifar100_mlp_*) and
`model=conv5_frozen` load (format: the README of the shared conv5_cifar10 weights). They
read `<weights.root>/conv5_cifar10/conv5_cifar10.npz` by default (weights.root:
$CLBENCH_WEIGHTS, else models/ beside the data root), or the file named by
`benchmark.weights=PATH` / `model.weights=PATH`.

    CLBENCH_DATA=../shared/data python scripts/pretrain_extractor.py \
        --out $CLBENCH_WEIGHTS/conv5_cifar10/conv5_cifar10.npz \
        [--epochs 100 --batch-size 128 --lr 0.1]

SGD with Nesterov momentum 0.9, weight decay 5e-4, one-cycle learning rate, random crop
(4-pixel padding) and horizontal flip; prints the test accuracy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.data.datasets import load_dataset
from cl_bench.data.transforms import Preprocess
from cl_bench.models.conv5 import CIFAR10_MEAN, CIFAR10_STD, conv5_extractor, save_conv5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", default=os.environ.get("CLBENCH_DATA"))
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    data = load_dataset("cifar10", args.root)
    extractor, head = conv5_extractor(), nn.Linear(1024, 10)
    model = nn.Sequential(extractor, head)
    prep = Preprocess(CIFAR10_MEAN, CIFAR10_STD, "cpu", augment="crop_flip")
    steps = args.epochs * -(-len(data.train_y) // args.batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        for idx in torch.randperm(len(data.train_y)).split(args.batch_size):
            loss = F.cross_entropy(model(prep(data.train_x[idx], train=True)), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(prep(x)).argmax(1) == y).sum().item() for x, y in
                          zip(data.test_x.split(1000), data.test_y.split(1000), strict=True))
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} test acc "
              f"{correct / len(data.test_y):.4f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_conv5(extractor, head, args.out)


if __name__ == "__main__":
    main()
