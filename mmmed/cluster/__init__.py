"""Scale and cluster: the memory planner, SLURM job sizes and preemption-safe requeue, sweep search spaces."""
