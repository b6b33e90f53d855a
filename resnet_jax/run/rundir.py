"""A run's directory: the files a run writes, their names, and reading them back. Nothing else spells them.

    <workdir>/config.json            the run's config, as it started
    <workdir>/resumes.jsonl          one JSON record per resume: its step and the config changes it made
    <workdir>/machines.jsonl         one JSON record per start and resume: its step, time and machine
    <workdir>/result.json            the final evaluation (with every member's, their mean and std, in a multi-run)
    <workdir>/metrics.jsonl          one JSON record per log ("train") and evaluation ("eval")
    <workdir>/tensorboard/           the same as TensorBoard event files
    <workdir>/curves.png             training error dashed, test error bold, against iterations
    <workdir>/evaluations/<protocol>_<split>_<step>.json   evaluations run later by `python -m resnet_jax.evaluate`
    <workdir>/bn_statistics/<step>.msgpack   BN statistics recomputed after training (`bn_statistics='recomputed'`):
                                     what the final evaluation used, and what loading the run gives (the
                                     checkpoint keeps the moving averages, for a run resumed to train further)
    <workdir>/checkpoints/<step>/    orbax checkpoints
    <workdir>/damaged_checkpoints/<time>/<step>/   checkpoints that failed to restore, moved aside untouched

A run of several members (`config.runs` > 1, `resnet_jax.recipe.members`) keeps one config, result and checkpoint
directory, and gives each member (the run of seed s) its own `seed<s>/` with its metrics.jsonl, tensorboard/,
curves.png and result.json; a single run's member files are the run's own. JSON files are written whole and renamed
into place, so a killed process never leaves a half-written one.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import ml_collections
import numpy as np
from etils import epath

from resnet_jax.core.errors import WorkdirError
from resnet_jax.core.files import write_atomically
from resnet_jax.core.machine import run_machine
from resnet_jax.recipe.config import BEFORE_THE_KEY, base_config
from resnet_jax.recipe.members import Members

CONFIG = "config.json"
RESUMES = "resumes.jsonl"
MACHINES = "machines.jsonl"
RESULT = "result.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CURVES = "curves.png"
EVALUATIONS = "evaluations"
CHECKPOINTS = "checkpoints"
DAMAGED_CHECKPOINTS = "damaged_checkpoints"
BN_STATISTICS = "bn_statistics"
LOCAL_ONLY = (CHECKPOINTS, DAMAGED_CHECKPOINTS, TENSORBOARD)
"""What a run's published copy leaves out (a results folder, a lease's finished runs): its weights, whole or moved
aside as damaged, and the event files that repeat metrics.jsonl."""


class RunDir:
    """The directory of one run (or of one member of a multi-run)."""

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)

    def __repr__(self) -> str:
        return f"RunDir({os.fspath(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def create(self) -> RunDir:
        """Creates the directory if needed and checks it can be written; WorkdirError otherwise."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write_probe.{os.getpid()}"  # one per process: several may share the workdir
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise WorkdirError(
                f"The workdir {self.path} cannot be created or written ({error}); choose another "
                "--workdir or fix its permissions."
            ) from error
        return self

    # --- members
    def members(self, members: Members | None = None) -> list[RunDir]:
        """Each member's directory, in member order: of `members`, or of the run's config.json (a run copied without
        its config.json is taken as a single run)."""
        if members is None:
            members = Members.from_config(self.read_config()) if self.config_path.exists() else Members()
        return [RunDir(self.path / folder) if folder else self for folder in members.folders]

    # --- files
    @property
    def config_path(self) -> epath.Path:
        return self.path / CONFIG

    @property
    def result_path(self) -> epath.Path:
        return self.path / RESULT

    @property
    def checkpoints(self) -> epath.Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, step: int) -> epath.Path:
        """The folder of the checkpoint of `step`."""
        return self.checkpoints / str(step)

    def damaged_checkpoints(self) -> epath.Path:
        """A fresh folder (named by the UTC time) to move checkpoints aside into."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        return self.path / DAMAGED_CHECKPOINTS / stamp

    @property
    def metrics_path(self) -> epath.Path:
        return self.path / METRICS

    @property
    def tensorboard(self) -> epath.Path:
        return self.path / TENSORBOARD

    @property
    def curves(self) -> epath.Path:
        return self.path / CURVES

    def saved_steps(self) -> list[int]:
        """The steps of the run's checkpoints, ascending (orbax gives a save its step's name once it is whole)."""
        if not self.checkpoints.exists():
            return []
        return sorted(int(p.name) for p in self.checkpoints.iterdir() if p.name.isdigit())

    def start(self, config: ml_collections.ConfigDict) -> None:
        """Makes `config` the config of a run starting afresh here (no resumes yet)."""
        write_atomically(self.config_path, config.to_json_best_effort(indent=2))
        if self.resumes_path.exists():
            self.resumes_path.unlink()

    @property
    def resumes_path(self) -> epath.Path:
        return self.path / RESUMES

    def record_resume(self, step: int, changes: dict[str, list], accepted: list[str]) -> None:
        """Appends a resume at `step` and the config changes it made ({key: [old, new]}; `accepted`: those accepted
        by name, `--accept_changes`) to resumes.jsonl."""
        _append_record(self.resumes_path, {"step": step, "changes": changes, "accepted": accepted})

    def record_machine(self, step: int) -> None:
        """Appends the machine this stretch of the run computes on from `step` (`machine.run_machine`) to
        machines.jsonl (a run starting afresh, at step 0, starts the file anew): a batch job of hours may start on one
        machine and resume on another."""
        _append_record(self.path / MACHINES, {"step": step, "machine": run_machine()}, fresh=step == 0)

    def machines(self) -> list[dict[str, Any]]:
        """Each stretch's first step and machine, oldest first, the same machine's consecutive stretches merged."""
        merged = []
        for r in _read_records(self.path / MACHINES):
            if not merged or merged[-1]["machine"] != r["machine"]:
                merged.append({"from_step": r["step"], "machine": r["machine"]})
        return merged

    def resumes(self) -> list[dict[str, Any]]:
        """The run's resumes, oldest first (see `record_resume`)."""
        return _read_records(self.resumes_path)

    def read_config(self, as_started: bool = False) -> ml_collections.ConfigDict:
        """The run's config now: config.json with the changes its resumes made (`as_started`: without them); keys
        added to the code since the run was started take their defaults."""
        path = self.config_path
        if not path.exists():
            raise WorkdirError(
                f"{self.path} is not the workdir of a resnet_jax run (it has no {CONFIG}); give the --workdir that "
                "`python -m resnet_jax.main` trained in."
            )
        saved = json.loads(path.read_text())
        for resume in [] if as_started else self.resumes():
            for key, (_, value) in resume["changes"].items():
                *parents, leaf = key.split(".")
                node = saved
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = value
        defaults = base_config(saved["data"]["name"], saved["model"]["name"]).to_dict()
        for (parent, key), value in BEFORE_THE_KEY.items():
            defaults[parent][key] = value
        return ml_collections.ConfigDict(_with_defaults(saved, defaults))

    def write_result(self, result: dict[str, Any]) -> None:
        write_atomically(self.result_path, json.dumps(result, indent=2))

    def write_bn_statistics(self, step: int, batch_stats: Any) -> None:
        """Stores the BN statistics recomputed for the state of `step` (every member's, on the host), whole."""
        data = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, batch_stats))
        (self.path / BN_STATISTICS).mkdir(parents=True, exist_ok=True)
        write_atomically(self.path / BN_STATISTICS / f"{step}.msgpack", data)

    def read_bn_statistics(self, step: int) -> Any | None:
        """The BN statistics recomputed for the state of `step` (NumPy arrays), None if none were stored."""
        path = self.path / BN_STATISTICS / f"{step}.msgpack"
        return flax.serialization.msgpack_restore(path.read_bytes()) if path.exists() else None

    def read_result(self) -> dict[str, Any] | None:
        path = self.result_path
        return json.loads(path.read_text()) if path.exists() else None

    def is_finished(self) -> bool:
        """Whether the run wrote its final result."""
        return self.result_path.exists()

    def write_evaluation(self, step: int, result: dict[str, Any]) -> epath.Path:
        """Stores a later evaluation of the checkpoint of `step` (a dict with protocol and split); returns its path."""
        folder = self.path / EVALUATIONS
        folder.mkdir(exist_ok=True)
        path = folder / f"{result['protocol']}_{result['split']}_{step}.json"
        write_atomically(path, json.dumps({"step": step, **result}, indent=2))
        return path

    def evaluations(self) -> list[dict[str, Any]]:
        """The later evaluations, oldest checkpoint first (each a dict with step, protocol, split and errors)."""
        folder = self.path / EVALUATIONS
        records = [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []
        return sorted(records, key=lambda r: r["step"])

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metric records, sorted by kind and step (a resumed run may repeat steps: the last record wins)."""
        records: dict[tuple[str, int], dict] = {}
        if self.metrics_path.exists():
            for line in self.metrics_path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    records[(record["kind"], record["step"])] = record
        return sorted(records.values(), key=lambda r: (r["kind"], r["step"]))

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        """Rewrites the metric log whole (object stores such as GCS cannot append)."""
        write_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in records))


def _with_defaults(saved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    merged = dict(saved)
    for key, value in defaults.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _with_defaults(merged[key], value)
    return merged


def as_run_dir(workdir: str | os.PathLike | RunDir) -> RunDir:
    return workdir if isinstance(workdir, RunDir) else RunDir(workdir)


def local_path(path: epath.Path) -> Path | None:
    """`path` as a local filesystem path, or None for an object store (gs://)."""
    text = os.fspath(path)
    return None if "://" in text else Path(text)


def _read_records(path: epath.Path) -> list[dict[str, Any]]:
    """The JSON records of a .jsonl file of the run directory, oldest first; none if it does not exist."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _append_record(path: epath.Path, record: dict[str, Any], fresh: bool = False) -> None:
    """Appends `record`, stamped with the time, to a .jsonl file of the run directory (`fresh`: as its only record),
    rewriting the file whole."""
    old = [] if fresh else _read_records(path)
    stamped = {"step": record["step"], "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    write_atomically(path, "".join(json.dumps(r) + "\n" for r in [*old, {**stamped, **record}]))
