"""The rewriter's model copy (slimprune/_copy.py) is what copy.deepcopy makes."""

from __future__ import annotations

import copy

import torch
import torchvision
import pytest
from hypothesis import given, settings
from torch import nn

from slimprune._copy import copy_model
from tests.models import SpecNet, TinyResNet, randomize_bn
from tests.strategies import programs


def _same_copy(a: nn.Module, b: nn.Module) -> bool:
    """Same tree, classes, attributes and tensor values, sharing no tensor storage."""
    ma, mb = dict(a.named_modules(remove_duplicate=False)), dict(b.named_modules(remove_duplicate=False))
    if list(ma) != list(mb) or any(type(ma[k]) is not type(mb[k]) or ma[k] is mb[k] for k in ma):
        return False
    for k in ma:
        plain = {n: v for n, v in vars(ma[k]).items() if isinstance(v, (int, float, str, bool, tuple))}
        if plain != {n: vars(mb[k])[n] for n in plain}:
            return False
    sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
    if list(sa) != list(sb):
        return False
    for k, x in sa.items():
        y = sb[k]
        if type(x) is not type(y) or x.dtype != y.dtype or not torch.equal(x, y) or x.requires_grad != y.requires_grad:
            return False
        if x.numel() and x.untyped_storage().data_ptr() == y.untyped_storage().data_ptr():
            return False
    return True


def test_copy_of_torchvision_model_equals_deepcopy_and_computes_the_same() -> None:
    model = randomize_bn(torchvision.models.mobilenet_v3_small(num_classes=10)).eval()
    fast, ref = copy_model(model), copy.deepcopy(model)
    assert _same_copy(model, fast) and _same_copy(ref, fast)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))
    with torch.no_grad():  # independent: changing the copy leaves the original alone
        fast.features[0][0].weight.zero_()
    assert not torch.equal(fast.features[0][0].weight, model.features[0][0].weight)


@settings(max_examples=15, deadline=None)
@given(programs())
def test_copy_of_random_net_equals_deepcopy(program) -> None:
    model = randomize_bn(SpecNet(program)).eval()
    fast = copy_model(model)
    assert _same_copy(model, fast)
    assert _same_copy(copy.deepcopy(model), fast)


def test_shared_modules_and_tensors_stay_shared_and_hooks_are_copied() -> None:
    model = TinyResNet()
    shared = nn.Conv2d(3, 3, 1)
    model.a, model.b = shared, shared  # one module under two names
    model.tied = nn.Linear(3, 3)
    model.tied.weight = shared.weight.__class__(torch.randn(3, 3))
    model.alias = [model.tied]  # a plain attribute pointing into the tree
    calls = []
    model.tied.register_forward_hook(lambda m, i, o: calls.append(1))
    fast = copy_model(model)
    assert fast.a is fast.b and fast.a is not shared
    assert fast.alias[0] is fast.tied
    fast.tied(torch.randn(1, 3))
    assert calls == [1]


def test_replacement_memo_is_used_instead_of_copying() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    new = torch.zeros(2, 3, 1, 1)
    fast = copy_model(model, {id(model[0].weight): new})
    assert fast[0]._parameters["weight"] is new


class _Custom(nn.Module):
    """Copies itself its own way: copy_model must defer to deepcopy."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.copied = False

    def __deepcopy__(self, memo):
        out = _Custom()
        out.lin.load_state_dict(self.lin.state_dict())
        out.copied = True
        return out


def test_module_with_its_own_deepcopy_falls_back_to_deepcopy() -> None:
    model = nn.Sequential(_Custom(), nn.ReLU())
    fast = copy_model(model)
    assert fast[0].copied and torch.equal(fast[0].lin.weight, model[0].lin.weight)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(programs(max_ops=5))
def test_pruned_tensors_share_no_storage_with_the_original_and_planning_restores_it_bit_for_bit(program) -> None:
    # apply() keeps index_select's fresh tensors without another clone, and the probe's
    # silencing saves index_select's copy: neither may alias the user's parameters.
    import slimprune

    torch.manual_seed(0)
    model = randomize_bn(SpecNet(program)).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = slimprune.plan(model, 0.5, importance="l2", example_inputs=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    small = slimprune.apply(model, plan)
    originals = {t.untyped_storage().data_ptr() for t in model.state_dict().values() if t.numel()}
    assert not any(t.numel() and t.untyped_storage().data_ptr() in originals for t in small.state_dict().values())
    for p in small.parameters():
        p.data.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class _Slotted(nn.Linear):
    __slots__ = ("tag",)


def test_slot_values_are_copied_though_deepcopy_drops_them() -> None:
    inner = _Slotted(3, 3)
    inner.tag = ["a"]
    model = nn.Sequential(inner, nn.ReLU())
    fast = copy_model(model)
    assert fast[0].tag == ["a"] and fast[0].tag is not inner.tag
    assert not hasattr(copy.deepcopy(model)[0], "tag")  # nn.Module.__getstate__ leaves slots out


@pytest.mark.parametrize("custom", [False, True], ids=["fast", "deepcopy-fallback"])
def test_an_uncopyable_attribute_is_a_model_copy_error_naming_its_module(custom: bool) -> None:
    import threading

    import slimprune

    model = nn.Sequential(_Custom() if custom else nn.Linear(2, 2), nn.Sequential(nn.ReLU()))
    model[1][0].lock = threading.Lock()
    with pytest.raises(slimprune.ModelCopyError, match=r"attribute 'lock' of blocks\.1\.0 \(ReLU\) holds a _thread\.lock"):
        copy_model(model, where="blocks")


def test_silence_of_a_model_with_an_uncopyable_attribute_is_a_model_copy_error_naming_module_and_attribute() -> None:
    """``silence`` copies the model the way ``apply`` does: a lock on a module is a
    ModelCopyError (also a TypeError) naming the module's path, class and attribute and
    saying it was ``silence`` that copied, the model is unchanged, and the fix works."""
    import threading

    import slimprune

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    plan = slimprune.plan(model, 0.5, example_inputs=x)
    lock = threading.Lock()
    model[2].lock = lock
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(slimprune.ModelCopyError, match=r"cannot build the silenced model: attribute 'lock' of 2 \(ReLU\)") as caught:
        slimprune.silence(model, plan)
    assert isinstance(caught.value, TypeError) and "delete 'lock' before silence" in str(caught.value)
    assert model[2].lock is lock and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    del model[2].lock
    silenced = slimprune.silence(model, plan)
    torch.testing.assert_close(slimprune.apply(model, plan)(x), silenced(x), rtol=1e-5, atol=1e-6)
    assert int((silenced[0].weight.flatten(1).abs().sum(1) == 0).sum()) == 4


class _Buffers(nn.Module):
    """Buffers of every kind the clone path must tell apart from those it may clone."""

    def __init__(self) -> None:
        super().__init__()
        base = torch.arange(12.0)
        self.register_buffer("whole", torch.randn(3, 4))
        self.register_buffer("count", torch.tensor(7))  # a BatchNorm's num_batches_tracked
        self.register_buffer("base", base)
        self.register_buffer("same", base)  # one tensor under two names
        self.register_buffer("view", base[2:6])  # a view into another buffer's storage
        self.register_buffer("prefix", torch.empty(10).resize_(4).fill_(1.0))  # holds part of its storage
        self.register_buffer("strided", torch.randn(4, 3).t())
        self.register_buffer("late_view", self.whole[1])  # shares the storage of a buffer cloned before it
        self.register_buffer("flat", self.whole.view(12))  # the whole of that storage, under another shape
        tagged = torch.ones(2)
        tagged.note = ["kept"]
        self.register_buffer("tagged", tagged)  # an attribute deepcopy copies
        self.register_buffer("cl", torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last))
        self.register_buffer("fp16", torch.randn(5).half())
        self.register_buffer("empty", torch.empty(0))
        self.register_buffer("nothing", None)


def _storage_layout(model: nn.Module) -> list[tuple]:
    """Per buffer: values, dtype, shape, stride, offset, storage size, and which earlier
    buffer (by position) shares its storage (-1: none)."""
    out, ptrs = [], []
    for name, b in model._buffers.items():
        if b is None:
            out.append((name, None))
            continue
        ptr = b.untyped_storage().data_ptr()
        shared = ptrs.index(ptr) if b.numel() and ptr in ptrs else -1
        ptrs.append(ptr)
        out.append((name, b.tolist(), b.dtype, tuple(b.shape), b.stride(), b.storage_offset(),
                    b.untyped_storage().nbytes(), shared, dict(vars(b))))
    return out


def test_cloned_buffers_are_what_deepcopy_makes_aliasing_layout_and_attributes_included() -> None:
    model = nn.Sequential(_Buffers(), nn.BatchNorm2d(3))
    fast, ref = copy_model(model), copy.deepcopy(model)
    for m_fast, m_ref in zip(fast, ref):
        assert _storage_layout(m_fast) == _storage_layout(m_ref)
    assert fast[0].same is fast[0].base and fast[0].tagged.note == ["kept"] and fast[0].tagged.note is not model[0].tagged.note
    with torch.no_grad():  # the copy's aliases are its own: writing one changes its alias, not the model
        fast[0].base[3] = 100.0
        fast[0].whole[1, 0] = -5.0
    assert fast[0].view[1] == 100.0 and fast[0].late_view[0] == -5.0 and fast[0].flat[4] == -5.0
    assert model[0].base[3] == 3.0 and model[0].view[1] == 3.0 and model[0].whole[1, 0] != -5.0
    fast[1].num_batches_tracked += 1
    assert model[1].num_batches_tracked == 0


def test_tuples_of_atomic_values_are_kept_and_others_copied() -> None:
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv.nested = ([1], 2)  # holds a list: deepcopy copies the tuple
    fast = copy_model(conv)
    assert fast.kernel_size is conv.kernel_size and fast.padding is conv.padding
    assert fast.nested == ([1], 2) and fast.nested is not conv.nested and fast.nested[0] is not conv.nested[0]
