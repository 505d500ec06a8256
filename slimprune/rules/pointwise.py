"""Rules for ops that keep channels apart: activations, dropout, pooling, interpolation,
elementwise arithmetic with broadcasting, and reductions over non-channel dimensions."""

from __future__ import annotations

import builtins
import operator

import torch
import torch.nn.functional as F
from torch import nn

from .._channels import SizeOf
from ._registry import register_rule

# ------------------------------------------------------------------- one channel in, one out
_MODULES = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink,
    nn.RReLU,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad2d,
)
_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.elu, F.elu_, F.selu, F.celu, F.leaky_relu, F.leaky_relu_, F.gelu,
    F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh, F.hardtanh_,
    F.softplus, F.softsign, F.logsigmoid, F.hardshrink, F.softshrink, F.tanhshrink, F.rrelu,
    F.threshold,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d,
    F.interpolate, F.pad,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg,
    torch.sqrt, torch.rsqrt, torch.square, torch.clamp, torch.clip, torch.erf, torch.sin, torch.cos,
    torch.max_pool1d, torch.max_pool2d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
    torch.nan_to_num, torch.sign, torch.log, torch.reciprocal,
    operator.neg, operator.pos, operator.abs,
)
_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "sqrt", "rsqrt",
    "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "sign", "log", "reciprocal",
    "contiguous", "clone", "detach", "float", "half", "double", "bfloat16", "to", "type_as", "cpu",
    "cuda", "requires_grad_", "pow", "erf", "sin", "cos", "nan_to_num",
)


def _torchvision_functions() -> tuple:
    """torchvision ops fx keeps whole (wrapped functions) that act per channel."""
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # torchvision is optional
        return ()
    return (stochastic_depth,)


# The tensor a method reads only for its dtype or device (``x.to(y)``, ``x.type_as(y)``).
_DTYPE_ONLY = frozenset({"to", "type_as"})


def tensor_operands(ctx, node) -> list:
    """Every argument of ``node`` that is a tensor, positional or keyword (``out=`` aside)."""
    values = list(node.args) + [v for k, v in node.kwargs.items() if k != "out"]
    return [v for v in values if isinstance(ctx.shape(v), torch.Size)]


@register_rule(*_MODULES, *_FUNCTIONS, *_METHODS, *_torchvision_functions())
def pointwise(ctx, node):
    """Output channel i is computed from input channel i only.

    Where a second tensor takes part (``torch.clamp(a, min=b)``, ``a.pow(b)``,
    ``a.clamp_max(b)``), it is elementwise too: channel i of every operand meets channel i
    of the others, so they are tied as in ``a + b`` (see :func:`broadcast`).
    """
    operands = tensor_operands(ctx, node)
    if len(operands) > 1 and not (node.op == "call_method" and node.target in _DTYPE_ONLY):
        return broadcast(ctx, node, operands)
    return ctx.passthrough(node)


# ----------------------------------------------------------- arithmetic with broadcasting
def broadcast(ctx, node, operands):
    """Ties channels at the same position of every operand (``x + y``, ``x * gate``).

    An operand whose channel axis has size 1 broadcasts and ties nothing (its one channel
    is kept); an unlabelled operand of full size along the channel axis keeps everything.
    """
    out = ctx.shape(node)
    if not isinstance(out, torch.Size):
        return None
    nd = len(out)
    parts, plain, labelled_ops = [], [], []
    for op in operands:
        shp = ctx.shape(op)
        if not isinstance(shp, torch.Size):
            continue
        off = nd - len(shp)
        info = ctx.info(op)
        if info is not None and not isinstance(info, tuple):
            ax = info.axis + off
            if info.labels.size == 1 and out[ax] != 1:
                ctx.keep(info.labels)
                plain.append((shp, off))
            else:
                parts.append((ax, info.labels))
                labelled_ops.append(op)
        else:
            plain.append((shp, off))
    if not parts:
        return None
    axes = {ax for ax, _ in parts}
    if len(axes) > 1:
        # A constant or parameter (no batch axis) labelled on another axis than the
        # activations' channels (EVA's rotary table, labelled on head_dim, times q with its
        # heads labelled): it is not sliced along that axis, and the activations' channels
        # carry on. Activations on different axes keep everything.
        live = {ax for (ax, _), op in zip(parts, labelled_ops) if ctx.is_batched(op)}
        if len(live) != 1:
            for _, lab in parts:
                ctx.keep(lab)
            return None
        for (ax, lab), op in zip(parts, labelled_ops):
            if ax not in live:
                ctx.keep(lab)
                plain.append((ctx.shape(op), nd - len(ctx.shape(op))))
        parts = [(ax, lab) for ax, lab in parts if ax in live]
        axes = live
    ax = axes.pop()
    for shp, off in plain:
        k = ax - off
        if k >= 0 and shp[k] == out[ax] and out[ax] > 1:
            for _, lab in parts:
                ctx.keep(lab)
            return None
    first = parts[0][1]
    for _, lab in parts[1:]:
        ctx.tie(first, lab)
    return ctx.info_of(ax, first)


# Elementwise in every tensor operand, positional or keyword: ``torch.add(a, b)``,
# ``torch.lerp(a, b, w)``, ``torch.addcmul(a, t1, t2)``, ``a ** b``, ``torch.maximum(a, b)``.
_ELEMENTWISE_FUNCTIONS = (
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.mod,
    operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.true_divide, torch.multiply, torch.subtract,
    torch.floor_divide, torch.remainder, torch.fmod, torch.pow, torch.maximum, torch.minimum,
    torch.fmax, torch.fmin, torch.clamp_min, torch.clamp_max, torch.lerp, torch.addcmul, torch.addcdiv,
    # comparisons: a boolean per element (the condition of torch.where)
    operator.gt, operator.ge, operator.lt, operator.le, operator.eq, operator.ne,
    torch.gt, torch.ge, torch.lt, torch.le, torch.eq, torch.ne,
)
_ELEMENTWISE_METHODS = (
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "floor_divide",
    "floor_divide_", "remainder", "remainder_", "fmod", "fmod_", "pow_", "maximum", "minimum",
    "fmax", "fmin", "clip_", "lerp", "lerp_", "addcmul", "addcmul_", "addcdiv", "addcdiv_",
    "gt", "ge", "lt", "le", "eq", "ne",
)


@register_rule(*_ELEMENTWISE_FUNCTIONS, *_ELEMENTWISE_METHODS)
def binary(ctx, node):
    if node.target is operator.add:
        joined = joined_sizes(ctx, node)
        if joined is not None:
            return joined
    return broadcast(ctx, node, tensor_operands(ctx, node))


def _size_items(ctx, value, inner: bool) -> list | None:
    """The labels behind each element of a tuple of sizes (None: a size no channel count
    gives), or None when that is not known. ``inner``: ``value`` is one element of a tuple
    written out (``(n, x.size(-1))``), else an operand of ``+`` that must itself be a tuple."""
    import torch.fx as fx

    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return [None] if inner else None
    if isinstance(value, (tuple, list)) and not inner:
        items: list = []
        for v in value:
            part = _size_items(ctx, v, True)
            if part is None:
                return None
            items += part
        return items
    if not isinstance(value, fx.Node):
        return None
    info, shape = ctx.info(value), ctx.shape(value)
    if isinstance(info, SizeOf):
        if info.derived or info.single != inner:  # computed from a width, or a tuple where a size is wanted
            return None
        return list(info.dims)
    if info is not None:
        return None
    if inner:  # a Python int that no channel count gave
        return [None] if shape is None else None
    return [None] * len(shape) if type(shape) is tuple and all(s is None for s in shape) else None


def joined_sizes(ctx, node) -> SizeOf | None:
    """``(-1,) + input_shape[1:] + (h.size(-1),)`` (GPT-2's ``output_shape``): tuples of sizes
    joined with ``+`` stay a shape whose every element keeps the labels of the axis it was
    read from, so a reshape to it ties (or keeps) each one where it lands, as a reshape to
    ``h.shape`` does; None when an operand is not such a tuple (then the sizes are derived)."""
    if len(node.args) != 2 or node.kwargs:
        return None
    parts = [_size_items(ctx, a, False) for a in node.args]
    if any(p is None for p in parts):
        return None
    items = parts[0] + parts[1]
    shape = ctx.shape(node)
    if type(shape) is not tuple or len(shape) != len(items) or all(d is None for d in items):
        return None
    return SizeOf(tuple(items))


@register_rule(torch.where)
def where(ctx, node):
    if len(node.args) + len(node.kwargs) < 3:
        return ctx.barrier(node, "torch.where with one argument returns indices")
    return broadcast(ctx, node, tensor_operands(ctx, node))


# ------------------------------------------------------------------------- reductions
def _reduce(ctx, node, dim_index: int = 1):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    in_shape = ctx.shape(node.args[0])
    dims = ctx.arg(node, dim_index, "dim")
    # std/var take `unbiased` (or `correction`) before keepdim
    offset = 2 if getattr(node.target, "__name__", node.target) in ("std", "var") else 1
    keepdim = bool(ctx.arg(node, dim_index + offset, "keepdim", False))
    if dims is None:
        ctx.keep(x.labels)
        return None
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not all(isinstance(d, int) for d in dims):
        return ctx.barrier(node, "reduction dims are not constants")
    dims = [d % len(in_shape) for d in dims]
    if x.axis in dims:  # reducing over channels mixes them
        ctx.keep(x.labels)
        return None
    axis = x.axis if keepdim else x.axis - sum(d < x.axis for d in dims)
    return ctx.info_of(axis, x.labels)


@register_rule(torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
               "mean", "sum", "amax", "amin", "std", "var", "logsumexp")
def reduction(ctx, node):
    return _reduce(ctx, node)


def _softmax_dim(ctx, node):
    if node.op == "call_module":
        return ctx.module(node).dim
    return ctx.arg(node, 1, "dim")


@register_rule(nn.Softmax, nn.LogSoftmax, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
               "softmax", "log_softmax")
def softmax(ctx, node):
    x = ctx.input(node, 0, "input")
    if x is None:
        return None
    dim = _softmax_dim(ctx, node)
    if dim is None or dim % len(ctx.shape(node)) == x.axis:
        ctx.keep(x.labels)
        return None
    return x


# --------------------------------------------------------------- shape queries (no data)
def _shape_of(ctx, node):
    x = ctx.input(node, 0)
    shape = ctx.shape(node.args[0])
    if not isinstance(shape, torch.Size):
        return None
    return SizeOf(tuple(x.labels if x is not None and d == x.axis else None for d in range(len(shape))))


@register_rule("size")
def size(ctx, node):
    full = _shape_of(ctx, node)
    dim = ctx.arg(node, 1, "dim")
    if full is None or dim is None:
        return full
    return SizeOf((full.dims[dim % len(full.dims)],), single=True)


@register_rule("dim", "numel", "type", "get_device", "nelement")
def shape_query(ctx, node):
    """A value about a tensor, not its data. ``x.type(dtype)`` is a cast (its channels pass);
    an element count (``numel``) follows the pruned width, so it keeps the tensor's channels."""
    if node.target == "type" and (len(node.args) > 1 or node.kwargs):
        return ctx.passthrough(node)
    if node.target in ("numel", "nelement"):
        x = ctx.input(node, 0)
        if x is not None:
            ctx.keep(x.labels)
    return None


@register_rule(builtins.getattr)
def get_attribute(ctx, node):
    if node.args[1] == "shape":
        return _shape_of(ctx, node)
    if node.args[1] in ("dtype", "device", "ndim", "is_cuda", "requires_grad"):
        return None
    return ctx.barrier(node, f"attribute {node.args[1]!r} of a tensor")


@register_rule(torch.norm, torch.linalg.vector_norm, "norm")
def norm(ctx, node):
    """``x.norm(p, dim, keepdim)``: a reduction; over the channel axis it mixes channels."""
    return _reduce(ctx, node, dim_index=2)


@register_rule("new_empty", "new_zeros", "new_ones", "new_full",
               torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like)
def new_tensor(ctx, node):
    """A new tensor that reads nothing of its source's values (``x.new_zeros(x.shape)``,
    ``torch.zeros_like(x)``). ``*_like`` has its source's shape, hence its channels; a size
    read from a tensor's channel axis gives the new tensor that axis's channels (its width
    follows the pruned width at run time); literal sizes give it none, except a per-head
    constant sized by its attention module's head count (``x.new_zeros((1, self.n_heads, q,
    k))``), whose heads axis is labelled as ``torch.zeros``'s is (``rules/heads.py``); a
    per-head ``new_empty`` holds undefined values and keeps its heads (a barrier)."""
    from .._channels import SizeOf
    from .heads import per_head_constant, uninitialised_heads

    if node.op == "call_function":
        return ctx.passthrough(node)
    ctx.sizes_rewritten(node)  # sizes read from a shape are sizes here, not values
    if node.target == "new_empty":
        if uninitialised_heads(ctx, node, 1):
            return None
    else:
        heads = per_head_constant(ctx, node, 1, fill=node.target == "new_full")
        if heads is not None:
            return heads
    sizes = list(node.args[1:2] if node.target == "new_full" else node.args[1:])
    if not sizes and "size" in node.kwargs:
        sizes = [node.kwargs["size"]]
    if len(sizes) == 1 and not isinstance(ctx.info(sizes[0]), SizeOf):
        sizes = list(sizes[0]) if isinstance(sizes[0], (tuple, list)) else sizes
    dims: list = []
    for v in sizes:
        info = ctx.info(v)
        if isinstance(info, SizeOf) and not info.single:
            dims.extend(info.dims)
        elif isinstance(info, SizeOf) and not info.derived:
            dims.append(info.dims[0])
        else:
            dims.append(None)
    shape = ctx.shape(node)
    labelled = [(k, d) for k, d in enumerate(dims) if d is not None]
    if len(labelled) != 1 or len(dims) != len(shape) or shape[labelled[0][0]] != labelled[0][1].size:
        for _, d in labelled:
            ctx.keep(d)
        return None
    return ctx.info_of(*labelled[0])
