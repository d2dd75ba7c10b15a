"""Weights & Biases logging under the same metric names as the CSV files."""

from __future__ import annotations

import os
from pathlib import Path


def wandb_mode(requested: str) -> str:
    """`auto`: online only when the user configured W&B (an API key in the environment
    or in ~/.netrc), offline otherwise, so runs never need an account or a network."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class WandbLogger:
    """One W&B run per Hydra job, grouped by sweep, finished when the job ends."""

    def __init__(self, run_dir, config: dict, name: str, project: str = "clbench",
                 entity: str | None = None, mode: str = "auto", group: str | None = None,
                 tags: list | None = None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, mode=wandb_mode(mode), dir=str(run_dir),
            config=config, name=name, group=group, tags=list(tags or []), reinit="finish_previous",
        )
        self.run.define_metric("step")
        self.run.define_metric("train_task")
        self.run.define_metric("curve/*", step_metric="step")
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("acc_*", step_metric="train_task")

    @staticmethod
    def _per_task(rows, prefix: str = "") -> dict:
        """{<prefix>acc_<scenario>/task<j>: value} for the scenarios the rows carry."""
        return {f"{prefix}{key}/task{r['eval_task']}": r[key] for r in rows
                for key in ("acc_class_il", "acc_task_il", "acc_domain_il")
                if r.get(key) is not None}

    def log_acc_rows(self, rows):
        if rows:
            self.run.log({"train_task": rows[0]["train_task"], **self._per_task(rows)})

    def log_curve_rows(self, rows):
        if rows:
            self.run.log({"step": rows[0]["step"], **self._per_task(rows, "curve/")})

    def log_train_rows(self, rows):
        for r in rows:
            self.run.log({"step": r["step"], "train/loss": r["loss"],
                          "train/flops_cumulative": r["flops_cumulative"]})

    def log_summary(self, summary):
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self):
        self.run.finish()
