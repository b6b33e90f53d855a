"""The package's layers hold: no module imports a higher layer, and no imports go round in a circle."""

from benchmarks import import_graph
from tests.support.training import REPO


def test_no_circle_and_no_upward_import():
    graph = import_graph.imports(REPO)
    assert len(graph) > 40 and "resnet_jax.train.loop" in graph
    assert import_graph.circles(graph) == []
    assert import_graph.upward(graph) == []


def test_the_checker_finds_a_circle_and_an_upward_import():
    graph = {"resnet_jax.core.a": {"resnet_jax.run.b"}, "resnet_jax.run.b": {"resnet_jax.core.a"}}
    assert import_graph.circles(graph) == [["resnet_jax.core.a", "resnet_jax.run.b"]]
    assert import_graph.upward(graph) == [("resnet_jax.core.a", "resnet_jax.run.b")]
