"""The package as others install and read it: the light core, the pinned test set, one style."""

import ast
import configparser
import importlib.metadata
import re
import subprocess
import sys

from tests.support.training import REPO

TRAINING_STACK = (
    "tensorflow_datasets",
    "grain",
    "orbax",
    "optax",
    "cv2",
    "matplotlib",
    "ml_collections",
    "tensorboardX",
    "simplejpeg",
    "torch",
)


def test_the_models_conversion_and_published_weights_import_without_the_training_stack():
    # (flax.nnx itself imports optax, which flax installs: interop/nnx_bridge.py is not tried here)
    blocked = ", ".join(repr(name) for name in TRAINING_STACK)
    code = f"""
import importlib.abc, sys
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ({blocked}):
            raise ImportError(name + " is not installed with plain `pip install resnet_jax`")
sys.meta_path.insert(0, Blocker())
import jax, jax.numpy as jnp
from resnet_jax.convert import export_torch_state_dict, load_torch_state_dict
from resnet_jax.models import create_model
model = create_model("resnet20", num_classes=10)
variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
back = load_torch_state_dict("resnet20", export_torch_state_dict("resnet20", variables))
x = jnp.ones((1, 32, 32, 3))
from resnet_jax import pretrained  # published weights by name, for one's own project
assert len(pretrained.names()) == len(pretrained.WEIGHTS) > 20
print(bool((model.apply(back, x) == model.apply(variables, x)).all()))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-3000:]


def _requirements(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """setup.cfg's core requirements and {extra: its requirements}."""
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    extras = {name: _requirements(text) for name, text in setup["options.extras_require"].items()}
    return _requirements(setup["options"]["install_requires"]), extras


def test_requirements_are_ranges_and_constraints_pin_every_one():
    core, extras = _setup_requirements()
    assert {_name(r) for r in core} == {"jax", "flax", "numpy"}
    everything = core + [r for name, reqs in extras.items() for r in reqs if not r.startswith("resnet_jax")]
    versions = [r.split(";")[0] for r in everything]  # not the environment markers (platform_machine == ...)
    assert not [r for r in versions if "==" in r], "setup.cfg gives ranges; exact versions go in constraints.txt"
    pins = {_name(line.split("==")[0]): line for line in _requirements((REPO / "constraints.txt").read_text())}
    assert all("==" in pin for pin in pins.values())
    assert {_name(r) for r in everything} <= set(pins), "every requirement has its tested version pinned"


def test_the_test_extra_declares_everything_the_tests_import():
    # CI installs `.[test]` alone: a module the tests import that only arrives with another extra (or as someone
    # else's dependency) passes here and fails on a fresh machine.
    core, extras = _setup_requirements()
    declared = {_name(r) for r in [*core, *extras["train"], *extras["convert"], *extras["test"]]}
    imported = {"ruff"}  # run as `python -m ruff` below
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    ours = {"resnet_jax", "tests", "benchmarks", "experiments", "configs"}
    optional = {"tensorflow"}  # test_data_prepare checks the message shown without it
    third_party = imported - set(sys.stdlib_module_names) - ours - optional
    distributions = importlib.metadata.packages_distributions()
    undeclared = {
        module: distributions.get(module)
        for module in third_party
        if not {_name(d) for d in distributions.get(module, [])} & declared
    }
    assert not undeclared, f"add these to the test extra in setup.cfg (and pin them in constraints.txt): {undeclared}"


def test_ruff_finds_nothing_to_fix_or_reformat():
    for command in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
