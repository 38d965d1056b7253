"""Waiting for dependencies: one module per kind, behind one retry loop (``retry.py``)."""
