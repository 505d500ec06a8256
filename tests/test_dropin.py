"""Drop-in pruned modules: a rewritten forward keeps the module's class and attributes and
survives deepcopy, pickle and torch.save/torch.load (slimprune/_dropin.py)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import slimprune
from slimprune.errors import SlimpruneError
from tests.models import randomize_bn

torch.set_num_threads(1)


class Flagged(nn.Module):
    """Literal split sizes in forward (so the rewriter must rewrite it) and attributes user code reads."""

    def __init__(self, shape_branch: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Conv2d(10, 5, 1)
        self.f, self.i, self.type, self.np = -1, 7, "tests.Flagged", 123  # what Ultralytics reads
        self.custom = {"tag": [1, 2]}
        self.shape_branch = shape_branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.shape_branch and x.shape[-1] > 4:  # a decision on a shape: fx fails, the concrete tracer runs
            x = x * 1.0
        left, right = torch.split(x, [4, 4], 1)
        return self.head(torch.cat([self.a(left), right], 1))


def pickled(m: nn.Module) -> nn.Module:
    return pickle.loads(pickle.dumps(m))


def torch_saved(m: nn.Module) -> nn.Module:
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


ROUND_TRIPS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "deepcopy": copy.deepcopy, "pickle": pickled, "torch.save": torch_saved,
}


@pytest.fixture(scope="module", params=[False, True], ids=["symbolic", "concrete"])
def pruned(request: pytest.FixtureRequest) -> tuple[nn.Module, nn.Module, slimprune.PruningPlan, torch.Tensor]:
    model = randomize_bn(Flagged(shape_branch=request.param)).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x)
        small = slimprune.apply(model, plan)
    return model, small, plan, x


def test_rewritten_module_keeps_class_and_every_attribute(pruned) -> None:
    model, small, plan, x = pruned
    assert plan.changed, "the plan must prune something for the rewrite to be exercised"
    assert isinstance(small, Flagged) and isinstance(small, slimprune.Rewritten)
    assert type(small).__name__ == "Flagged" and "split" in small.code
    assert (small.f, small.i, small.type, small.np, small.custom) == (-1, 7, "tests.Flagged", 123, {"tag": [1, 2]})
    assert small.shape_branch == model.shape_branch
    assert any("while running it" in n for n in plan.notes) == model.shape_branch  # both trace paths are covered
    assert not isinstance(model, slimprune.Rewritten) and type(model) is Flagged  # the original is untouched
    with torch.no_grad():
        torch.testing.assert_close(small(x), slimprune.silence(model, plan)(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", list(ROUND_TRIPS))
def test_rewritten_module_survives_round_trip_with_equal_outputs(pruned, how: str) -> None:
    _, small, _, x = pruned
    again = ROUND_TRIPS[how](small)
    assert type(again) is type(small) and again.code == small.code
    assert (again.f, again.i, again.type, again.np, again.custom) == (small.f, small.i, small.type, small.np, small.custom)
    assert again.state_dict().keys() == small.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(again(x), small(x))


def test_pruning_a_rewritten_module_again_stays_exact(pruned) -> None:
    _, small, _, x = pruned
    small = copy.deepcopy(small)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(small, 0.3, example_inputs=x)
        smaller = slimprune.apply(small, plan)
    assert isinstance(smaller, Flagged) and smaller.np == 123
    assert type(smaller).__mro__[1] is Flagged  # a subclass of the original class, not one per rewrite
    with torch.no_grad():
        torch.testing.assert_close(smaller(x), slimprune.silence(small, plan)(x), rtol=1e-4, atol=1e-5)


def unpicklable(t: torch.Tensor) -> torch.Tensor:
    return t


def test_pickling_a_forward_that_calls_an_unpicklable_function_names_it(pruned) -> None:
    _, small, _, _ = pruned
    broken = copy.deepcopy(small)
    cls = type(broken)
    fake = type(cls.__name__, (cls.__mro__[1], slimprune.Rewritten), {
        "forward": cls.forward, "__reduce_ex__": cls.__reduce_ex__, "_slimprune_src": cls._slimprune_src,
        "_slimprune_globals": {**cls._slimprune_globals, "helper": lambda t: t},
    })
    broken.__class__ = fake
    with pytest.raises(SlimpruneError, match=r"Flagged.*'helper'"):
        pickle.dumps(broken)


class FusableConv(nn.Module):
    """Ultralytics' ``Conv`` in miniature: ``fuse()`` folds ``bn`` into ``conv``, deletes ``bn``
    and swaps the instance's ``forward`` (what ``YOLO.predict`` does to every Conv)."""

    def __init__(self, c1: int, c2: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    def fuse(self) -> None:
        self.conv = torch.nn.utils.fusion.fuse_conv_bn_eval(self.conv, self.bn)
        del self.bn
        self.forward = self.forward_fuse


class SplitBlock(nn.Module):
    """A literal split in its own forward (rewritten), between two Convs (not edited)."""

    def __init__(self) -> None:
        super().__init__()
        self.cv = FusableConv(8, 8)
        self.a = FusableConv(4, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left, right = torch.split(self.cv(x), [4, 4], 1)
        return torch.cat([self.a(left), right], 1)


class Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = FusableConv(3, 8)
        self.blocks = nn.Sequential(SplitBlock())
        self.head = nn.Conv2d(10, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def test_a_rewritten_forward_calls_unedited_submodules_at_any_depth_so_fusing_them_works() -> None:
    """The edit sits two levels down (blocks.0's split); the Convs around it, its siblings'
    children, are called as modules, so fusing them after pruning (deleting ``bn``) changes
    the pruned model's result by float rounding only (it used to raise AttributeError: the
    inlined code read ``blocks.0.cv.bn``)."""
    model = randomize_bn(Nested()).eval()
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = slimprune.plan(model, 0.5, example_inputs=x, fold_bias=False)  # (3x3 convs: no border effect)
    small = slimprune.apply(model, plan)
    assert isinstance(small, slimprune.Rewritten) and small.blocks[0].cv.conv.out_channels < 8
    for name in ("self.stem(", "self.blocks, \"0\").cv(", "self.blocks, \"0\").a(", "self.head("):
        assert name in small.code, small.code
    with torch.no_grad():
        want = small(x)
        for m in small.modules():
            if isinstance(m, FusableConv):
                m.fuse()
        torch.testing.assert_close(small(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(want, slimprune.silence(model, plan)(x), rtol=1e-4, atol=1e-5)
