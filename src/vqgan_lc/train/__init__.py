"""The training harness shared by every model family (see loop.py)."""
