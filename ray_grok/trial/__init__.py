"""One trial of the paper's experiment: config, data, model, optimizer, evaluation, checkpoints,
the trial directory's files and the loop. Knows nothing of Ray, sweeps or clusters."""
