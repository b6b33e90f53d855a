"""A run on disk and in memory: its members' state (`state.py`), its directory (`rundir.py`), checkpoints
(`checkpoints.py`), metric records (`metrics.py`), curves (`plots.py`), and loading a run back (`load.py`)."""
