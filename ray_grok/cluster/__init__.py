"""Where a sweep runs: cluster profiles, Slurm submission, and Ray inside a job (the bootstrap of
each task, its Ray node and processes, the driver on task 0). Runs sweeps through ray_grok.sweep.

    from ray_grok.cluster import load_profile, plan_for
    from ray_grok.cluster.slurm import follow, launch_sweep
"""
from .profiles import LocalProfile, Profile, RaySettings, SlurmProfile, load_profile, plan_for

__all__ = ["LocalProfile", "Profile", "RaySettings", "SlurmProfile", "load_profile", "plan_for"]
