"""Run identity: a run id that is a function of the resolved config, the seed and the code
version (after van de Ven's parameter stamp), and finding earlier runs by that id."""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import cl_bench
from cl_bench.data.modes import StreamConf

# stream=task as shipped stays out of the stamp: ids of runs from before stream modes hold
DEFAULT_STREAM = {f"stream.{k}": v for k, v in asdict(StreamConf()).items()}

# keys that say where or how a run is written or shown, not what it computes
NOT_IN_ID = ("hydra", "output_root", "skip_done", "checkpoint", "data.root", "data.download",
             "logger", "weights.root", "cache", "benchmark.cache", "threads")


def flatten(container: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in container.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = json.dumps(value) if isinstance(value, list) else value
    return flat


def resolved_flat(cfg: DictConfig) -> dict:
    """Every resolved config key by dotted name, without the hydra node."""
    keys = [k for k in cfg if k != "hydra"]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True,
                                       enum_to_str=True)
    return flatten(container)


@functools.cache
def git_commit(src: Path | None = None) -> str:
    """The commit of the checkout holding the package (folder `src`; `-dirty` with
    uncommitted changes), or `unknown` where the package is not a file of a git checkout
    (a wheel install, even one inside a repository)."""
    src = src or Path(cl_bench.__file__).resolve().parent
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"],
                                 cwd=src, capture_output=True, timeout=10).returncode == 0
        if not tracked:
            return "unknown"
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=src,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=src, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty.strip() else "")) if commit else "unknown"


def source_files(package: Path) -> list[Path]:
    """The files that make clbench's behaviour: the package's .py and .yaml files (a
    wheel's packaged conf/ included) and, in a checkout, conf/ beside the package."""
    roots = [package] + ([package.parent / "conf"] if not (package / "conf").is_dir()
                         and (package.parent / "conf").is_dir() else [])
    return sorted(p for root in roots for p in root.rglob("*")
                  if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)


@functools.cache
def source_hash() -> str:
    """12 hex digits of a sha256 over the installed source (`source_files`, by path relative
    to the package's parent, and content): two builds of one version from different
    sources differ."""
    return _hash_of(Path(cl_bench.__file__).resolve().parent)


def _hash_of(package: Path) -> str:
    digest = hashlib.sha256()
    for path in source_files(package):
        digest.update(path.relative_to(package.parent).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def code_version() -> list[str]:
    """What the run id takes of the code: the version and the git commit, or, without git
    (a wheel install), the version and the hash of the installed source."""
    commit = git_commit()
    return [cl_bench.__version__, commit if commit != "unknown" else source_hash()]


def run_id(cfg: DictConfig) -> str:
    """12 hex digits of a hash of the resolved config (seed included, output paths and
    logging excluded) and the code version."""
    stamp = config_stamp(cfg)
    if all(stamp.get(k) == v for k, v in DEFAULT_STREAM.items()):
        stamp = {k: v for k, v in stamp.items() if k not in DEFAULT_STREAM}
    digest = hashlib.sha1(json.dumps([stamp, code_version()], sort_keys=True,
                                     default=str).encode())
    return digest.hexdigest()[:12]


def find_runs(output_root: str | Path, rid: str) -> list[tuple[Path, dict]]:
    """Earlier run directories with this run id (directory names carry it), newest first,
    each with its summary (empty when the run died before writing one)."""
    found = []
    for summary_dir in Path(output_root).glob(f"**/*{rid}*"):
        if not summary_dir.is_dir():
            continue
        path = summary_dir / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        if summary.get("run_id", rid) == rid:
            found.append((summary_dir, summary))
    return sorted(found, key=lambda item: item[0].stat().st_mtime, reverse=True)


def config_stamp(cfg: DictConfig) -> dict:
    """The resolved config keys that make a run's result (output paths, logging excluded)."""
    return {k: v for k, v in resolved_flat(cfg).items()
            if not any(k == p or k.startswith(p + ".") for p in NOT_IN_ID)}


def same_config(summary: dict, cfg: DictConfig) -> bool:
    """Whether a saved run's summary (which carries its resolved config by dotted key) was
    made with `cfg`, on the keys both know (a key added to the schema since is ignored; the
    summary's `device` is the device the run resolved `device=auto` to)."""
    return all(summary[k] == v for k, v in config_stamp(cfg).items()
               if k in summary and k != "device")
