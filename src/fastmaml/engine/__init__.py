"""Meta-training loop, evaluation with 95% confidence intervals, checkpoints and metric logs."""
