"""Shape propagation without arithmetic: the traced graph run on ``meta`` tensors.

Shape propagation needs each node's output *shape*, never its values. PyTorch's ``meta``
device has a kernel for every ATen op that computes exactly the output shape (and dtype)
the real kernel would, without touching data; so the graph is run once with every
parameter, buffer, tensor attribute and example input replaced by a ``meta`` tensor of
the same shape and dtype (a ResNet-50 forward at 224 px: ~140 ms of arithmetic, a few
milliseconds on meta).

This is sound only where no shape depends on a value, and where the real run raises
nothing the meta run would not. Both are guarded:

* Anything that needs a value (``.item()``, ``bool(t)``, ``tolist()``, ``nonzero``,
  a tensor made on the CPU mixed with a meta one) raises on meta; the caller then runs
  the graph on the real inputs, as before. The meta run never answers for a graph it
  could not finish.
* Integer inputs (token ids, indices) are never replaced: a real run checks their values
  against table sizes (an embedding raises on an id out of range), meta does not. A graph
  with a non-floating-point tensor input is run on the real inputs.

The swap is undone before this returns, whether the run succeeded or not.

What else a run could change (an attribute a user module's forward assigns) the caller
snapshots and restores, unless :func:`runs_only_torch` shows the graph calls nothing that
could assign one: then the snapshot (a copy of every module's attributes, ~4 ms on a few
hundred modules) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.nn.modules import module as _module_hooks

__all__ = ["run_on_meta", "runs_only_torch"]


def _all_floating(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() and not value.is_meta
    if isinstance(value, (list, tuple)):
        return all(_all_floating(v) for v in value)
    if isinstance(value, dict):
        return all(_all_floating(v) for v in value.values())
    return value is None or isinstance(value, (bool, int, float, str))


def _to_meta(value: Any, meta: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        return meta(value)
    if type(value) in (list, tuple):
        return type(value)(_to_meta(v, meta) for v in value)
    if type(value) is dict:
        return {k: _to_meta(v, meta) for k, v in value.items()}
    return value


@contextmanager
def _meta_state(model: nn.Module) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Every parameter, buffer and tensor attribute of ``model`` on meta (shared tensors stay
    shared); yields the converter; restores the originals on exit."""
    memo: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def meta(t: torch.Tensor) -> torch.Tensor:
        hit = memo.get(id(t))
        if hit is None:
            if type(t) not in (torch.Tensor, nn.Parameter, nn.Buffer):
                raise TypeError(f"{type(t).__name__} is not a plain tensor")  # lazy, quantized, subclassed
            # (sizes as a tuple: torch.empty parses a torch.Size ~3 us slower, here and below;
            # empty_like of a strided tensor on a real device, in the contiguous layout, makes
            # the same tensor ~2 us faster still)
            if t.layout is torch.strided and not t.is_meta:
                made = torch.empty_like(t, device="meta", memory_format=torch.contiguous_format)
            else:
                made = torch.empty(tuple(t.shape), dtype=t.dtype, device="meta")
            hit = memo[id(t)] = (t, made)
        return hit[1]

    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for m in model.modules():
            for store in (m._parameters, m._buffers, vars(m)):
                for key, value in store.items():
                    if isinstance(value, torch.Tensor):
                        saved.append((store, key, value))
                        store[key] = meta(value)
        yield meta
    finally:
        for store, key, value in reversed(saved):
            store[key] = value


def run_on_meta(model: nn.Module, inputs: tuple[Any, ...], run: Callable[[tuple[Any, ...]], Any]) -> bool:
    """Call ``run(meta_inputs)`` with ``model``'s state on meta; True if it finished.

    False (nothing to undo but what ``run`` itself wrote, which a real run overwrites) when
    an input is not floating point or anything on the way raised.
    """
    if not _all_floating(inputs):
        return False
    try:
        with _meta_state(model) as meta:
            run(tuple(_to_meta(v, meta) for v in inputs))
    except Exception:  # any failure means "shapes need values here": the caller runs for real
        return False
    return True


# torch.nn modules whose forward assigns to the module: an RNN refreshes its flat weight list,
# SyncBatchNorm sets its process group.
_ASSIGNING_TORCH_MODULES: tuple[type, ...] = (nn.RNNBase, nn.SyncBatchNorm)
# Where the functions of a graph that cannot touch a module come from (a function that fx.wrap
# keeps whole, torchvision's stochastic_depth, is its own module's and is not one of them).
_TORCH_FUNCTION_MODULES = frozenset({"_operator", "operator", "math"})


def _torch_module(m: nn.Module) -> bool:
    """Is ``m`` (and every module inside it) a torch.nn module that assigns nothing when called,
    with no forward hook of its own that could?"""
    for sub in m.modules() if m._modules else (m,):  # (a leaf without children: itself alone)
        if not type(sub).__module__.startswith("torch.nn.modules.") or isinstance(sub, _ASSIGNING_TORCH_MODULES) \
                or sub._forward_hooks or sub._forward_pre_hooks:
            return False
    return True


def _torch_function(target: Any) -> bool:
    if target is getattr:  # fx's node for x.shape (on a tensor value)
        return True
    module = getattr(target, "__module__", None) or ""
    return module.split(".")[0] == "torch" or module in _TORCH_FUNCTION_MODULES


def runs_only_torch(gm: fx.GraphModule) -> bool:
    """True when running ``gm`` cannot assign to any module: every node is a placeholder,
    an output, a read of an attribute, a Tensor method, a function of torch (or of ``operator``/
    ``math``), or a call of a torch.nn module that assigns nothing (:func:`_torch_module`), and
    no global module hook is registered. False where any node might run user code."""
    if _module_hooks._global_forward_pre_hooks or _module_hooks._global_forward_hooks:
        return False
    modules = dict(gm.named_modules())
    for node in gm.graph.nodes:
        op = node.op
        if op == "call_function":
            if not _torch_function(node.target):
                return False
        elif op == "call_module":
            m = modules.get(node.target)
            if not _torch_module(m if m is not None else gm.get_submodule(node.target)):
                return False
        elif op == "call_method":
            if not isinstance(node.target, str) or not hasattr(torch.Tensor, node.target):
                return False
        elif op not in ("placeholder", "output", "get_attr"):
            return False
    return True


# Modules whose output is a new tensor of their input's shape and dtype, whatever their
# settings: elementwise activations and identities. PyTorch's meta kernels for some of
# them are Python reference decompositions (~0.1-0.5 ms a call), the answer is known.
_SAME_SHAPE_MODULES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh, nn.Identity,
    nn.Dropout, nn.AlphaDropout, nn.LeakyReLU, nn.ELU, nn.Mish,
    nn.Hardtanh, nn.SELU, nn.CELU, nn.Softplus,
)
_SAME_SHAPE_FUNCTIONS = frozenset({
    torch.relu, torch.nn.functional.relu, torch.sigmoid, torch.tanh, torch.nn.functional.hardswish,
    torch.nn.functional.silu, torch.nn.functional.gelu, torch.nn.functional.hardsigmoid,
    torch.nn.functional.relu6, torch.nn.functional.dropout,
})
_SAME_SHAPE_BINARY = frozenset({"add", "mul", "sub", "truediv"})


def _empty_like(x: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(x)`` for a meta ``x``: its meta kernel is a Python reference (~0.5 ms
    a call, it works out the layout), so the common layouts are made directly (~0.01 ms)."""
    if x.is_contiguous():
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta", memory_format=torch.channels_last)
    return torch.empty_like(x)


def _fresh(x: torch.Tensor, inplace: bool) -> torch.Tensor:
    return x if inplace else _empty_like(x)


_CONVS = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def _conv_output(conv: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The meta output of a ``Conv1d/2d/3d`` (exact type, zero padding) on a contiguous meta
    ``x`` it accepts, from the size formula; None where the real call might raise or choose
    another layout (the conv then runs on meta)."""
    n = _CONVS[type(conv)]
    w = conv.weight
    if conv.padding_mode != "zeros" or x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != conv.in_channels \
            or x.dtype != w.dtype or not x.is_floating_point() or not x.is_contiguous() or not w.is_contiguous() \
            or (conv.bias is not None and conv.bias.dtype != w.dtype):
        return None
    if conv.padding == "same":
        pad = None
    elif conv.padding == "valid":
        pad = (0,) * n
    else:
        pad = tuple(conv.padding)
    size = []
    for i in range(n):
        length = x.shape[x.dim() - n + i]
        if pad is None:
            size.append(length)  # "same" pads what the kernel needs (stride 1: Conv checks it on construction)
            continue
        span = conv.dilation[i] * (conv.kernel_size[i] - 1) + 1
        if length + 2 * pad[i] < span:
            return None  # the kernel does not fit: the real conv raises, let it
        size.append((length + 2 * pad[i] - span) // conv.stride[i] + 1)
    return torch.empty((*x.shape[:x.dim() - n - 1], conv.out_channels, *size), dtype=x.dtype, device="meta")


def same_shape_module(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The meta output of ``module(*args)`` when it is known without running it, else None.

    Elementwise modules (``_SAME_SHAPE_MODULES``, exact type) on one meta tensor, and
    BatchNorm, Linear, LayerNorm, adaptive pooling and Conv1d/2d/3d (whose meta kernels
    are Python: ~1 ms a conv) on a meta tensor they accept (a mismatch runs the module,
    which raises as the real one would)."""
    if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor) or not args[0].is_meta:
        return None
    x = args[0]
    if type(module) in _SAME_SHAPE_MODULES:
        return _fresh(x, bool(getattr(module, "inplace", False)))
    if type(module) is nn.Linear and x.dim() >= 1 and x.shape[-1] == module.in_features \
            and x.dtype == module.weight.dtype:
        return torch.empty((*x.shape[:-1], module.out_features), dtype=x.dtype, device="meta")
    if type(module) is nn.LayerNorm and x.dtype.is_floating_point and x.dim() >= len(module.normalized_shape) \
            and tuple(x.shape[x.dim() - len(module.normalized_shape):]) == tuple(module.normalized_shape):
        return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
    if type(module) in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d) and not getattr(module, "return_indices", False) \
            and x.dim() in (3, 4) and all(s > 0 for s in x.shape[-3:]):
        size = module.output_size if isinstance(module.output_size, tuple) else (module.output_size,) * 2
        out = tuple(x.shape[-2 + i] if s is None else int(s) for i, s in enumerate(size))
        return torch.empty((*x.shape[:-2], *out), dtype=x.dtype, device="meta")
    if type(module) in _CONVS:
        return _conv_output(module, x)
    ranks = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}.get(type(module))  # type: ignore[call-overload]
    if ranks is not None and x.dim() in ranks and x.shape[1] == module.num_features and x.is_floating_point():
        return _empty_like(x)
    return None


def same_shape_function(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """The meta output of ``target(*args, **kwargs)`` when it is known without running it,
    else None: an elementwise function of one meta tensor (keywords ``inplace``/``p``/
    ``training``/``approximate`` only), or ``+ - * /`` of two meta tensors of one shape and
    floating dtype, or of one such tensor and a Python float or int."""
    if target in _SAME_SHAPE_FUNCTIONS:
        if args and isinstance(args[0], torch.Tensor) and args[0].is_meta and all(
                not isinstance(a, torch.Tensor) for a in args[1:]) and set(kwargs) <= {"inplace", "p", "training", "approximate"}:
            return _fresh(args[0], bool(kwargs.get("inplace", False)))
        return None
    if getattr(target, "__module__", None) == "_operator" and getattr(target, "__name__", "") in _SAME_SHAPE_BINARY:
        if kwargs or len(args) != 2:
            return None
        a, b = args
        if not (isinstance(a, torch.Tensor) and a.is_meta and a.is_floating_point()):
            return None
        if isinstance(b, torch.Tensor):
            if b.is_meta and b.shape == a.shape and b.dtype == a.dtype and b.stride() == a.stride():
                return _empty_like(a)
            if b.is_meta and b.dtype == a.dtype and a.is_contiguous() and b.is_contiguous():
                # broadcasting (x * scale, SE blocks); broadcast_shapes raises where the real op would
                return torch.empty(tuple(torch.broadcast_shapes(a.shape, b.shape)), dtype=a.dtype, device="meta")
            return None
        if type(b) in (int, float):
            return _empty_like(a)
    if target is torch.nn.functional.layer_norm and len(args) >= 2 and isinstance(args[0], torch.Tensor) \
            and args[0].is_meta and args[0].is_floating_point() and isinstance(args[1], (tuple, list)):
        x, norm = args[0], tuple(args[1])
        if x.dim() >= len(norm) and tuple(x.shape[x.dim() - len(norm):]) == norm and all(
                t is None or (isinstance(t, torch.Tensor) and t.is_meta and tuple(t.shape) == norm and t.dtype == x.dtype)
                for t in list(args[2:4]) + [kwargs.get("weight"), kwargs.get("bias")]) \
                and set(kwargs) <= {"weight", "bias", "eps"} and all(not isinstance(a, torch.Tensor) for a in args[4:]):
            return torch.empty(tuple(x.shape), dtype=x.dtype, device="meta")
    return None
