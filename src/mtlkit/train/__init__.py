"""Training: the loop (trainer), one optimisation step (step), evaluation, checkpoints, run folders."""
