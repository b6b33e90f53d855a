"""Evaluation under the paper's test protocols: scores per protocol (`scores.py`), results (`results.py`), a
device-resident evaluator (`device.py`) and a streamed one (`streamed.py`), and the choice between them
(`evaluator.py`)."""
