"""The run layer on its own: members, the run directory, checkpoints, the metric writer."""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import cifar10
from resnet_jax.core.errors import ConfigError, ModelMismatchError, WorkdirError
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


def test_metric_writer_keeps_each_members_records_and_the_last_of_a_repeated_step(tmp_path):
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
    with pytest.raises(ModelMismatchError, match="another model.*resnet20.*resnet32"):
        with Checkpointer(run_dir, members, other) as checkpointer:
            checkpointer.restore(template)
