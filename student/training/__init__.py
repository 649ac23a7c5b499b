"""Distilling a student from a cache: the loop (train.py), its settings and recipes, the streaming data, losses,
initialisation, validation, checkpoints, DDP and the model card. Above the model (student/*.py)."""
