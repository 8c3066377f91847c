"""Where a sweep runs: cluster profiles, Slurm submission, and Ray inside a Slurm job (the bootstrap
of each task, its Ray node, its processes, the driver on task 0)."""
