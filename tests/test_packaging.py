"""A wheel alone, installed away from the source checkout, holds the config tree and runs
`clbench` (issue 11)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _no_build_isolation() -> list[str]:
    """Build with this environment's setuptools when it can (offline), else let pip fetch one."""
    try:
        major_minor = tuple(int(part) for part in version("setuptools").split(".")[:2])
    except Exception:  # not installed, or an odd version string
        return []
    return ["--no-build-isolation"] if major_minor >= (70, 1) else []  # 70.1: own bdist_wheel


def test_wheel_ships_the_config_tree_and_runs_from_an_unrelated_directory(tmp_path):
    src = tmp_path / "src"  # a copy, so that the build leaves no build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("cl_bench", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", *_no_build_isolation(), "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("cl_bench-*.whl"))

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"cl_bench/conf/{p.relative_to(REPO / 'conf').as_posix()}"
                for p in (REPO / "conf").rglob("*.yaml")}
    expected |= {p.relative_to(REPO).as_posix() for p in (REPO / "cl_bench").rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert "cl_bench/conf/hydra/launcher/slurm.yaml" in names

    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    cwd = tmp_path / "x"
    cwd.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
           "PYTHONPATH": str(target), "HYDRA_FULL_ERROR": "0"}

    def run(*cmd):
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)

    where = run(sys.executable, "-c", "import cl_bench, cl_bench.cli; "
                "print(cl_bench.__file__, cl_bench.cli.CONF_DIR, sep='\\n')")
    assert where.returncode == 0, where.stderr
    module, conf_dir = (Path(line) for line in where.stdout.splitlines())
    assert module.resolve().is_relative_to(target.resolve())  # the wheel, not the checkout
    assert conf_dir.resolve() == (target / "cl_bench" / "conf").resolve()

    clbench = str(target / "bin" / "clbench")  # the console script of the wheel
    shown = run(clbench, "--help")
    assert shown.returncode == 0 and "Traceback" not in shown.stdout + shown.stderr, shown.stderr
    assert "method: " in shown.stdout and "hydra/launcher: local" in shown.stdout

    done = run(clbench, "budget.iters=5", "eval.every=0", "logger.console=false")
    assert done.returncode == 0, done.stderr
    runs = list(cwd.glob("outputs/runs/*/*/summary.json"))
    assert len(runs) == 1
    assert json.loads(runs[0].read_text())["status"] == "completed"
