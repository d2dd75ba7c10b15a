"""clbench's Hydra sweeper plugin: `hydra/sweeper=clbench_study` launches an explicit list of
jobs (a study's rows x seeds, `cl_bench.study`) through whichever launcher is configured."""
