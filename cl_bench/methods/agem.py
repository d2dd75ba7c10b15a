"""Averaged Gradient Episodic Memory."""

from __future__ import annotations

import torch

from cl_bench.methods.er import ER


class AGEM(ER):
    """A-GEM (Chaudhry et al., ICLR 2019, "Efficient Lifelong Learning with A-GEM"): when
    the gradient g of the current batch conflicts with the gradient g_ref of a memory
    batch (g . g_ref < 0), step along g projected onto the half-space g . g_ref >= 0:
    g - (g . g_ref / g_ref . g_ref) g_ref. Memory is filled as in ER."""

    def observe(self, x, y, task_ids):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.cross_entropy(self.forward(x), y, task_ids)
        loss.backward()
        if len(self.memory):
            params = [p for p in self.model.parameters() if p.grad is not None]
            mx, my, mt = self.memory.sample(self.replay_batch_size)
            ref = torch.autograd.grad(self.cross_entropy(self.forward(mx), my, mt), params)
            dot = sum((p.grad * r).sum() for p, r in zip(params, ref, strict=True))
            ref_sq = sum((r * r).sum() for r in ref)
            coef = dot.clamp(max=0) / ref_sq.clamp(min=1e-12)  # 0 when there is no conflict
            for p, r in zip(params, ref, strict=True):
                p.grad.sub_(coef * r)
        self.optimizer.step()
        self.after_step(x, y, task_ids)
        return {"loss": loss.detach()}
