"""Reading saved runs back: tables and plots (clbench-compare)."""
