"""What a run trains and how: the config schema (`config.py`), the members trained together (`members.py`), the
paper's SGD (`optim.py`) and learning-rate schedules (`schedules.py`)."""
