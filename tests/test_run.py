"""The run layer on its own: members, the run directory, checkpoints, the metric writer."""

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import cifar10
from resnet_jax.core.errors import (
    CheckpointSaveError,
    ConfigError,
    ModelMismatchError,
    NoRestorableCheckpointError,
    WorkdirError,
)
from resnet_jax.core.sharding import make_mesh
from resnet_jax.models import create_model
from resnet_jax.recipe.members import Members
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.run.checkpoints import Checkpointer, model_signature
from resnet_jax.run.metrics import MetricWriter, format_duration
from resnet_jax.run.rundir import RunDir
from resnet_jax.run.state import create_train_state, member


def test_members_seeds_folders_and_disk_form():
    one, three = Members(5), Members(first_seed=2, count=3)
    assert one.seeds.tolist() == [5] and three.seeds.tolist() == [2, 3, 4]
    assert one.folders == [""] and three.folders == ["seed2", "seed3", "seed4"]
    tree = {"w": jnp.arange(6.0).reshape(1, 6)}
    assert one.to_disk(tree)["w"].shape == (6,) and one.from_disk(one.to_disk(tree))["w"].shape == (1, 6)
    assert three.to_disk(tree) is tree and three.list_to_disk([1, 2, 3]) == [1, 2, 3]
    assert one.list_to_disk([{"a": 1}]) == {"a": 1} and one.list_from_disk({"a": 1}) == [{"a": 1}]
    assert one.signature() == {} and three.signature() == {"runs": 3}
    assert one.program_mode("gpu") == "unrolled"  # one member is always a plain run's computation
    assert three.program_mode("gpu") == "vmap" and three.program_mode("cpu") == "unrolled"
    assert Members(count=3, mode="vmap").program_mode("cpu") == "vmap"
    with pytest.raises(ConfigError, match="runs must be >= 1"):
        Members(count=0)
    with pytest.raises(ConfigError, match="multi_run"):
        Members(mode="pmap")


@pytest.mark.parametrize("mode", ["vmap", "unrolled"])
def test_members_over_applies_a_function_to_each_member_with_shared_arguments(mode):
    members = Members(count=3, mode=mode)
    f = members.over(lambda x, shared, d: x * shared + d["each"] + d["all"], (0, None, {"each": 0, "all": None}))
    x, d = jnp.arange(3.0), {"each": jnp.array([10.0, 20.0, 30.0]), "all": jnp.float32(100)}
    np.testing.assert_array_equal(jax.jit(f)(x, jnp.float32(2), d), [110.0, 122.0, 134.0])


def test_run_dir_files_members_and_config_defaults(tmp_path):
    run_dir = RunDir(tmp_path / "run").create()
    with pytest.raises(WorkdirError, match="not the workdir of a resnet_jax run"):
        run_dir.read_config()
    assert run_dir.members() == [run_dir]  # no config.json: a single run
    config = cifar10.get_config("resnet20")
    config.runs, config.seed = 2, 7
    run_dir.start(config)
    assert [m.name for m in run_dir.members()] == ["seed7", "seed8"]
    saved = json.loads(run_dir.config_path.read_text())
    del saved["loss_scale"]  # a key added to the code after the run started
    run_dir.config_path.write_text(json.dumps(saved))
    assert run_dir.read_config().loss_scale == 1.0
    run_dir.write_result({"top1_error": 0.1})
    assert run_dir.is_finished() and run_dir.read_result() == {"top1_error": 0.1}
    assert not list(run_dir.path.glob(".*partial"))  # written whole, then renamed
    with pytest.raises(WorkdirError, match="cannot be created or written"):
        RunDir(run_dir.result_path / "below_a_file").create()


def test_metric_writer_keeps_each_members_records_the_last_of_a_repeated_step_and_none_of_a_cut_segment(tmp_path):
    members = RunDir(tmp_path).members(Members(count=2))
    for m in members:
        m.path.mkdir()
    writer = MetricWriter(members, total_steps=10)
    writer.write(1, "train", [{"loss": 2.0}, {"loss": 3.0}])
    writer.write(1, "train", [{"loss": 1.5}, {"loss": 2.5}])  # a resumed run repeats a step: the last wins
    writer.write(2, "eval", [{"top1_error": 0.5}, {"top1_error": 0.4}])
    writer.close()
    assert [r["loss"] for r in members[1].read_metrics() if r["kind"] == "train"] == [2.5]
    assert [r["kind"] for r in members[0].read_metrics()] == ["eval", "train"]
    assert all(list(m.tensorboard.iterdir()) for m in members)
    # Resumed at step 1 (its checkpoint): the cut segment's records after it go, and a redone step is written once.
    writer = MetricWriter(members, total_steps=10, start_step=1)
    writer.write(2, "train", [{"loss": 1.0}, {"loss": 1.1}])
    writer.write(2, "train", [{"loss": 0.9}, {"loss": 1.0}])
    writer.close()
    assert [(r["kind"], r["step"]) for r in members[0].read_metrics()] == [("train", 1), ("train", 2)]
    assert len(members[0].metrics_path.read_text().splitlines()) == 2
    assert format_duration(90061) == "1d 01:01:01" and format_duration(59) == "00:00:59"


@functools.cache  # one initialisation per member count: the tests only read it
def _state(members):
    model = create_model("resnet20", num_classes=10)
    optimizer = make_optimizer(momentum=0.9, weight_decay=1e-4)
    return model, create_train_state(model, optimizer, (32, 32, 3), members, make_mesh())


def _model_config(name="resnet20"):
    return ml_collections.ConfigDict({"name": name, "num_classes": 10})


@pytest.mark.parametrize("count", [1, 2])
def test_checkpoints_round_trip_and_hold_a_single_run_without_the_member_axis(tmp_path, count):
    members = Members(count=count)
    _, state = _state(members)
    state = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
    run_dir = RunDir(tmp_path).create()
    signature = model_signature(_model_config(), members, state.params)
    schedules = [{"warmup_ended_at": k} for k in range(count)]
    with Checkpointer(run_dir, members, signature) as checkpointer:
        assert checkpointer.restore(state) is None  # nothing saved yet
        checkpointer.save(4, state, {"position": 4}, schedules)
    saved = ocp.PyTreeCheckpointer().metadata(run_dir.checkpoint(4) / "state").item_metadata.tree
    assert tuple(saved["params"]["conv1"]["kernel"].shape) == (() if count == 1 else (count,)) + (3, 3, 3, 16)
    _, template = _state(members)
    with Checkpointer(run_dir, members, signature) as checkpointer:
        restored = checkpointer.restore(template)
    assert restored.step == 4 and restored.data_state == {"position": 4} and restored.schedule_states == schedules
    jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)
    assert member(restored.state.params)["conv1"]["kernel"].shape == (3, 3, 3, 16)

    other = model_signature(_model_config("resnet32"), members, _state(members)[1].params)
    with pytest.raises(ModelMismatchError, match="another model.*resnet20.*resnet32") as e:
        with Checkpointer(run_dir, members, other) as checkpointer:
            checkpointer.restore(template)
    assert "num_classes" not in str(e.value) and "parameter_shapes" not in str(e.value)  # only what differs


def _files(folder) -> list[tuple[str, bytes]]:
    """Every file under `folder`: (path relative to it, bytes)."""
    folder = Path(folder)
    return sorted((str(p.relative_to(folder)), p.read_bytes()) for p in folder.rglob("*") if p.is_file())


def _damage(run_dir: RunDir, step: int, item: str) -> None:
    """Checkpoint `step`'s `item` damaged: its state's data files emptied, or its meta's JSON cut."""
    if item == "meta":
        (run_dir.checkpoint(step) / "meta" / "metadata").write_text("{")
        return
    for path in Path(run_dir.checkpoint(step) / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 100:
            path.write_bytes(b"")


def _saved_runs(tmp_path, steps=(2, 4, 6)):
    members = Members()
    _, state = _state(members)
    run_dir = RunDir(tmp_path).create()
    signature = model_signature(_model_config(), members, state.params)
    with Checkpointer(run_dir, members, signature) as checkpointer:
        for step in steps:
            checkpointer.save(step, state, {"position": step}, [{"warmup_ended_at": step}])
            checkpointer.wait()
        assert checkpointer.latest_step == steps[-1]
    return run_dir, members, signature, state


def test_the_newest_checkpoint_that_restores_is_taken_and_damaged_ones_are_moved_aside_untouched(tmp_path, caplog):
    run_dir, members, signature, template = _saved_runs(tmp_path)
    with Checkpointer(run_dir, members, signature, read_only=True) as reader:
        assert reader.restore(template).step == 6  # the newest, not the first
    _damage(run_dir, 6, "state")
    damaged = _files(run_dir.checkpoint(6))
    with Checkpointer(run_dir, members, signature, read_only=True) as reader:  # a reader moves nothing
        assert reader.restore(template).step == 4 and run_dir.saved_steps() == [2, 4, 6]
        with pytest.raises(NoRestorableCheckpointError, match=r"restores \(step 6: .*\)\. Rerun") as e:
            reader.restore(template, step=6)
        assert "moved" not in str(e.value)
        with pytest.raises(WorkdirError, match=r"no checkpoint of step 3; it has \[2, 4, 6\]"):
            reader.restore(template, step=3)
    with Checkpointer(run_dir, members, signature) as checkpointer:
        with pytest.raises(NoRestorableCheckpointError) as e:  # a step asked for by name is never moved
            checkpointer.restore(template, step=6)
        assert "moved" not in str(e.value) and run_dir.saved_steps() == [2, 4, 6]
        restored = checkpointer.restore(template)
        assert restored.step == 4 and restored.data_state == {"position": 4}
        assert checkpointer.latest_step == 4 and run_dir.saved_steps() == [2, 4]
    aside = list(Path(run_dir.path / "damaged_checkpoints").glob("*/6"))
    assert len(aside) == 1 and "Resuming from checkpoint 4; newer ones did not restore: 6:" in caplog.text
    assert _files(aside[0]) == damaged

    _damage(run_dir, 4, "meta")
    _damage(run_dir, 2, "state")
    with Checkpointer(run_dir, members, signature) as checkpointer:
        with pytest.raises(NoRestorableCheckpointError, match=r"\(step 4: .*; step 2: .*\)\. They were moved into"):
            checkpointer.restore(template)
    assert run_dir.saved_steps() == [] and len(list(Path(run_dir.path / "damaged_checkpoints").glob("*/*"))) == 3
    with Checkpointer(run_dir, members, signature, read_only=True) as reader:
        assert reader.restore(template) is None
        with pytest.raises(WorkdirError, match="it has none"):
            reader.restore(template, step=2)


def test_a_reader_neither_creates_the_checkpoints_folder_nor_removes_a_save_in_progress(tmp_path):
    members = Members()
    _, state = _state(members)
    run_dir = RunDir(tmp_path).create()
    signature = model_signature(_model_config(), members, state.params)
    with Checkpointer(run_dir, members, signature, read_only=True):
        pass
    assert not run_dir.checkpoints.exists()
    with Checkpointer(run_dir, members, signature):
        pass
    assert run_dir.checkpoints.is_dir()
    in_progress = run_dir.checkpoints / "8.orbax-checkpoint-tmp-1"  # a trainer's save, not yet renamed
    (in_progress / "state").mkdir(parents=True)
    with Checkpointer(run_dir, members, signature, read_only=True):
        pass
    assert in_progress.exists()
    with Checkpointer(run_dir, members, signature):  # the trainer itself: an unfinished save of a dead process
        pass
    assert not in_progress.exists()


def test_every_save_is_written_and_a_failed_one_says_what_a_checkpoint_needs(tmp_path, monkeypatch):
    run_dir, members, signature, state = _saved_runs(tmp_path, steps=(4,))
    with Checkpointer(run_dir, members, signature) as checkpointer:
        checkpointer.save(2, state, {"position": 2}, [{"warmup_ended_at": 2}])  # below the newest: written too
        checkpointer.wait()
        assert run_dir.saved_steps() == [2, 4]

        def full_disk(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(checkpointer.manager, "save", full_disk)
        # orbax lists a step from the moment its save starts; a rerun resumes from the newest whole one on disk
        monkeypatch.setattr(checkpointer.manager, "all_steps", lambda: [2, 4, 6])
        needed = sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20
        with pytest.raises(CheckpointSaveError) as e:
            checkpointer.save(6, state, {"position": 6}, [{"warmup_ended_at": 6}])
    free = shutil.disk_usage(tmp_path).free / 2**20
    message = str(e.value)
    assert f"Saving the checkpoint of step 6 into {run_dir.checkpoints} failed: OSError(28, " in message
    assert f"needs about {needed:,.0f} MiB, and " in message and message.endswith("resumes from step 4.")
    reported = float(message.split("MiB, and ")[1].split(" MiB")[0].replace(",", ""))
    assert abs(reported - free) < 64  # other writers may change the free space a little meanwhile
    assert run_dir.saved_steps() == [2, 4]
    with Checkpointer(RunDir(tmp_path / "new").create(), members, signature) as checkpointer:
        monkeypatch.setattr(checkpointer.manager, "save", full_disk)
        with pytest.raises(CheckpointSaveError, match=r"resumes from the start \(no checkpoint was saved yet\)\.$"):
            checkpointer.save(2, state, {"position": 2}, [{"warmup_ended_at": 2}])


def test_a_preemption_notice_is_the_manager_s(tmp_path, monkeypatch):
    run_dir, members, signature, _ = _saved_runs(tmp_path, steps=(2,))
    with Checkpointer(run_dir, members, signature) as checkpointer:
        assert checkpointer.reached_preemption(3) is False
        monkeypatch.setattr(checkpointer.manager, "reached_preemption", lambda step: step == 3)
        assert checkpointer.reached_preemption(3) is True and checkpointer.reached_preemption(4) is False
