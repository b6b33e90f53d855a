"""A run's record stays true: a resume may change only what does not change the run, unless told, and records it."""

import json

import chex
import pytest

from configs import cifar10
from resnet_jax.core.errors import ConfigError, ModelMismatchError
from resnet_jax.core.machine import run_machine
from resnet_jax.recipe.changes import check_resume
from resnet_jax.run.rundir import RunDir
from resnet_jax.train.loop import train_and_evaluate
from tests.support.training import REPO, checkpoint_leaves, small_config


def test_resumes_refuse_computing_changes_accept_the_others_and_record_every_one(cifar_slice_data_dir, tmp_path):
    grown, straight = tmp_path / "grown", tmp_path / "straight"
    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=4), str(grown))
    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=8), str(straight))
    started = RunDir(grown).config_path.read_text()

    # A key that changes what the run computes: refused before any work, naming it, its values and the ways on.
    with pytest.raises(
        ConfigError,
        match=r"batch_size saved 32, now 64.*saved values, use a new --workdir.*--accept_changes=batch_size",
    ):
        train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=8, batch_size=64), str(grown))
    assert not RunDir(grown).resumes_path.exists()

    # A longer run and another log interval: accepted, recorded, and the same steps as a run that was 8 long from
    # the start.
    result = train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=8, log_every_steps=2), str(grown))
    for step in (4, 8):
        chex.assert_trees_all_equal(checkpoint_leaves(grown, step), checkpoint_leaves(straight, step))
    run = RunDir(grown)
    (resume,) = run.resumes()
    assert resume["step"] == 4 and resume["accepted"] == []
    assert resume["changes"] == {"log_every_steps": [1, 2], "num_steps": [4, 8]}
    assert result["config_changes"] == [{"step": 4, "changes": resume["changes"]}]
    assert run.config_path.read_text() == started  # config.json stays the config the run started with
    assert run.read_config().num_steps == 8 and run.read_config(as_started=True).num_steps == 4
    # Each stretch's machine: the start's and the resume's, one machine here, so one stretch in result.json.
    here = run_machine()
    assert [(r["step"], r["machine"]) for r in _jsonl(run.path / "machines.jsonl")] == [(0, here), (4, here)]
    assert result["machines"] == [{"from_step": 0, "machine": here}]

    # A deliberate change of a computing key, named on the command line: accepted and recorded as such.
    longer = small_config(cifar_slice_data_dir, num_steps=10, log_every_steps=2, **{"schedule.boundaries": (9,)})
    # A stretch on another machine (its record edited so): result.json names both, each from its first step.
    (run.path / "machines.jsonl").write_text((run.path / "machines.jsonl").read_text().replace(here, "elsewhere"))
    result = train_and_evaluate(longer, str(grown), accept_changes=["schedule.boundaries"])
    assert result["machines"] == [{"from_step": 0, "machine": "elsewhere"}, {"from_step": 8, "machine": here}]
    last = RunDir(grown).resumes()[-1]
    assert last["step"] == 8 and last["accepted"] == ["schedule.boundaries"]
    assert last["changes"] == {"num_steps": [8, 10], "schedule.boundaries": [[32000, 48000], [9]]}
    assert RunDir(grown).read_config().schedule.boundaries == [9]
    with pytest.raises(ConfigError, match="num_steps=6 is behind the run.*at step 10"):
        train_and_evaluate(_with(longer, num_steps=6), str(grown))


def test_a_change_that_keeps_the_weights_resumes_from_the_checkpoints(cifar_slice_data_dir, tmp_path):
    """The checkpoints' own model check asks the same question as check_resume: the library computing the
    convolutions is free, BN's moving-variance rule is a change to accept, the net is neither."""
    workdir = str(tmp_path / "run")
    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=4, **{"model.conv_impl": "xla"}), workdir)
    biased = small_config(cifar_slice_data_dir, num_steps=6, **{"model.bn_unbiased_var": False})
    with pytest.raises(ConfigError, match="model.bn_unbiased_var saved True, now False"):
        train_and_evaluate(biased, workdir)  # refused before any work
    changed = {"model.bn_unbiased_var": False, "model.conv_impl": "auto"}
    resumed = small_config(cifar_slice_data_dir, num_steps=6, **changed)
    assert train_and_evaluate(resumed, workdir, accept_changes=["model.bn_unbiased_var"]) is not None
    (resume,) = RunDir(workdir).resumes()
    assert resume["step"] == 4 and set(resume["changes"]) == {*changed, "num_steps"}


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_what_may_change_depends_on_what_decides_the_run():
    config = cifar10.get_config("resnet20")
    check_resume(config, _with(config, log_every_steps=50, **{"data.worker_count": 9}), 100)
    warmup = cifar10.get_config("resnet110")  # its warm-up ends at a log: the log interval decides the run
    with pytest.raises(ConfigError, match="log_every_steps"):
        check_resume(warmup, _with(warmup, log_every_steps=50), 100)
    grain = _with(config, **{"data.on_device": False})  # grain's iterator state is per worker
    with pytest.raises(ConfigError, match="data.worker_count"):
        check_resume(grain, _with(grain, **{"data.worker_count": 9}), 100)
    with pytest.raises(ConfigError, match="names keys the config does not have: shedule"):
        check_resume(config, config, 100, accepted=["shedule"])
    # Another net: its checkpoints cannot hold it, so no --accept_changes is offered (the checkpoints' own check of
    # the model, for a run resumed without its config, is tested in test_run.py).
    with pytest.raises(ModelMismatchError, match="another model: model.name saved 'resnet20', now 'resnet32'.*workdir"):
        check_resume(config, cifar10.get_config("resnet32"), 100)
    # Another fraction of the paper's schedule: another run, refused (its boundaries and its label differ).
    with pytest.raises(ConfigError, match="schedule.boundaries saved .*schedule_fraction saved 0.125, now 1.0"):
        check_resume(cifar10.get_config("resnet20,fraction=1/8"), config, 100)
    # BN's moving variance, biased or not: the same weights, so a change that can be accepted deliberately.
    biased = _with(config, **{"model.bn_unbiased_var": False})
    with pytest.raises(ConfigError, match="model.bn_unbiased_var saved False, now True.*--accept_changes=model.bn_"):
        check_resume(biased, config, 100)
    changes = check_resume(biased, config, 100, accepted=["model.bn_unbiased_var"])
    assert changes == {"model.bn_unbiased_var": [False, True]}
    # Steps per dispatch may change, but only to one that divides the step resumed at: the loop logs, evaluates
    # and saves at multiples of it, and from step 2325 in dispatches of 100 it would never reach one again.
    by_25 = _with(config, steps_per_dispatch=25)
    assert check_resume(by_25, _with(config, steps_per_dispatch=5), 2325) == {"steps_per_dispatch": [25, 5]}
    with pytest.raises(ConfigError, match="steps_per_dispatch=100 does not divide step 2325.*the saved 25 does"):
        check_resume(by_25, _with(config, steps_per_dispatch=100), 2325)


def test_the_step_restored_is_checked_against_the_steps_per_dispatch(cifar_slice_data_dir, tmp_path):
    """Also where check_resume cannot ask (a run resumed without its config.json) or asks of another step (the
    newest checkpoint, when it is damaged and an older one is restored)."""
    train_and_evaluate(small_config(cifar_slice_data_dir, num_steps=3), str(tmp_path))
    RunDir(tmp_path).config_path.unlink()
    by_2 = small_config(cifar_slice_data_dir, num_steps=4, steps_per_dispatch=2, log_every_steps=2)
    with pytest.raises(ConfigError, match="steps_per_dispatch=2 does not divide step 3"):
        train_and_evaluate(by_2, str(tmp_path))


def test_a_run_started_before_a_key_existed_reads_as_what_it_computed(tmp_path):
    run = RunDir(tmp_path / "old").create()
    run.config_path.write_text('{"model": {"name": "resnet20"}, "data": {"name": "cifar10"}}')
    config = run.read_config()
    assert config.model.bn_unbiased_var is False and cifar10.get_config("resnet20").model.bn_unbiased_var is True
    assert config.model.bn_impl == "xla"  # the only batch norms then ('auto' now takes oneDNN's in bfloat16)
    assert config.schedule_fraction == 1.0  # every other key added since: its default


@pytest.mark.skipif(not (REPO / "results").is_dir(), reason="no committed results")
def test_the_committed_runs_load_and_resuming_them_with_their_config_is_accepted():
    runs = [p.parent for p in (REPO / "results").rglob("config.json") if (p.parent / "metrics.jsonl").exists()]
    assert runs
    for path in runs:
        run = RunDir(path)
        saved = run.read_config()
        assert run.read_metrics() and all(m.read_metrics() for m in run.members())
        assert check_resume(saved, saved, 0) == {}
        if saved.data.name == "cifar10" and saved.model.name in cifar10.CIFAR_MODELS and saved.num_steps == 64_000:
            # the paper's config as its file gives it today, reading the data where the run did
            again = cifar10.get_config(saved.model.name)
            again.data.data_dir, again.data.worker_count = saved.data.data_dir, saved.data.worker_count
            again.seed, again.runs = saved.seed, saved.runs  # its seeds (a lease trains seeds 1, 2, ...)
            changes = check_resume(saved, again, saved.num_steps, accepted=["model.bn_unbiased_var"])
            # Runs trained before the unbiased moving variance became the paper configs' BN: that key too; before
            # bn_impl existed: XLA's batch norms, which 'auto' still picks in float32.
            assert set(changes) <= {"steps_per_dispatch", "model.bn_unbiased_var", "model.bn_impl"}, changes


def _with(config, **overrides):
    changed = config.copy_and_resolve_references()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = changed
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return changed
