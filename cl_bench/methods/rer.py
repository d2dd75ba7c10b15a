"""Relational Experience Replay: per-pair loss weights learned by a one-step look-ahead."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cl_bench.data.batch import Batch
from cl_bench.methods.derpp import DERpp, DERppConf
from cl_bench.methods.er import ER, ReplayConf
from cl_bench.methods.er_ace import ERACE
from cl_bench.schemas import defaults_from, schema


@dataclass
class RelationConf:
    meta_every: int = 5  # a meta step every this many steps of a task (tasks >= 2)
    warm_start: float = 0.5  # fraction of a task trained with the base's fixed weights
    meta_lr: float = 0.001  # Adam of the relation net
    meta_weight_decay: float = 0.0001
    hidden: int = 16  # relation net width
    # ablation: these weights instead of the relation net's after the warm start (no meta
    # steps), one per pair column ([w_new, w_buf]; DER++ [w_new, w_mse, w_buf])
    constant_weights: list[float] | None = field(default=None)


@schema("method", "rer_er")
@dataclass
class RERConf(ReplayConf, RelationConf):
    pass


schema("method", "rer_er_ace")(RERConf)


@schema("method", "rer_derpp")
@dataclass
class RERDERppConf(DERppConf, RelationConf):
    pass


class RelationNet(nn.Module):
    """RER's relation replay network (`MetaMergeNet` in the authors' code): the k per-pair
    losses and the k logit norms each pass their own Linear(k, hidden) + ReLU; the sum goes
    through Linear(hidden, k) and a sigmoid to k weights in (0, 1)."""

    def __init__(self, k: int, hidden: int = 16):
        super().__init__()
        self.losses, self.norms, self.out = nn.Linear(k, hidden), nn.Linear(k, hidden), \
            nn.Linear(hidden, k)

    def forward(self, losses: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(F.relu(self.losses(losses)) + F.relu(self.norms(norms))))


class Relational:
    """Relational Experience Replay (Wang et al., arXiv 2112.15402, "Relational Experience
    Replay: Continual Learning by Adaptively Tuning Task-wise Relationship"), mixed in
    before a replay method (ER, DER++, ER-ACE).

    The i-th current sample is paired with the i-th of each replayed batch (replayed
    batches have the current batch's size); `pair_losses` gives per pair the k loss values
    and k logit norms, and the `RelationNet` maps them (detached) to k weights, the loss
    being sum_j mean_i(w_ij * loss_ij). On tasks >= 2 a meta step runs every `meta_every`
    steps of the task, before the model's step: a functional copy of the model
    (`torch.func.functional_call`) takes the weighted loss on the current batch and a
    replayed batch, one virtual SGD step at the optimiser's current lr (plain SGD whatever
    the optimiser) with the graph kept, and the meta-loss of the stepped copy on a fresh
    memory batch (CE; DER++: + logit MSE on another) is backpropagated into the relation
    net, stepped by its own Adam (`meta_lr`, `meta_weight_decay`). The meta step's memory
    draws are uniform over `memory.stored()` from the method's own generator, and the
    relation net is initialised under a forked RNG, so that neither moves the base
    method's random draws (on a benchmark with augmentation the meta step's passes draw
    their crops and flips from the global RNG: there the fixed phase is the base method's
    loss, not its exact random stream).

    Until `warm_start` x `task_steps` steps of a task (and on the first task) the step is
    the base method's own loss, bit for bit: ER's cross-entropy over the joined batch
    (fixed weights [1/2, 1/2] when the batches have equal size; the authors' `r_er` uses
    [1, beta]), DER++'s [1, alpha, beta], ER-ACE's [1, 1]; after it the learned weights
    replace them. Meta steps already run during the warm start, as in the authors' code.

    Schedule mapping: the authors' code (Mammoth, 50 epochs per task) switches to learned
    weights at epoch > floor(E/2), i.e. after (floor(E/2) + 1)/E of the task (0.52 for
    E = 50), and runs a meta step every floor(E/10) = 5 iterations; at E < 10 its interval
    is 0 and it cannot run. Here both are in steps of the task: `warm_start` a fraction of
    `task_steps` (the planned steps; default 0.5; 1 keeps the fixed weights throughout)
    and `meta_every` steps (default 5). Where the authors' ER-ACE computes its look-ahead
    weights under `no_grad` (so its relation net never receives a gradient) the meta
    gradient flows here as for ER and DER++; ER-ACE's logit norms are those of the
    unmasked logits (its masked ones hold -inf).

    FLOPs of the meta step are tagged `meta`: the look-ahead forward and backward, the
    relation net, the meta forward and backward, and the second-order term (the backward
    of the look-ahead pass differentiated once more, priced as that backward again).
    The mean learned weights per task go to the summary (`rer_w_<name>_per_task`,
    `rer_ratio_buf_new_per_task`, None for a task without learned weights) and per step to
    train.csv (`rer_w_<name>`, `rer_meta_loss`). `constant_weights` (an ablation) puts
    fixed weights in the relation net's place after the warm start and runs no meta step.
    Needs task boundaries (the warm start is a fraction of the task): not for
    `stream=task_free`. The per-sample losses are the
    plain (task-IL masked) cross-entropy: a plugin replacing the classification loss
    applies in the fixed phase only.
    """

    supported_streams = ("task", "online", "blurry")
    # the step within the task, the meta steps' generator and per-task weight sums are
    # outside state_dict: a run resumes from the task's start
    resumes_in_task = False
    weight_names: tuple[str, ...] = ("new", "buf")  # summary/log names, one per pair column
    term_names: tuple[str, ...] = ("ce", "replay")  # the loss terms of the learned phase

    def __init__(self, meta_every: int, warm_start: float, meta_lr: float,
                 meta_weight_decay: float, hidden: int,
                 constant_weights: list[float] | None, **kw):
        if meta_every < 1:
            raise ValueError(f"method.meta_every must be >= 1, got {meta_every}")
        if not 0 <= warm_start <= 1:
            raise ValueError(f"method.warm_start is a fraction of the task in [0, 1], got "
                             f"{warm_start}")
        if meta_lr <= 0 or meta_weight_decay < 0 or hidden < 1:
            raise ValueError(f"method.meta_lr must be > 0, method.meta_weight_decay >= 0 and "
                             f"method.hidden >= 1; got {meta_lr}, {meta_weight_decay}, {hidden}")
        k = len(self.weight_names)
        if constant_weights is not None and (len(constant_weights) != k
                                             or min(constant_weights) < 0):
            raise ValueError(f"method.constant_weights needs {k} weights >= 0 "
                             f"({', '.join(self.weight_names)}) or null, got {constant_weights}")
        super().__init__(**kw)
        self.meta_every, self.warm_start = meta_every, warm_start
        if 0 < warm_start < 1:  # the learned weights start at a share of the planned steps
            self.needs = frozenset({"planned_steps"})
        device = next(self.model.parameters()).device
        self.constant = None if constant_weights is None else \
            torch.tensor([list(constant_weights)], device=device)
        seed = torch.initial_seed() % 2**62
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.relation = RelationNet(k, hidden).to(device)
        self.add_auxiliary("relation", self.relation)  # counted and checkpointed
        self.meta_optimizer = torch.optim.Adam(self.relation.parameters(), lr=meta_lr,
                                               weight_decay=meta_weight_decay)
        self.meta_generator = torch.Generator(self.memory.device).manual_seed(seed + 1)
        self.task_index, self.step_in_task, self.meta_steps = -1, 0, 0
        self.weight_sum = torch.zeros(k, device=device)
        self.weighted_steps = 0
        self.task_weights: list[torch.Tensor | None] = []  # mean learned weights per task

    @classmethod
    def unhonoured(cls, cfg) -> str | None:
        """An option a phase would ignore (cl_bench.checks): after the warm start each
        current sample pairs with one replayed sample, so a replay batch other than the
        training batch would hold only in the warm start; constant weights need a learned
        phase."""
        from cl_bench.checks import batch_size

        m = cfg.method
        if m.warm_start < 1 and m.get("replay_batch_size", None) not in (None,
                                                                         batch_size(cfg)):
            return (f"method.replay_batch_size={m.replay_batch_size}: after the warm start RER "
                    f"pairs each current sample with one replayed sample, so replayed batches "
                    f"have the training batch's {batch_size(cfg)} samples there and the value "
                    f"would hold in the warm start only; set method.replay_batch_size="
                    f"{batch_size(cfg)} (or method.warm_start=1 to keep the base method's "
                    "loss throughout)")
        if m.warm_start >= 1 and m.get("constant_weights") is not None:
            return ("method.constant_weights replaces the learned weights after the warm start, "
                    "and method.warm_start=1 leaves no step after it; lower method.warm_start "
                    "or drop method.constant_weights")
        return None

    # -- phases ---------------------------------------------------------------------------
    def before_task(self, task):
        super().before_task(task)
        self.task_index += 1
        self.step_in_task, self.weighted_steps = 0, 0
        self.weight_sum.zero_()

    def resume_task(self, task):
        super().resume_task(task)
        self.task_index += 1

    def loss(self, batch):
        if self.constant is None and self.task_index >= 1 and len(self.memory) and \
                (self.step_in_task + 1) % self.meta_every == 0:
            self.meta_step(batch)
        if not self.learned_phase():
            return super().loss(batch)
        losses, norms = self.pair_losses(batch, self.forward, self.replay)
        with torch.no_grad():
            weights = self.relation(losses.detach(), norms.detach()) \
                if self.constant is None else self.constant.expand_as(losses)
        mean = weights.mean(0)
        self.weight_sum += mean
        self.weighted_steps += 1
        self.ctx.log.update({f"rer_w_{n}": w
                              for n, w in zip(self.weight_names, mean, strict=True)})
        return dict(zip(self.term_names, (weights * losses).mean(0), strict=True))

    def after_step(self, batch):
        super().after_step(batch)
        self.step_in_task += 1

    def after_task(self, task):
        super().after_task(task)
        self.task_weights.append(self.weight_sum / self.weighted_steps
                                 if self.weighted_steps else None)

    # -- the relation net -----------------------------------------------------------------
    def learned_phase(self) -> bool:
        return (self.task_index >= 1 and self.warm_start < 1 and len(self.memory) > 0
                and (self.warm_start == 0
                     or self.step_in_task >= self.warm_start * self.task_steps))

    def pair_losses(self, batch: Batch, forward, draw) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, k] per-pair losses with their graph, [B, k] logit norms) of the current
        batch and the batches `draw(n, *extras)` replays, through `forward(uint8 x)`."""
        raise NotImplementedError

    def meta_loss(self, forward, n: int) -> torch.Tensor:
        """The look-ahead objective: CE of a fresh memory batch of `n` samples."""
        fresh = self.meta_replay(n)
        return self.per_sample_ce(forward(fresh.x), fresh.y, fresh.task).mean()

    def per_sample_ce(self, logits, y, task_ids) -> torch.Tensor:
        if self.scenario == "task_il":
            logits = logits.masked_fill(~self.class_mask[task_ids], float("-inf"))
        return F.cross_entropy(logits, y, reduction="none")

    def meta_replay(self, n: int, *extras: str) -> Batch:
        """`n` samples drawn uniformly from memory with the meta step's own generator."""
        stored = self.memory.stored()
        idx = torch.randint(0, len(stored), (n,), generator=self.meta_generator,
                            device=self.memory.device)
        return stored[idx]

    def functional_forward(self, values: dict[str, torch.Tensor]):
        """`forward(uint8 x)` of the model with the named parameters `values` (buffers
        cloned: batch-norm statistics of the virtual passes do not reach the model)."""
        tensors = {n: b.clone() for n, b in self.model.named_buffers()} | values
        return lambda x: functional_call(self.model, tensors, (self.preprocess(x, train=True),))

    def meta_objective(self, batch: Batch):
        """(meta-loss with its graph back to the relation net, the look-ahead weights,
        the look-ahead pass's backward FLOPs)."""
        named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        with self.counter.tally() as first:
            losses, norms = self.pair_losses(batch, self.functional_forward(named),
                                             self.meta_replay)
        weights = self.relation(losses.detach(), norms.detach())
        virtual = (weights * losses).mean(0).sum()
        grads = torch.autograd.grad(virtual, list(named.values()), create_graph=True,
                                    allow_unused=True)
        lr = self.optimizer.param_groups[0]["lr"]
        stepped = {n: p if g is None else p - lr * g
                   for (n, p), g in zip(named.items(), grads, strict=True)}
        return self.meta_loss(self.functional_forward(stepped), len(batch)), weights, first

    def meta_step(self, batch: Batch) -> None:
        with self.flops("meta"):
            meta_loss, _, first = self.meta_objective(batch)
            self.meta_optimizer.zero_grad(set_to_none=True)
            meta_loss.backward(inputs=list(self.relation.parameters()))
            self.counter.add(first.flops, dense=first.dense)  # the second-order term
        self.meta_optimizer.step()
        self.meta_steps += 1
        self.ctx.log["rer_meta_loss"] = meta_loss.detach()

    # -- reporting and checkpoints --------------------------------------------------------
    def summary(self) -> dict:
        rows = [None if w is None else w.tolist() for w in self.task_weights]
        out = {f"rer_w_{name}_per_task": [None if r is None else r[j] for r in rows]
               for j, name in enumerate(self.weight_names)}
        out["rer_ratio_buf_new_per_task"] = [None if r is None else r[-1] / r[0] for r in rows]
        return {**super().summary(), **out, "rer_meta_steps": self.meta_steps}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rer": {
            "optimizer": self.meta_optimizer.state_dict(),
            "generator": self.meta_generator.get_state(), "meta_steps": self.meta_steps,
            "task_weights": self.task_weights}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        rer = state["rer"]
        self.meta_optimizer.load_state_dict(rer["optimizer"])
        self.meta_generator.set_state(rer["generator"])
        self.meta_steps, self.task_weights = rer["meta_steps"], list(rer["task_weights"])


@defaults_from(RERConf)
class RelationalER(Relational, ER):
    """RER over ER (the authors' `r_er`): pairs (current sample, replayed sample); one
    forward over the joined batch, as ER's."""

    def pair_losses(self, batch, forward, draw):
        replayed = draw(len(batch))
        joined = batch.cat(replayed)
        logits = forward(joined.x)
        n = len(batch)
        self.report_ce(replayed, logits[n:])
        ce = self.per_sample_ce(logits, joined.y, joined.task)
        norms = logits.norm(dim=1)
        return torch.stack([ce[:n], ce[n:]], 1), torch.stack([norms[:n], norms[n:]], 1)


@defaults_from(RERConf)
class RelationalERACE(Relational, ERACE):
    """RER over ER-ACE (the authors' `r_erace`): the current sample's CE over the classes
    present in its batch, paired with a replayed sample's CE."""

    def pair_losses(self, batch, forward, draw):
        logits = forward(batch.x)
        present = torch.bincount(batch.y, minlength=logits.shape[1]) > 0
        new = self.per_sample_ce(logits.masked_fill(~present, float("-inf")), batch.y,
                                 batch.task)
        replayed = draw(len(batch))
        out = forward(replayed.x)
        self.report_ce(replayed, out)
        return (torch.stack([new, self.per_sample_ce(out, replayed.y, replayed.task)], 1),
                torch.stack([logits.norm(dim=1), out.norm(dim=1)], 1))


@defaults_from(RERDERppConf)
class RelationalDERpp(Relational, DERpp):
    """RER over DER++ (the authors' `r_der`): triples (current sample's CE, a replayed
    sample's logit MSE, another replayed sample's CE), weights [w_new, w_mse, w_buf];
    the look-ahead objective adds the logit MSE of a second fresh memory batch."""

    weight_names = ("new", "mse", "buf")
    term_names = ("ce", "logit_replay", "label_replay")

    def pair_losses(self, batch, forward, draw):
        n = len(batch)
        logits = forward(batch.x)
        first, second = draw(n, "logits"), draw(n)
        out1, out2 = forward(first.x), forward(second.x)
        mse = (out1 - first.logits).pow(2).mean(1)
        self.report_losses(first, mse.detach())
        self.report_ce(second, out2)
        ce = self.per_sample_ce(logits, batch.y, batch.task)
        return (torch.stack([ce, mse, self.per_sample_ce(out2, second.y, second.task)], 1),
                torch.stack([logits.norm(dim=1), out1.norm(dim=1), out2.norm(dim=1)], 1))

    def meta_loss(self, forward, n):
        fresh = self.meta_replay(n, "logits")
        return F.mse_loss(forward(fresh.x), fresh.logits) + super().meta_loss(forward, n)
