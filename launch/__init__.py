"""The launching side: which entry point runs a run YAML (kinds), the command that starts it (alone or
under torchrun), and where its run directory is. Sits above train and distill; grid builds on it."""
