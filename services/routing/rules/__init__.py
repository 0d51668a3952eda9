"""Competence rules as data (YAML): one file per Land plus ``default.yaml``; see ``services/routing/competence.py``."""
