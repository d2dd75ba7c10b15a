"""Ships the config tree, kept at the repository top (conf/), inside the package as
`cl_bench.conf` (every yaml of every subfolder), and clbench's Hydra sweeper in the
`hydra_plugins` namespace package (Hydra takes plugins only from there); all other metadata
is in pyproject.toml."""

from setuptools import find_namespace_packages, find_packages, setup

CONF = ["cl_bench.conf", *(f"cl_bench.conf.{p}" for p in find_namespace_packages(where="conf"))]

setup(
    packages=[*find_packages(include=["cl_bench", "cl_bench.*"]), *CONF,
              *find_namespace_packages(include=["hydra_plugins.clbench_study"])],
    package_dir={"cl_bench.conf": "conf"},
    package_data={p: ["*.yaml"] for p in CONF},
)
