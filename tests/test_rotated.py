"""Rotated MNIST stream and incremental joint training (the stability-gap reference)."""

import pandas as pd
import pytest
import torch

from cl_bench.data.rotated import rotate


def test_rotation_matches_exact_quarter_turns():
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    assert torch.equal(rotate(x, 90), torch.rot90(x, 1, (2, 3)))  # counter-clockwise
    assert torch.equal(rotate(x, 180), torch.rot90(x, 2, (2, 3)))
    assert rotate(x, 360) is x
    assert rotate(x, 45).dtype == torch.uint8


def test_incremental_joint_batch_grows_and_keeps_old_tasks(run_job):
    common = ["benchmark=rotated_mnist", "benchmark.dataset=digits", "budget.epochs=null",
              "budget.iters=60", "budget.batch_size=16", "eval.every=20", "eval.plot=false"]
    ij, run_dir = run_job("method=incremental_joint", *common)
    ft, _ = run_job("method=finetune", *common)
    # step on task k trains on 16 * k samples: FLOPs are (1 + 2 + 3) x finetune's
    assert ij["train_flops"] == 6 * ft["train_flops"] // 3
    acc = pd.read_csv(run_dir / "acc_matrix.csv")
    assert len(acc) == 9 and acc.acc_class_il.isna().all()
    last = lambda s: s["acc_domain_il"]  # noqa: E731
    assert last(ij) > last(ft) + 0.05
    assert ij["min_acc_domain_il"] > ft["min_acc_domain_il"]


def test_bad_angles_are_rejected(run_job):
    with pytest.raises(Exception, match="benchmark.angles"):
        run_job("benchmark=rotated_mnist", "benchmark.dataset=digits", "benchmark.angles=[]")
