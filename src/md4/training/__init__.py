"""Training: the loop, the run's lifecycle (claim, lock, resume, checkpoint contents), the optimiser and its
parameter groups, and the parallel wrapping."""
