"""How jobs are launched and kept alive: a job's life in its run dir, DDP, SLURM (submitit), the resumable grid
sweeper, the Optuna sweeper, pruning, and interrupts/requeue. The Hydra plugins in `hydra_plugins/` are shims."""
