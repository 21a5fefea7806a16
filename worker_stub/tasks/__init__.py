"""Fake service tasks, one module per service; each task has an explicit, stable name."""
