"""Replay-family methods (issue 3) on the digits stream: each beats finetune, and the
pieces they rely on (logits stored with memory samples, A-GEM's projection) are exact."""

import pytest
import torch
from hydra.utils import instantiate

from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.experiment import run_experiment
from cl_bench.memory.reservoir import Reservoir
from conftest import compose_config, needs_mnist

FAST = ("memory.size=100", "eval.every=0")


@pytest.fixture(scope="module")
def finetune(tmp_path_factory):
    cfg = compose_config(["logger.console=false", "method=finetune", "eval.every=0"])
    return run_experiment(cfg, tmp_path_factory.mktemp("ft"))


def test_derpp_beats_finetune(run_job, finetune):
    summary, _ = run_job("method=derpp", *FAST)
    assert summary["acc_class_il"] > finetune["acc_class_il"] + 0.35
    assert summary["acc_task_il"] > finetune["acc_task_il"]


@pytest.mark.slow
@pytest.mark.parametrize("method, class_margin", [("der", 0.35), ("er_ace", 0.35),
                                                  ("agem", 0.0), ("icarl", 0.35), ("gcr", 0.35),
                                                  ("gdumb", 0.35)])
def test_replay_method_beats_finetune(run_job, finetune, method, class_margin):
    summary, _ = run_job(f"method={method}", *FAST)
    assert summary["acc_class_il"] > finetune["acc_class_il"] + class_margin
    assert summary["acc_task_il"] > finetune["acc_task_il"]


@needs_mnist
def test_unsupported_scenario_fails_before_training(run_job):
    with pytest.raises(Exception, match="method=icarl does not support scenario=domain_il"):
        run_job("benchmark=permuted_mnist", "method=icarl")


def test_der_memory_carries_logits_with_each_sample():
    memory = Reservoir(20, seed=0)
    for start in range(0, 100, 10):
        ids = torch.arange(start, start + 10)
        logits = ids.float().unsqueeze(1).expand(-1, 3) * torch.tensor([1.0, 2.0, 3.0])
        memory.add(Batch(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), ids, torch.zeros_like(ids),
                         {"logits": logits}))
    b = memory.sample(50, "logits")
    x, y, z = b.x, b.y, b.logits
    assert x.dtype == torch.uint8 and z.shape == (50, 3)
    assert torch.equal(z, y.float().unsqueeze(1) * torch.tensor([1.0, 2.0, 3.0]))
    assert memory.nbytes == 20 * (4 + 8 + 8 + 3 * 4)  # x, y, task, logits


def test_agem_projection_removes_the_conflict():
    cfg = compose_config(["method=agem", "method.replay_batch_size=8"])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    memory = Reservoir(8, seed=0)
    method = instantiate(cfg.method, model=model, optimizer=instantiate(cfg.optimizer),
                         memory=memory, preprocess=Preprocess((0.0,), (1.0,), "cpu"),
                         class_mask=torch.ones(1, 3, dtype=torch.bool), scenario="class_il")
    # eight copies of one sample: whatever A-GEM draws, its reference gradient is this one's
    mx = torch.randint(0, 255, (1, 1, 2, 2), dtype=torch.uint8).expand(8, -1, -1, -1)
    memory.add(Batch(mx, torch.zeros(8, dtype=torch.long), torch.zeros(8, dtype=torch.long)))
    x = mx[:4]  # same inputs, other label: the gradients conflict
    y = torch.ones(4, dtype=torch.long)
    method.optimizer.step = lambda: None  # inspect the projected gradient only
    method.observe(Batch(x, y, torch.zeros(4, dtype=torch.long)))
    projected = torch.cat([p.grad.flatten() for p in model.parameters()])
    model.zero_grad()
    ref_loss = method.cross_entropy(model(method.preprocess(mx)), torch.zeros(8).long(), None)
    ref = torch.cat([g.flatten() for g in torch.autograd.grad(ref_loss, model.parameters())])
    assert projected @ ref == pytest.approx(0.0, abs=1e-6)
    assert projected.norm() > 0
