"""GEM (Lopez-Paz & Ranzato, 2017): the dual QP against a brute-force solution, the
projected step inside the past tasks' cone, and a real run where it beats A-GEM and
fine-tuning in class-IL at the FLOPs it reports."""

from __future__ import annotations

import itertools

import pytest
import torch

from cl_bench.methods.gem import solve_dual


def brute_force(gram, dots, margin):
    """The QP's minimiser over every active set (each v_i = margin or free)."""
    n, best, value = len(dots), None, float("inf")
    for free in itertools.product([False, True], repeat=n):
        v = torch.full((n,), margin, dtype=torch.float64)
        idx = torch.tensor([i for i in range(n) if free[i]], dtype=torch.long)
        if len(idx):
            fixed = torch.tensor([i for i in range(n) if not free[i]], dtype=torch.long)
            rhs = -dots[idx] - gram[idx][:, fixed] @ v[fixed]
            v[idx] = torch.linalg.solve(gram[idx][:, idx], rhs)
        if (v < margin - 1e-12).any():
            continue
        f = 0.5 * v @ gram @ v + dots @ v
        if f < value:
            best, value = v, f
    return best


@pytest.mark.parametrize("seed, margin", [(0, 0.0), (1, 0.5), (2, 0.0), (3, 0.5)])
def test_dual_solution_is_the_brute_force_minimiser(seed, margin):
    gen = torch.Generator().manual_seed(seed)
    G = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    g = torch.randn(30, generator=gen, dtype=torch.float64) - 0.5 * G.sum(0)  # conflicts
    gram = G @ G.T + 1e-3 * torch.eye(4, dtype=torch.float64)
    v = solve_dual(gram, G @ g, margin)
    torch.testing.assert_close(v, brute_force(gram, G @ g, margin), rtol=1e-6, atol=1e-8)


def test_projected_gradient_raises_no_past_loss_and_is_the_closest_such():
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    g = -G[0] + 0.1 * torch.randn(12, generator=gen, dtype=torch.float64)  # violates task 0
    assert (G @ g < 0).any()
    gram = G @ G.T + 1e-9 * torch.eye(3, dtype=torch.float64)
    z = g + solve_dual(gram, G @ g, 0.0) @ G
    assert (G @ z >= -1e-7).all()  # the primal constraint: no past task's loss rises
    # any other feasible point is further from g (KKT makes z the projection onto the cone)
    for _ in range(200):
        other = z + 0.05 * torch.randn(12, generator=gen, dtype=torch.float64)
        if (G @ other >= 0).all():
            assert (other - g).norm() >= (z - g).norm() - 1e-9


def test_gem_beats_agem_and_finetune_in_class_il_at_its_reported_cost(run_job):
    """8x8 digits, 50 steps per task, seed 0 (measured: GEM 84 %, A-GEM 28 %, fine-tuning
    19 % class-IL): the memory gradients each step are GEM's cost, counted by component."""
    runs = {m: run_job(f"method={m}", "budget.iters=50", "eval.every=0")[0]
            for m in ("gem", "agem", "finetune")}
    gem = runs["gem"]
    assert gem["acc_class_il"] > runs["agem"]["acc_class_il"] + 0.2
    assert gem["acc_class_il"] > runs["finetune"]["acc_class_il"] + 0.3
    assert gem["gem_projected"] > 0
    assert gem["flops_gem_memory"] > 10 * runs["finetune"]["train_flops"]
    assert gem["train_flops"] >= gem["flops_gem_memory"] + gem["flops_gem_projection"]


def test_bad_values_name_the_key(run_job):
    with pytest.raises(Exception, match="method.per_task"):
        run_job("method=gem", "method.per_task=0", "budget.iters=2")
