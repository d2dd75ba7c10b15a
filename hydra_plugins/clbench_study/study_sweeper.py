"""A Hydra sweeper that launches the jobs listed in a JSON file, each a list of overrides.

Hydra's basic sweeper only takes the cartesian product of swept keys; a study's rows are
sets of overrides that do not combine (row `ewc` is `method=ewc`, row `gr` is
`method=generative_replay model=...`). This sweeper hands exactly those jobs to the
configured launcher (local joblib, submitit SLURM or local, ...) in one launch, so the rows
run in parallel and on a cluster like any `clbench -m` sweep. Plugins must live under the
`hydra_plugins` package for Hydra to accept them; the study logic is in `cl_bench.study`.
Its config is conf/hydra/sweeper/clbench_study.yaml (a file of the search path rather than a
ConfigStore node, so that an editable install, whose package Hydra's plugin scan cannot
list, finds it too).
"""

import json
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.plugins.sweeper import Sweeper


class StudySweeper(Sweeper):
    def __init__(self, jobs_file: str, max_batch_size: int | None = None) -> None:
        super().__init__()
        self.jobs_file = jobs_file
        self.max_batch_size = max_batch_size
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        jobs = [job["overrides"] if isinstance(job, dict) else job
                for job in json.loads(Path(self.jobs_file).read_text())]
        parser = OverridesParser.create()
        swept = [o.input_line for o in parser.parse_overrides(arguments)
                 if o.is_sweep_override()]
        if swept:
            raise ValueError(f"a study lists its jobs itself; remove the sweep {swept} from "
                             "the command line (or add the values as rows of the study)")
        batch = self.max_batch_size or len(jobs) or 1
        returns, start = [], 0
        for i in range(0, len(jobs), batch):
            chunk = [[*arguments, *job] for job in jobs[i: i + batch]]
            returns.append(self.launcher.launch(chunk, initial_job_idx=start))
            start += len(chunk)
        return returns
