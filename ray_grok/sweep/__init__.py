"""Sweeps on Ray Tune: grid files, the run directory, the Ray session, the trainable, the driver's
callbacks, launch and resume, status and cost. Runs trials through ray_grok.trial."""
