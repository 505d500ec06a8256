"""The channel graph reads a node's inputs from fx's ``node.all_input_nodes``: the same nodes
its own walk of ``args``/``kwargs`` finds (through tuples, lists, dicts and slices)."""

from __future__ import annotations

import torch
import torchvision
from hypothesis import given, settings

from slimprune._graph import _iter_nodes
from slimprune._trace import symbolic_trace
from slimprune.rules import has_module_rule
from tests.models import SpecNet
from tests.strategies import programs


class _Slices(torch.nn.Module):
    """Nodes inside a slice, a dict of keywords and nested lists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1] // 2
        y = x[:, n:, ::2]
        z = torch.cat([y, [y, y][1]], dim=1)
        return torch.nn.functional.interpolate(z, size=(x.shape[2], x.shape[3] // 2), mode="nearest")


def _same_inputs(gm: torch.fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        walked = list(_iter_nodes((node.args, node.kwargs)))
        assert set(node.all_input_nodes) == set(walked) and len(node.all_input_nodes) == len(set(walked)), node


@settings(max_examples=25, deadline=None, derandomize=True)
@given(programs())
def test_all_input_nodes_are_the_nodes_of_args_and_kwargs_on_random_nets(program) -> None:
    _same_inputs(symbolic_trace(SpecNet(program), (), has_module_rule)[0])


def test_all_input_nodes_are_the_nodes_of_args_and_kwargs_in_slices_and_torchvision_models() -> None:
    _same_inputs(symbolic_trace(_Slices())[0])
    assert any(isinstance(a, slice) for n in symbolic_trace(_Slices())[0].graph.nodes for a in n.args
               if isinstance(a, tuple) for a in a), "no node holds a slice: this test checks less than it says"
    for build in (torchvision.models.swin_t, torchvision.models.shufflenet_v2_x0_5, torchvision.models.googlenet):
        _same_inputs(symbolic_trace(build(weights=None).eval(), (), has_module_rule)[0])
