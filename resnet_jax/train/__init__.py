"""Training: the jitted step and dispatch (`step.py`), the loop (`loop.py`: `Trainer`, `train_and_evaluate`), and
BN statistics recomputed after training (`bn_stats.py`)."""
