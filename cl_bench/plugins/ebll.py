"""Encoder-Based Lifelong Learning: LwF plus one under-complete autoencoder per task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.plugins.base import Plugin, PluginConf
from cl_bench.plugins.lwf import LwF
from cl_bench.schemas import defaults_from, schema


@schema("plugin", "ebll")
@dataclass
class EBLLConf(PluginConf):
    _target_: str = "cl_bench.plugins.ebll.EBLL"
    # alpha, the weight of the code loss (De Lange et al.'s survey code starts it at 1)
    strength: float = 1.0
    code_dim: int = 100  # Rannen et al.: 100-unit codes
    # weight of the reconstruction next to the classification through it (Rannen et al.,
    # and the survey's code: 1e-6)
    reconstruction: float = 1.0e-6
    # epochs over the finished task's features (CPU-sized: the survey's code trains up to
    # 100 with early stopping)
    ae_epochs: int = 5
    ae_lr: float = 0.01  # Adam, as the survey's fine_tune_Adam_Autoencoder
    ae_batch_size: int = 128


class AutoEncoder(nn.Module):
    """sigmoid(W_e f) -> W_d code: an under-complete autoencoder on the features."""

    def __init__(self, features: int, code: int):
        super().__init__()
        self.encoder, self.decoder = nn.Linear(features, code), nn.Linear(code, features)

    def code(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.encoder(f))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.code(f))


@defaults_from(EBLLConf)
class EBLL(Plugin):
    """EBLL (Rannen, Aljundi, Blaschko & Tuytelaars, ICCV 2017, "Encoder Based Lifelong
    Learning"), next to the lwf plugin (listed before it, whose teacher it shares): when a
    task ends, an under-complete autoencoder is trained on the features of that task's
    training data, to reconstruct them well enough that the task's head still classifies
    the reconstruction (loss: cross-entropy of the head on the reconstruction +
    `reconstruction` x MSE). While later tasks train, every earlier task's code of the
    current features is pulled toward its code of the teacher's features: term `ebll` =
    `strength` x sum over earlier tasks of the MSE between sigmoid(W_e F(x)) and
    sigmoid(W_e F*(x)). FLOPs: `flops_ebll` (the feature passes and codes of each step),
    `flops_ebll_autoencoder` (training the autoencoders)."""

    needs_plugins = ("lwf",)

    def __init__(self, strength: float, code_dim: int, reconstruction: float, ae_epochs: int,
                 ae_lr: float, ae_batch_size: int):
        if strength < 0 or reconstruction < 0:
            raise ValueError(f"plugins.ebll.strength={strength} and reconstruction="
                             f"{reconstruction} must be >= 0")
        if min(code_dim, ae_epochs, ae_batch_size) < 1 or not ae_lr > 0:
            raise ValueError("plugins.ebll.code_dim, ae_epochs and ae_batch_size must be >= 1 "
                             f"and ae_lr > 0, got {code_dim}, {ae_epochs}, {ae_batch_size}, "
                             f"{ae_lr}")
        self.strength, self.code_dim, self.reconstruction = strength, code_dim, reconstruction
        self.ae_epochs, self.ae_lr, self.ae_batch_size = ae_epochs, ae_lr, ae_batch_size
        self.encoders = nn.ModuleList()  # one per finished task

    def check_model(self, model):
        if not (hasattr(model, "features") and hasattr(model, "head")):
            raise ValueError(f"plugins.ebll needs a model with `features` and `head`, got "
                             f"{type(model).__name__}: use model=mlp, convnet or a resnet")

    def lwf(self) -> LwF:
        return next(p for p in self.method.plugins if isinstance(p, LwF))

    def loss(self, batch):
        teacher = self.lwf().teacher
        if teacher is None or not len(self.encoders) or self.strength == 0:
            return {}
        m = self.method
        with m.flops("ebll"):
            x = m.preprocess(batch.x, train=True)
            f = m.model.features(x)
            with torch.no_grad():
                target = teacher.features(x)
            loss = sum(F.mse_loss(ae.code(f), ae.code(target).detach()) for ae in self.encoders)
        return {"ebll": self.strength * loss}

    def after_task(self, task):
        m, teacher = self.method, self.lwf().teacher
        with torch.no_grad():
            dim = teacher.features(m.preprocess(task.train_x[:1], train=False)).shape[1]
        ae = AutoEncoder(dim, self.code_dim).to(m.class_mask.device)
        m.counter.attach(ae)
        optimizer = torch.optim.Adam(ae.parameters(), lr=self.ae_lr)
        active = m.class_mask[task.id]
        gen = torch.Generator().manual_seed(torch.initial_seed() + 104729 * (task.id + 1))
        n = len(task.train_y)
        with m.flops("ebll_autoencoder"):
            for _ in range(self.ae_epochs):
                for idx in torch.randperm(n, generator=gen).split(self.ae_batch_size):
                    idx = idx.to(task.train_y.device)
                    with torch.no_grad():
                        f = teacher.features(m.preprocess(task.train_x[idx], train=False))
                    recon = ae(f)
                    logits = teacher.head(recon).masked_fill(~active, float("-inf"))
                    loss = (F.cross_entropy(logits, task.train_y[idx])
                            + self.reconstruction * F.mse_loss(recon, f))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        self.encoders.append(ae.requires_grad_(False).eval())

    def state_dict(self):
        return {"encoders": [ae.state_dict() for ae in self.encoders]}

    def load_state_dict(self, state):
        self.encoders = nn.ModuleList()
        for weights in state["encoders"]:
            code, dim = weights["encoder.weight"].shape
            ae = AutoEncoder(dim, code).to(self.method.class_mask.device)
            ae.load_state_dict(weights)
            self.method.counter.attach(ae)
            self.encoders.append(ae.requires_grad_(False).eval())
