"""Experiment configs: one file per paper variant (`get_config(arg)`), shared parts in `common.py`."""
