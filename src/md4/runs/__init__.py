"""A run directory on disk: its files and lock, its checkpoints, and its metrics log."""
