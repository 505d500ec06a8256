"""LSTM, GRU and RNN layers prune exactly (slimprune/rules/recurrent.py): a silenced hidden
unit (its gate rows zero) is zero at every step, so the smaller layer computes the same; its
input features prune from upstream; timm's Sequencer, whose 36 LSTMs were barriers, prunes
exactly with none."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import slimprune
from tests.helpers import assert_pruned_equals_silenced


class Recurrent(nn.Module):
    """Linear -> recurrent layer -> Linear on its per-step outputs (batch first); with
    ``states``, plus a Linear on the final hidden state."""

    def __init__(self, rnn: nn.RNNBase, states: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(5, rnn.input_size)
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)
        self.last = nn.Linear(rnn.hidden_size, 3) if states else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, state = self.rnn(self.a(x))
        out = self.head(y)
        if self.last is not None:  # the last layer's final hidden state, through a Linear of its own
            h = state[0] if isinstance(self.rnn, nn.LSTM) else state
            out = out + self.last(h[-1]).unsqueeze(1)
        return out


def _plan(model: nn.Module, x: torch.Tensor) -> slimprune.PruningPlan:
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        return slimprune.plan(model, 0.5, example_inputs=(x,))


RNNS = {
    "lstm-bidirectional-batch-first": lambda: nn.LSTM(8, 6, bidirectional=True, batch_first=True),
    "lstm-two-layers-bidirectional": lambda: nn.LSTM(8, 6, num_layers=2, bidirectional=True),
    "lstm-no-bias": lambda: nn.LSTM(8, 6, bias=False, batch_first=True),
    "gru-two-layers": lambda: nn.GRU(8, 6, num_layers=2),
    "rnn-relu-bidirectional": lambda: nn.RNN(8, 6, nonlinearity="relu", bidirectional=True, batch_first=True),
}


@pytest.mark.parametrize("kind", list(RNNS))
def test_recurrent_layer_prunes_hidden_units_and_inputs_exactly(kind: str) -> None:
    """Hidden size and input size shrink (the same count in every layer and direction), the
    pruned layer equals the silenced one in eval and train mode, with no barrier."""
    torch.manual_seed(0)
    model = Recurrent(RNNS[kind]()).eval()
    x = torch.randn(2, 4, 5)
    plan = _plan(model, x)
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    assert small.rnn.hidden_size < 6 and small.rnn.input_size < 8
    assert small.a.out_features == small.rnn.input_size
    assert small.head.in_features == small.rnn.hidden_size * (2 if small.rnn.bidirectional else 1)
    for name, p in small.rnn.named_parameters():
        assert p.shape[0] == small.rnn.hidden_size * {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[type(small.rnn)], name
    assert [p.data_ptr() for p in small.rnn._flat_weights] == [p.data_ptr() for p in small.rnn.parameters()]


def test_a_silenced_lstm_unit_is_zero_at_every_step() -> None:
    """The argument the rule rests on, checked directly: zero rows in all four gates of unit j
    make its output 0 at every step, in both directions."""
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, bidirectional=True, batch_first=True)
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            p.view(4, 5, -1)[:, 2] = 0
    y, (h, c) = lstm(torch.randn(3, 7, 4) * 10)
    assert torch.all(y[..., 2] == 0) and torch.all(y[..., 5 + 2] == 0)
    assert torch.all(h[..., 2] == 0) and torch.all(c[..., 2] == 0)


def test_the_final_state_carries_the_hidden_units() -> None:
    """``(h_n, c_n)`` has the hidden units on its last axis: a model reading it prunes exactly."""
    torch.manual_seed(0)
    model = Recurrent(nn.LSTM(8, 6, batch_first=True), states=True).eval()
    x = torch.randn(2, 4, 5)
    small = assert_pruned_equals_silenced(model, _plan(model, x), x)
    assert small.rnn.hidden_size < 6 and small.last.in_features == small.rnn.hidden_size


class GivenState(nn.Module):
    """An LSTM started from a state the model computes (need not be zero at a removed unit)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.rnn = nn.LSTM(8, 6, batch_first=True)
        self.h0 = nn.Parameter(torch.randn(1, 1, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.h0.expand(1, x.shape[0], 6).contiguous()
        y, _ = self.rnn(self.a(x), (h0, torch.zeros_like(h0)))
        return self.head(y)


def test_an_initial_state_keeps_the_hidden_units_and_stays_exact() -> None:
    torch.manual_seed(0)
    model = GivenState().eval()
    x = torch.randn(2, 4, 5)
    plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.rnn.hidden_size == 6 and small.rnn.input_size < 8


class ConvRecurrent(nn.Module):
    """A CRNN: conv -> BN -> ReLU, the columns as a sequence of features, an RNN over them."""

    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.rnn = rnn
        self.head = nn.Linear(rnn.hidden_size * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean(2).transpose(1, 2)  # (B, W, C)
        return self.head(self.rnn(y)[0])


def _crnn(rnn: nn.RNNBase) -> nn.Module:
    from tests.models import randomize_bn

    torch.manual_seed(0)
    model = randomize_bn(ConvRecurrent(rnn))
    with torch.no_grad():
        model.bn.bias.abs_().add_(0.5)  # removed channels hold relu(β) > 0: constants to fold
    return model.eval()


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_constant_removed_inputs_fold_into_the_input_biases_exactly(kind: str) -> None:
    """With ``fold_bias`` (the default) a removed BN channel keeps its β, so the RNN sees a
    constant there: it folds into ``bias_ih_l0`` of both directions, and the pruned model
    equals the silenced one (β kept), with no warning that it differs."""
    rnn = (nn.LSTM(8, 6, bidirectional=True, batch_first=True) if kind == "lstm"
           else nn.GRU(8, 6, bidirectional=True, batch_first=True))
    model, x = _crnn(rnn), torch.randn(2, 3, 6, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = slimprune.plan(model, 0.5, example_inputs=(x,))
    assert [f.module for f in plan.folds] == ["rnn"] and plan.option("fold_bias")
    small = assert_pruned_equals_silenced(model, plan, x)
    assert small.rnn.input_size < 8
    kept = list(plan.kept("rnn", "bias_ih_l0_reverse", 0) or range(small.rnn.bias_ih_l0_reverse.numel()))
    assert not torch.allclose(small.rnn.bias_ih_l0_reverse, model.rnn.bias_ih_l0_reverse[kept])  # folded


def test_an_rnn_without_biases_cannot_fold_and_says_so() -> None:
    model, x = _crnn(nn.LSTM(8, 6, bias=False, batch_first=True)), torch.randn(2, 3, 6, 10)
    with pytest.warns(UserWarning, match="rnn: removed input channels hold non-zero constants but LSTM cannot fold"):
        slimprune.plan(model, 0.5, example_inputs=(x,))


def test_lstm_with_projections_is_a_barrier_named_in_the_warning() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.LSTM(8, 6, proj_size=3, batch_first=True))
    with pytest.warns(slimprune.UnsupportedOpWarning, match="proj_size"):
        slimprune.plan(model, 0.5, example_inputs=(torch.randn(2, 4, 5),))


def test_sequencer_prunes_its_lstms_exactly_without_barriers() -> None:
    """timm's Sequencer2d-S at 64 px (36 LSTM barriers, 24% of the parameters removed at
    224 px before this rule): none, exact in eval and train mode, over 45% removed, every
    bidirectional LSTM smaller with its Linear."""
    timm = pytest.importorskip("timm")
    from tests.models import calibrated

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = calibrated(timm.create_model("sequencer2d_s", pretrained=False), x)
    with warnings.catch_warnings():
        warnings.simplefilter("error", slimprune.UnsupportedOpWarning)
        plan = slimprune.plan(model, 0.5, example_inputs=(x,), fold_bias=False, allow_inexact=False)
    assert not plan.barriers
    assert plan.params_after < 0.55 * plan.params_before
    small = assert_pruned_equals_silenced(model, plan, x, train=True)
    pairs = [(m, o) for m, o in zip(small.modules(), model.modules()) if isinstance(m, nn.LSTM)]
    assert len(pairs) == 36 and all(m.hidden_size < o.hidden_size for m, o in pairs)


def test_a_pruned_lstm_saves_and_loads_computing_the_same(tmp_path) -> None:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return Recurrent(nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)).eval()

    model, x = make(), torch.randn(2, 4, 5)
    plan = _plan(model, x)
    small = slimprune.apply(model, plan)
    slimprune.save(small, tmp_path / "lstm.slim", plan=plan)
    back = slimprune.load(tmp_path / "lstm.slim", make).eval()
    assert (back.rnn.hidden_size, back.rnn.input_size) == (small.rnn.hidden_size, small.rnn.input_size)
    torch.testing.assert_close(back(x), small(x))
