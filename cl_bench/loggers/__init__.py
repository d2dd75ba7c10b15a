"""Where a run's numbers go: CSV files (always), W&B (optional), the console."""
