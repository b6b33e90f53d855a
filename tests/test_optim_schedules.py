"""The optimiser's two momentum forms, its weight-decay mask, and the paper's learning-rate schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10, imagenet_r50
from resnet_jax.recipe.optim import make_optimizer
from resnet_jax.recipe.schedules import PlateauSchedule, StepSchedule, make_schedule


def _run(form, learning_rates, weight_decay=0.0, weight_decay_on="all"):
    params = {"conv": {"kernel": jnp.ones(3)}, "bn": {"scale": jnp.ones(3)}}
    opt = make_optimizer(momentum=0.9, weight_decay=weight_decay, momentum_form=form, weight_decay_on=weight_decay_on)
    state = opt.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
    for lr in learning_rates:
        state.hyperparams["learning_rate"] = jnp.float32(lr)
        updates, state = opt.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_caffe_and_common_momentum_agree_at_constant_lr_and_differ_after_a_drop():
    same = [_run(form, [0.1] * 5) for form in ("caffe", "common")]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), *same)
    caffe, common = (_run(form, [0.1] * 5 + [0.01] * 3) for form in ("caffe", "common"))
    # Caffe's velocity still carries the old, larger steps (v = m*v + lr*g): it moves further after the drop.
    assert float(caffe["conv"]["kernel"][0]) < float(common["conv"]["kernel"][0])
    # by hand, Caffe: v_t = 0.9 v_{t-1} + lr_t * 0.5, w -= v_t
    v, w = 0.0, 1.0
    for lr in [0.1] * 5 + [0.01] * 3:
        v = 0.9 * v + lr * 0.5
        w -= v
    np.testing.assert_allclose(caffe["conv"]["kernel"], w, rtol=1e-5)


def test_weight_decay_applies_to_all_or_only_kernels():
    decayed = _run("common", [0.1], weight_decay=1.0)
    kernels_only = _run("common", [0.1], weight_decay=1.0, weight_decay_on="kernels")
    np.testing.assert_allclose(decayed["bn"]["scale"], 1 - 0.1 * (0.5 + 1.0), rtol=1e-6)
    np.testing.assert_allclose(kernels_only["bn"]["scale"], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(kernels_only["conv"]["kernel"], decayed["conv"]["kernel"], rtol=1e-6)
    with pytest.raises(ValueError, match="momentum_form"):
        make_optimizer(momentum=0.9, weight_decay=0.0, momentum_form="nesterov")


def test_cifar_steps():
    schedule = StepSchedule(0.1, (32_000, 48_000))
    assert [schedule(s) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_warmup_until_training_error_below_80_percent():
    schedule = StepSchedule(0.1, (32_000, 48_000), warmup_lr=0.01, warmup_until_error=0.8)
    assert schedule(0) == schedule(500) == 0.01
    schedule.observe(100, train_error=0.85)
    schedule.observe(150, train_error=0.8)  # "below 80%": 80% is not below
    assert schedule(200) == 0.01
    schedule.observe(400, train_error=0.79)
    assert schedule(401) == 0.1 and schedule(40_000) == pytest.approx(0.01)
    restored = StepSchedule(0.1, (32_000, 48_000), warmup_lr=0.01)
    restored.load_state_dict(schedule.state_dict())
    assert restored(401) == 0.1


def test_linear_ramp_reaches_the_scheduled_rate_then_follows_the_steps():
    schedule = StepSchedule(0.1, (200, 300), ramp_steps=100)
    assert [schedule(s) for s in (0, 49, 99, 100, 199, 200, 300)] == pytest.approx(
        [0.001, 0.05, 0.1, 0.1, 0.1, 0.01, 0.001]
    )


def test_plateau_divides_by_ten_when_validation_error_stops_improving():
    schedule = PlateauSchedule(0.1, patience=2, min_delta=0.001, max_drops=2, signal="validation_error")
    for error in (0.5, 0.4, 0.35):
        schedule.observe(0, val_error=error)
    assert schedule(0) == 0.1
    schedule.observe(0, val_error=0.3502)  # not better by min_delta
    assert schedule(0) == 0.1
    schedule.observe(0, train_error=0.1)  # training errors do not count
    schedule.observe(0, val_error=0.351)
    assert schedule(0) == pytest.approx(0.01)
    restored = PlateauSchedule(0.1, patience=2, max_drops=2, signal="validation_error")
    restored.load_state_dict(schedule.state_dict())
    for error in (0.36, 0.37, 0.38, 0.39, 0.4, 0.41):
        restored.observe(0, val_error=error)
    assert restored(0) == pytest.approx(0.001)  # at most max_drops


def test_plateau_watches_the_training_error_of_each_interval_unless_asked_for_the_validation_error():
    on_train = PlateauSchedule(0.1, patience=2, min_delta=0.01)
    on_validation = PlateauSchedule(0.1, patience=2, min_delta=0.01, signal="validation_error")
    train_errors = [0.9, 0.7, 0.5, 0.495, 0.494, 0.493, 0.492, 0.491]  # plateaus after the 3rd interval
    for interval, train_error in enumerate(train_errors):
        for schedule in (on_train, on_validation):
            schedule.observe(interval * 10 + 5, train_error=train_error + 0.01)
            schedule.observe(interval * 10 + 10, train_error=train_error - 0.01)
            schedule.observe(interval * 10 + 10, val_error=0.9 - 0.1 * interval)  # keeps improving
    assert on_train(80) == pytest.approx(0.001) and on_validation(80) == 0.1  # two drops: intervals 5 and 7
    restored = PlateauSchedule(0.1, patience=2, min_delta=0.01)
    on_train.observe(85, train_error=0.3)
    restored.load_state_dict(on_train.state_dict())
    assert restored.state_dict() == on_train.state_dict() and restored.interval_train_errors == [0.3]


def test_a_plateau_is_an_improvement_of_min_delta_or_less_of_the_interval_s_mean_training_error():
    schedule = PlateauSchedule(0.1, patience=1, min_delta=0.25)
    schedule.observe(5, train_error=0.5)
    schedule.observe(10, val_error=0.9)  # the first interval's mean, 0.5, is the best
    for error in (0.2, 0.3):  # mean 0.25: better by min_delta exactly, which is not better
        schedule.observe(15, train_error=error)
    schedule.observe(20, val_error=0.9)
    assert schedule(20) == pytest.approx(0.01)
    mean = PlateauSchedule(0.1, patience=1, min_delta=0.01)
    mean.observe(5, train_error=0.5)
    mean.observe(10, val_error=0.9)
    for _ in range(3):
        mean.observe(15, train_error=0.4)
    mean.observe(20, val_error=0.9)  # the interval's mean, 0.4, is better (its sum, 1.2, would not be)
    assert mean(20) == 0.1 and mean.best == pytest.approx(0.4)


def test_each_config_s_schedule_is_the_paper_s():
    cifar = make_schedule(cifar10.get_config("resnet110").schedule)
    assert isinstance(cifar, StepSchedule) and cifar.boundaries == (32_000, 48_000)
    assert cifar(0) == 0.01 and cifar.warmup_until_error == 0.8  # Section 4.2's warm-up of ResNet-110
    imagenet = make_schedule(imagenet_r50.get_config().schedule)
    assert isinstance(imagenet, PlateauSchedule) and imagenet(0) == 0.1 and imagenet.factor == 0.1
