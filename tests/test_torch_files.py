"""torch.save files read without torch: the public .th weights, both formats torch writes, and refused payloads."""

import collections
import os
import pickle
import shutil
import warnings
import zipfile

import numpy as np
import pytest

from resnet_jax.convert import read_state_dict
from resnet_jax.interop.torch_files import read_torch_file, state_dict_of
from tests.support.paths import SHARED_DATA

WEIGHTS = SHARED_DATA / "weights"
FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization


@pytest.mark.skipif(not WEIGHTS.is_dir(), reason=f"{WEIGHTS} is absent")
def test_public_cifar_weights_read_to_their_npz_twins():
    """akamaster's .th files (legacy format, torch._utils._rebuild_tensor, a `module.` prefix, `best_prec1`)."""
    files = sorted(WEIGHTS.glob("*.th"))
    assert files
    for th in files:
        with np.load(th.with_suffix(".npz")) as twin:
            expected = {k: twin[k] for k in twin.files}
        for state in (state_dict_of(read_torch_file(th)), read_state_dict(th)):
            assert state.keys() == expected.keys(), th.name
            for k, v in expected.items():
                assert state[k].dtype == v.dtype and np.array_equal(state[k], v), f"{th.name}: {k}"


def _small_module(torch):
    """float32 parameters and buffers, BN's 0-d int64 counter, and tensors that are views of larger storages."""
    torch.manual_seed(0)
    layers = {"conv": torch.nn.Conv2d(3, 4, 3), "bn": torch.nn.BatchNorm2d(4), "fc": torch.nn.Linear(5, 2)}
    module = torch.nn.Sequential(collections.OrderedDict(layers))
    base = torch.randn(4, 6)
    module.register_buffer("halves", torch.randn(2, 3).half())
    module.register_buffer("ints", torch.arange(6, dtype=torch.int64).reshape(2, 3))
    module.register_buffer("transposed", base.t())  # non-contiguous: stride (1, 6)
    module.register_buffer("rows", base[1:3, 2:])  # the same storage again, at an offset
    module.register_buffer("scalar", torch.tensor(2.5))
    return module


def _every_dtype(torch):
    dtypes = (torch.float64, torch.bfloat16, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
    return {str(d): (torch.arange(12).reshape(3, 4) % 3).to(d) for d in dtypes}


def _assert_same(ours, theirs, torch, where="obj"):
    if isinstance(theirs, torch.Tensor):
        theirs = theirs.detach()
        assert isinstance(ours, np.ndarray) and ours.shape == tuple(theirs.shape), where
        if theirs.dtype == torch.bfloat16:  # NumPy has no bfloat16: ml_dtypes' has the same bits
            assert ours.dtype.name == "bfloat16", where
            np.testing.assert_array_equal(ours.astype(np.float32), theirs.float().numpy(), err_msg=where)
        else:
            assert ours.dtype == theirs.numpy().dtype, where
            np.testing.assert_array_equal(ours, theirs.numpy(), err_msg=where)
        assert ours.flags.c_contiguous and ours.flags.writeable, where
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where
        for k in theirs:
            _assert_same(ours[k], theirs[k], torch, f"{where}[{k!r}]")
    else:
        assert ours == theirs and type(ours) is type(theirs), where


@pytest.mark.parametrize("fmt", FORMATS)
def test_files_torch_writes_read_back_equal(fmt, tmp_path):
    torch = pytest.importorskip("torch")
    state = _small_module(torch).state_dict()
    assert not state["transposed"].is_contiguous() and state["bn.num_batches_tracked"].dim() == 0
    checkpoint = {
        "state_dict": {**state, **_every_dtype(torch)},
        "meta": {"epoch": 3, "classes": ("cat", "dog"), "note": b"raw bytes", "lr": 0.1, "ok": True, "none": None},
        "parameter": torch.nn.Parameter(torch.ones(2)),  # torch._utils._rebuild_parameter
    }
    for name, obj in (("state", state), ("checkpoint", checkpoint)):
        path = tmp_path / f"{name}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
        assert zipfile.is_zipfile(path) == FORMATS[fmt]
        ours = read_torch_file(path)
        _assert_same(ours, obj, torch)
        assert isinstance(ours, collections.OrderedDict) == isinstance(obj, collections.OrderedDict)
    assert read_state_dict(tmp_path / "checkpoint.pth").keys() == checkpoint["state_dict"].keys()


def test_state_dict_of_unwraps_checkpoints():
    w = np.ones(3, np.float32)
    assert state_dict_of({"module.fc.weight": w, "fc.bias": w}).keys() == {"fc.weight", "fc.bias"}
    assert state_dict_of({"best_prec1": 91.7, "state_dict": {"module.conv1.weight": w}}).keys() == {"conv1.weight"}
    assert state_dict_of({"meta": {"epoch": 1}, "state_dict": {"backbone.conv1.weight": w}}).keys() == {
        "backbone.conv1.weight"
    }
    assert state_dict_of({"model": {"fc.weight": w}, "optimizer": {"state": {}}, "epoch": 3}).keys() == {"fc.weight"}
    with pytest.raises(ValueError, match=r"No tensors found.*'epoch'"):
        state_dict_of({"epoch": 3})


def test_torch_suffixes_read_and_others_are_named(tmp_path):
    torch = pytest.importorskip("torch")
    state = {"module.fc.weight": torch.randn(2, 3)}
    torch.save(state, tmp_path / "w.pth")
    for suffix in (".pt", ".th"):
        shutil.copy(tmp_path / "w.pth", tmp_path / f"w{suffix}")
    for suffix in (".pth", ".pt", ".th"):
        loaded = read_state_dict(tmp_path / f"w{suffix}")
        assert loaded.keys() == {"fc.weight"} and np.array_equal(loaded["fc.weight"], state["module.fc.weight"])
    (tmp_path / "noise.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(pickle.UnpicklingError, match="neither a zip archive nor a legacy torch.save file"):
        read_torch_file(tmp_path / "noise.pth")


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("payload,named", [(_System, r"(posix|os)\.system"), (_Eval, r"(__builtin__|builtins)\.eval")])
def test_pickled_code_is_refused_and_never_runs(fmt, payload, named, tmp_path):
    torch = pytest.importorskip("torch")
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    obj = {"state_dict": {"fc.weight": torch.zeros(2)}, "meta": payload(marker)}
    torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
    for read in (read_torch_file, read_state_dict):
        with pytest.raises(pickle.UnpicklingError, match=named + ": the file holds more than tensors"):
            read(path)
        assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: torch's unrestricted load runs it
    assert marker.exists()


def test_whole_modules_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    for fmt, zipped in FORMATS.items():
        path = tmp_path / f"{fmt}.pth"
        torch.save(torch.nn.Linear(2, 2), path, _use_new_zipfile_serialization=zipped)
        with pytest.raises(pickle.UnpicklingError, match=r"torch\.nn\.modules\.linear\.Linear: the file holds more"):
            read_torch_file(path)


class _Overreaching:
    """A tensor whose size reaches past its storage: a strided view of it would read memory that is not its own."""

    def __init__(self, torch):
        self.torch = torch

    def __reduce__(self):
        storage = self.torch.zeros(4).storage()
        return self.torch._utils._rebuild_tensor_v2, (storage, 2, (100,), (1,), False, collections.OrderedDict())


def test_corrupt_tensors_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    for fmt, zipped in FORMATS.items():
        path = tmp_path / f"{fmt}.pth"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage is deprecated
            torch.save({"t": _Overreaching(torch)}, path, _use_new_zipfile_serialization=zipped)
        with pytest.raises(pickle.UnpicklingError, match=r"reaches past its storage of 4 elements"):
            read_torch_file(path)
    # a zip archive whose storage record lost bytes
    torch.save({"t": torch.ones(8)}, tmp_path / "full.pth")
    with zipfile.ZipFile(tmp_path / "full.pth") as src, zipfile.ZipFile(tmp_path / "cut.pth", "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:5] if "/data/" in info.filename else data)
    with pytest.raises(pickle.UnpicklingError, match="has only 5 bytes: the file is truncated"):
        read_torch_file(tmp_path / "cut.pth")
