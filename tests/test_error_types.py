"""measure, plots, the graph builder and plan edits raise SlimpruneError subclasses that are
still the builtin they used to be, with a message that says what, where, what is allowed, how to fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx as fx
from torch import nn

import slimprune
from slimprune import plots
from slimprune._edits import apply_edits, decode, encode
from slimprune.measure import measure
from slimprune.rules._registry import _MODULE_RULES


@pytest.mark.parametrize(
    "call, error, builtin, words",
    [
        (lambda: measure("not a model", torch.randn(1, 4), latency=False), slimprune.ArgumentTypeError, TypeError,
         r"nn\.Module as model, got str; pass the model"),
        (lambda: measure(nn.Linear(4, 4), {"x": torch.randn(1, 4)}, latency=False), slimprune.ExampleInputError,
         ValueError, r"names \['x'\], which Linear.forward does not take; it takes \['input'\]"),
        (lambda: measure(nn.Linear(4, 4), 3, latency=False), slimprune.ExampleInputTypeError, TypeError,
         r"tuple/list of positional inputs, got int"),
        (lambda: measure(nn.Linear(4, 4), [], latency=False), slimprune.ExampleInputError, ValueError,
         r"empty; pass at least one input tensor"),
        (lambda: measure(nn.Linear(4, 4), torch.randn(1, 4), threads=0), slimprune.InvalidArgumentError, ValueError,
         r"threads=.*positive int, got 0; leave it None"),
        (lambda: measure(nn.Linear(4, 4), torch.randn(1, 4), min_run_time=-1), slimprune.InvalidArgumentError,
         ValueError, r"min_run_time=.*got -1; for example"),
        (lambda: measure(nn.Linear(4, 4), torch.randn(1, 4), device="tpu"), slimprune.InvalidArgumentError,
         ValueError, r"device='tpu'.*'cpu' or 'cuda'"),
    ],
    ids=["model", "dict-unknown-keyword", "int", "empty-list", "threads", "min-run-time", "device"],
)
def test_measure_refusals_are_slimprune_errors_and_their_builtin(call, error, builtin, words) -> None:
    with pytest.raises(error, match=words) as caught:
        call()
    assert isinstance(caught.value, slimprune.SlimpruneError) and isinstance(caught.value, builtin)


def test_measure_takes_a_list_of_inputs_as_plan_does() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return self.fc(a) + b

    x, y = torch.randn(3, 4), torch.randn(3, 4)
    as_list, as_tuple = measure(Two(), [x, y], latency=False), measure(Two(), (x, y), latency=False)
    assert as_list.input_shapes == as_tuple.input_shapes == ((3, 4), (3, 4))
    assert as_list.macs == as_tuple.macs == 3 * 4 * 4
    slimprune.plan(Two(), 0.0, example_inputs=[x, y])  # the same form plan accepts


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda tmp: plots.plot_gamma_histogram(np.ones(3), path=tmp / "x.jpg"), r"must end in \.png.*path="),
        (lambda tmp: plots.plot_gamma_histogram(np.ones(3), threshold=-1.0, path=tmp / "x.png"),
         r"threshold=.*finite and positive .*got -1\.0; pass e\.g\."),
        (lambda tmp: plots.plot_gamma_histogram(np.array([]), path=tmp / "x.png"), r"empty; pass a model"),
        (lambda tmp: plots.plot_gamma_histogram(np.array([np.nan]), path=tmp / "x.png"), r"NaN.*Plot a checkpoint"),
        (lambda tmp: plots.plot_channels(nn.Linear(2, 2), nn.Linear(2, 2), tmp / "x.png", max_layers=0),
         r"max_layers=.*positive int, got 0; for example"),
    ],
    ids=["suffix", "threshold", "empty", "nan", "max-layers"],
)
def test_plot_refusals_are_invalid_argument_errors(tmp_path: Path, call, words) -> None:
    with pytest.raises(slimprune.InvalidArgumentError, match=words) as caught:
        call(tmp_path)
    assert isinstance(caught.value, ValueError)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_recording_an_unrecordable_argument_names_it_and_the_allowed_kinds() -> None:
    with pytest.raises(slimprune.RuleOutputTypeError, match=r"object.*plans hold only None, bool, int.*Fix the rule") as caught:
        encode(object())
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, slimprune.RuleError)


def test_unreadable_plan_edits_are_plan_format_errors() -> None:
    with pytest.raises(slimprune.PlanFormatError, match=r"__bogus__.*reads __node__.*Make the plan again") as caught:
        decode({"__bogus__": 1}, {})
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, slimprune.FileFormatError)
    graph = fx.symbolic_trace(nn.Linear(2, 2)).graph
    node = next(iter(graph.nodes)).name
    with pytest.raises(slimprune.PlanFormatError, match=r"kind 'rename'; this version applies 'set_arg' and 'split_sizes'"):
        apply_edits(graph, [{"node": node, "kind": "rename"}])


class _Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], 1)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.twice = _Doubler()
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.twice(self.conv(x)))


@pytest.fixture
def doubler_rule():
    yield lambda fn: slimprune.register_rule(_Doubler, replace=True)(fn)
    _MODULE_RULES.pop(_Doubler, None)


def test_a_rule_returning_the_wrong_number_of_labels_is_a_rule_error_naming_the_module(doubler_rule) -> None:
    doubler_rule(lambda ctx, node: ctx.input(node, 0))  # wrong: the output has twice the channels
    # a failing rule makes its op a barrier (never silently wrong); the warning carries the RuleError
    with pytest.warns(slimprune.UnsupportedOpWarning,
                      match=r"RuleError: the channel rule for .*node twice.*returned 4 labels on axis 1.*8, 4, 4.*Fix the rule"):
        graph = slimprune.analyze(_Net(), torch.randn(1, 3, 4, 4)).graph
    assert any("twice" in str(b) for b in graph.barriers)
    assert issubclass(slimprune.RuleError, ValueError)


def test_a_rule_slicing_with_an_unknown_role_is_a_rule_error_listing_the_roles(doubler_rule) -> None:
    def bad(ctx, node):
        ctx.param(node, "weight", 0, np.zeros(4, np.int64), role="gain")
        return None

    doubler_rule(bad)
    with pytest.warns(slimprune.UnsupportedOpWarning,
                      match=r"RuleError: a channel rule sliced twice\.weight .*role 'gain'; the roles are out, in, scale"):
        slimprune.analyze(_Net(), torch.randn(1, 3, 4, 4))


def test_barrier_warnings_name_the_users_line_through_analyze_plan_and_prune(doubler_rule) -> None:
    doubler_rule(lambda ctx, node: ctx.input(node, 0))  # a failing rule: a barrier, with a warning
    x = torch.randn(1, 3, 4, 4)
    for entry in (lambda: slimprune.analyze(_Net(), x), lambda: slimprune.plan(_Net(), 0.5, example_inputs=x),
                  lambda: slimprune.prune(_Net(), 0.5, example_inputs=x)):
        with pytest.warns(slimprune.UnsupportedOpWarning) as caught:
            entry()
        assert {w.filename for w in caught if w.category is slimprune.UnsupportedOpWarning} == {__file__}
