"""Numbers for a model before and after pruning: parameters, MACs/FLOPs per layer, latency.

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`, which only counts the
operators it has a formula for: matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``),
convolutions (transposed and grouped included) and the CUDA attention kernels. slimprune
adds the two attention kernels it leaves out on the CPU: ``F.scaled_dot_product_attention``
(``_scaled_dot_product_flash_attention_for_cpu``) and the fused path ``nn.MultiheadAttention``
takes in inference (``_native_multi_head_attention``: the q/k/v and output projections and
both attention products), without which a ViT's attention blocks counted as zero. Everything
else counts as zero: BatchNorm, activations, pooling, element-wise additions, biases,
embeddings, fused RNN kernels (``nn.LSTM``/``nn.GRU``). Every counted formula is two FLOPs
per multiply-accumulate, so ``macs == flops // 2``.

Latency comes from :mod:`torch.utils.benchmark`, which sets the thread count and
synchronises CUDA around each timed block; :func:`measure` adds an explicit warm-up and
reports the median over blocks of calls together with the device, thread count and batch
size it used.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ._modes import kept_modes
from ._trace import KeywordInputs, call_model, check_keywords, normalize_inputs
from .errors import ArgumentTypeError, ExampleInputError, ExampleInputTypeError, InvalidArgumentError

__all__ = [
    "Comparison",
    "LayerStats",
    "Latency",
    "Measurement",
    "compare",
    "count_params",
    "measure",
]

# Calls run before timing starts, so lazy initialisation, allocator growth and cuDNN
# autotuning stay out of the measured blocks.
_WARMUP_CALLS = 3
BACKENDS = ("torch", "onnxruntime")

# Attributes that hold a layer's output width, in the order they are looked up.
_WIDTH_ATTRIBUTES = ("out_channels", "out_features", "num_features", "num_channels")


@dataclasses.dataclass(frozen=True)
class LayerStats:
    """Parameters and compute of one module, as named by ``model.named_modules()``.

    ``params`` counts the module's own parameters (a parameter shared with an earlier
    module is counted there). ``flops`` and ``macs`` count the operators run inside the
    module and not inside one of its children, summed over every call of the forward pass.
    ``channels`` is the output width (``out_channels``, ``out_features``, ``num_features``
    or ``num_channels``) when the module has one.
    """

    name: str
    type: str
    params: int
    macs: int
    flops: int
    channels: int | None = None


@dataclasses.dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass, and the conditions it was measured under.

    ``median_ms`` and ``iqr_ms`` are over ``repeats`` blocks; each block times several
    consecutive calls (as many as make the timer's own overhead negligible) and contributes
    their mean.
    """

    device: str
    threads: int
    batch: int
    median_ms: float
    iqr_ms: float
    repeats: int
    backend: str = "torch"
    deployed: bool = False  # timed in the deployed form (BatchNorm folded, channels-last on the CPU)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Totals, per-layer statistics and (optionally) latency of one model on one input.

    ``layers`` lists every module that owns parameters or runs counted operators itself,
    in ``named_modules()`` order; their ``params`` add up to ``params`` and their ``flops``
    to ``flops`` (unless a module is shared between two parents, see :func:`measure`).
    ``input_shapes`` holds one shape per positional input, ``None`` for non-tensor inputs.
    """

    params: int
    macs: int
    flops: int
    layers: tuple[LayerStats, ...]
    latency: Latency | None
    input_shapes: tuple[tuple[int, ...] | None, ...]

    def to_dict(self) -> dict[str, Any]:
        """Return plain dicts, lists and numbers, ready for ``json.dumps``."""
        return {
            "params": self.params,
            "macs": self.macs,
            "flops": self.flops,
            "layers": [dataclasses.asdict(layer) for layer in self.layers],
            "latency": None if self.latency is None else dataclasses.asdict(self.latency),
            "input_shapes": [None if s is None else list(s) for s in self.input_shapes],
        }

    def table(self) -> Table:
        """Return a rich table with one row per layer and a total row."""
        table = Table(title="Model measurement", caption=_caption(self))
        table.add_column("layer")
        table.add_column("type")
        table.add_column("channels", justify="right")
        table.add_column("params", justify="right")
        table.add_column("MACs", justify="right")
        table.add_column("FLOPs", justify="right")
        table.add_column("% FLOPs", justify="right")
        for layer in self.layers:
            table.add_row(
                layer.name or "(model)",
                layer.type,
                _or_dash(layer.channels),
                _human(layer.params),
                _human(layer.macs),
                _human(layer.flops),
                _percent(layer.flops, self.flops),
            )
        table.add_section()
        table.add_row("total", "", "", _human(self.params), _human(self.macs), _human(self.flops), "")
        return table


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Measurements of an original and a pruned model on the same input, and their ratios."""

    original: Measurement
    pruned: Measurement

    @property
    def params_ratio(self) -> float | None:
        """Pruned parameters / original parameters (None if the original has none)."""
        return _ratio(self.pruned.params, self.original.params)

    @property
    def flops_ratio(self) -> float | None:
        """Pruned FLOPs / original FLOPs (None if the original has none counted)."""
        return _ratio(self.pruned.flops, self.original.flops)

    @property
    def speedup(self) -> float | None:
        """Original median latency / pruned median latency (None if latency was not measured)."""
        if self.original.latency is None or self.pruned.latency is None:
            return None
        return _ratio(self.original.latency.median_ms, self.pruned.latency.median_ms)

    def to_dict(self) -> dict[str, Any]:
        """Return plain dicts, lists and numbers, ready for ``json.dumps``."""
        return {
            "original": self.original.to_dict(),
            "pruned": self.pruned.to_dict(),
            "params_ratio": self.params_ratio,
            "flops_ratio": self.flops_ratio,
            "speedup": self.speedup,
        }

    def table(self) -> Table:
        """Return a rich table with rows params/MACs/FLOPs/latency and columns original/pruned/change."""
        table = Table(title="Original vs pruned", caption=_caption(self.pruned))
        table.add_column("")
        table.add_column("original", justify="right")
        table.add_column("pruned", justify="right")
        table.add_column("change", justify="right")
        before, after = self.original, self.pruned
        table.add_row("params", _human(before.params), _human(after.params), _change(self.params_ratio))
        table.add_row("MACs", _human(before.macs), _human(after.macs), _change(_ratio(after.macs, before.macs)))
        table.add_row("FLOPs", _human(before.flops), _human(after.flops), _change(self.flops_ratio))
        speedup = "—" if self.speedup is None else f"{self.speedup:.2f}× speed-up"
        table.add_row("latency", _latency_cell(before.latency), _latency_cell(after.latency), speedup)
        return table

    def layer_table(self) -> Table:
        """Return a rich table with one row per layer name, before → after.

        Layers are matched by module name; a layer present in only one model shows "—" on
        the other side. Original layers come first, in their order, then pruned-only ones.
        """
        table = Table(title="Per-layer change")
        table.add_column("layer")
        table.add_column("type")
        table.add_column("channels", justify="right")
        table.add_column("params", justify="right")
        table.add_column("FLOPs", justify="right")
        before = {layer.name: layer for layer in self.original.layers}
        after = {layer.name: layer for layer in self.pruned.layers}
        names = list(before) + [name for name in after if name not in before]
        for name in names:
            old, new = before.get(name), after.get(name)
            table.add_row(
                name or "(model)",
                (old or new).type,
                _arrow(old, new, lambda layer: _or_dash(layer.channels)),
                _arrow(old, new, lambda layer: _human(layer.params)),
                _arrow(old, new, lambda layer: _human(layer.flops)),
            )
        return table


def count_params(model: nn.Module) -> int:
    """Count the parameters of ``model``; a parameter shared by several modules counts once.

    Args:
        model: any module.

    Returns:
        The number of scalar values in its unique parameters.

    Example:
        >>> count_params(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in _unique_parameters(model))


def measure(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    *,
    latency: bool = True,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    backend: str = "torch",
    deployed: bool = False,
) -> Measurement:
    """Measure parameters, MACs/FLOPs per layer and (optionally) latency of ``model``.

    The model runs in eval mode under ``torch.no_grad``; every module's training flag is
    restored afterwards and nothing else about the model changes. FLOPs are counted by one
    forward pass on the device the model is on (see the module docstring for what is
    counted). Latency is measured on ``device``: if the model lives elsewhere a deep copy is
    moved there, so the model itself never moves.

    A module shared between two parents has its FLOPs counted at its first name; the parents'
    own FLOPs are then a lower bound and the layers' FLOPs may add up to less than the total.

    Args:
        model: the model to measure.
        example_inputs: one tensor, a tuple of positional inputs for ``model(*inputs)``, or a
            dict of keyword inputs for ``model(**inputs)`` (``{"input_ids": ids}``).
            The batch size reported with the latency is the first dimension of the first tensor.
        latency: also time the forward pass (takes about ``min_run_time`` seconds).
        device: where to time the model, ``"cpu"`` or ``"cuda"`` (or ``"cuda:N"``).
        threads: CPU threads torch may use while timing; defaults to ``torch.get_num_threads()``.
        min_run_time: seconds spent timing, after the warm-up.
        backend: what runs the timed forward pass: ``"torch"`` (eager PyTorch, the model as
            it is) or ``"onnxruntime"`` (the model in its deployed form, BatchNorm folded,
            exported with ``torch.onnx.export`` and run by onnxruntime's CPU provider with
            ``threads`` intra-op threads; needs ``pip install 'slimprune[onnx]'``, CPU only).
        deployed: with ``backend="torch"``, time the model's deployed form instead of the
            model as it is: a copy in eval mode with BatchNorm folded into the convs before
            it and channels-last memory on the CPU (:func:`slimprune.latency.deployed`). That
            is the form a ``target="latency"`` plan predicts (``plan.latency_after_ms``), so
            compare those two. The model itself is not changed.

    Returns:
        A :class:`Measurement`.

    Raises:
        ArgumentTypeError, ExampleInputTypeError (TypeErrors): ``model`` is not an ``nn.Module`` or ``example_inputs`` is neither a tensor
            nor a tuple holding at least one tensor.
        ExampleInputError, InvalidArgumentError (ValueErrors): ``example_inputs`` is empty, ``device`` is not a CPU/CUDA device or CUDA
            is not available, or ``threads``/``min_run_time`` is not positive.

    Example:
        >>> result = measure(model, torch.randn(1, 3, 224, 224), min_run_time=0.5)
        >>> rich.print(result.table())
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"measure() needs an nn.Module as model, got {type(model).__name__}; "
                                f"pass the model itself (a torch.nn.Module).")
    inputs = _as_input_tuple(example_inputs)
    check_keywords(model, inputs)
    if backend not in BACKENDS:
        raise InvalidArgumentError(f"measure(backend={backend!r}) is not a latency backend; use one of {', '.join(map(repr, BACKENDS))}.")
    if backend == "onnxruntime" and latency and str(device).split(":")[0] != "cpu":
        raise InvalidArgumentError(f"measure(backend='onnxruntime') times on the CPU only, got device={device!r}; "
                                   f"pass device='cpu' or backend='torch' for GPU latency.")
    target = _resolve_device(device)
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"measure(threads=...) must be a positive int, got {threads!r}; leave it None to use torch.get_num_threads().")
    if not min_run_time > 0:
        raise InvalidArgumentError(f"measure(min_run_time=...) must be a positive number of seconds, got {min_run_time!r}; "
                                   f"for example min_run_time=0.5.")

    with kept_modes(model), torch.no_grad():
        model.eval()
        total_flops, self_flops = _count_flops(model, _to_device(inputs, _device_of(model)))
        timing = None
        if latency:
            if backend == "onnxruntime":
                timing = _time_onnxruntime(model, inputs, threads, min_run_time)
            elif deployed:
                from .latency import deployed as deployed_form, deployed_inputs
                timing = dataclasses.replace(
                    _time(deployed_form(model, target), deployed_inputs(inputs, target), target, threads, min_run_time),
                    deployed=True)
            else:
                timing = _time(model, inputs, target, threads, min_run_time)

    layers = tuple(_layer_stats(model, self_flops))
    return Measurement(
        params=count_params(model),
        macs=total_flops // 2,
        flops=total_flops,
        layers=layers,
        latency=timing,
        input_shapes=tuple(tuple(x.shape) if isinstance(x, torch.Tensor) else None for x in inputs),
    )


def compare(
    original: nn.Module,
    pruned: nn.Module,
    example_inputs: torch.Tensor | tuple[Any, ...],
    **kw: Any,
) -> Comparison:
    """Measure ``original`` and ``pruned`` on the same inputs with the same settings.

    Args:
        original: the model before pruning.
        pruned: the model after pruning.
        example_inputs: as for :func:`measure`.
        **kw: keyword arguments of :func:`measure` (``latency``, ``device``, ``threads``,
            ``min_run_time``, ``backend``, ``deployed``), used for both models.

    Returns:
        A :class:`Comparison`.

    Raises:
        TypeError, ValueError: as :func:`measure`.

    Example:
        >>> result = compare(model, smaller, torch.randn(1, 3, 224, 224))
        >>> print(f"{result.flops_ratio:.2f} of the FLOPs, {result.speedup:.2f}× faster")
    """
    return Comparison(
        original=measure(original, example_inputs, **kw),
        pruned=measure(pruned, example_inputs, **kw),
    )


def _unique_parameters(model: nn.Module) -> Iterator[nn.Parameter]:
    """Yield each parameter once, in ``named_parameters()`` order."""
    seen: set[int] = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                yield param


def _as_input_tuple(example_inputs: Any) -> tuple[Any, ...]:
    """Return the positional inputs as a tuple, or explain what to pass instead.

    The forms :func:`slimprune.plan` accepts: a tensor, or a tuple or list of positional inputs
    (a list is several inputs; wrap it, ``(inputs,)``, if forward takes the list as one).
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    if isinstance(example_inputs, dict):  # keyword inputs: model(**example_inputs)
        example_inputs = normalize_inputs(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise ExampleInputTypeError(
            f"example_inputs must be a tensor or a tuple/list of positional inputs, got "
            f"{type(example_inputs).__name__}; for example torch.randn(1, 3, 224, 224)."
        )
    if not example_inputs:
        raise ExampleInputError("example_inputs is empty; pass at least one input tensor, "
                                "for example torch.randn(1, 3, 224, 224).")
    if not any(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ExampleInputTypeError(
            "example_inputs holds no tensor; pass at least one tensor so the model can run "
            "and the batch size can be read from it."
        )
    return example_inputs


def _resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a concrete CPU or CUDA device, or an error saying why it cannot be used."""
    from .latency import check_device

    return check_device(device, "measure")


def _device_of(model: nn.Module) -> torch.device:
    """Return the device of the model's first parameter or buffer (CPU if it has none)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _to_device(inputs: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    """Move the tensor inputs to ``device``; leave the others as they are (and keyword inputs keywords)."""
    moved = tuple(x.to(device) if isinstance(x, torch.Tensor) else x for x in inputs)
    return KeywordInputs(dict(zip(inputs.names, moved))) if isinstance(inputs, KeywordInputs) else moved


def _run(model: nn.Module, inputs: tuple[Any, ...]) -> None:
    """Call the model once; if it fails, say which inputs it was given."""
    try:
        call_model(model, inputs)
    except Exception as e:
        shapes = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in inputs]
        e.add_note(f"slimprune.measure: the model failed on example_inputs {shapes}.")
        raise


def _sdpa_cpu_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """FLOPs of ``_scaled_dot_product_flash_attention_for_cpu``: torch's own SDPA formula,
    which its counter registers for the CUDA kernels only."""
    return sdpa_flop_count(query, key, value)


def _native_mha_flops(query, key, value, embed_dim, num_heads, qkv_weight, *args, out_shape=None, **kwargs) -> int:  # type: ignore[no-untyped-def]
    """FLOPs of ``_native_multi_head_attention`` (``nn.MultiheadAttention``'s inference path).

    Inputs are ``[B, L, E]`` (or ``[L, E]``); ``qkv_weight`` is ``[3E, E]``: q is projected
    over the query's positions, k and v over the key's, then both attention products and the
    output projection ``[E, E]``.
    """
    batch = query[0] if len(query) == 3 else 1
    q_len, k_len = query[-2], key[-2]
    e_out, e_in = qkv_weight[0] // 3, qkv_weight[1]
    projections = 2 * batch * (q_len + 2 * k_len) * e_out * e_in
    # Heads split the width, so both products cost what one head of the full width does.
    attention = sdpa_flop_count((batch, 1, q_len, e_out), (batch, 1, k_len, e_out), (batch, 1, k_len, e_out))
    output = 2 * batch * q_len * e_out * e_out
    return projections + attention + output


_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._native_multi_head_attention: _native_mha_flops,
}


def _count_flops(model: nn.Module, inputs: tuple[Any, ...]) -> tuple[int, dict[str, int]]:
    """Run the model once under FlopCounterMode; return the total and each module's own FLOPs."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
        _run(model, inputs)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())

    # FlopCounterMode names a module "<RootClass>.<path>", where a shared module may appear
    # under any of its paths. Resolve each path to the module object and name it the way
    # named_modules() does, so names agree with everything else in slimprune.
    names = {id(module): name for name, module in model.named_modules()}
    root = type(model).__name__
    inclusive: dict[str, int] = defaultdict(int)
    for key, per_op in counts.items():
        head, _, path = key.partition(".")
        if key == "Global" or head != root:
            continue  # modules outside the model's tree are counted in their caller
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if id(module) in names:
            inclusive[names[id(module)]] += sum(per_op.values())

    own: dict[str, int] = {}
    for name, module in model.named_modules():
        inside_children = sum(inclusive.get(names[id(child)], 0) for child in module.children())
        own[name] = max(inclusive.get(name, 0) - inside_children, 0)
    return total, own


def _layer_stats(model: nn.Module, self_flops: dict[str, int]) -> Iterator[LayerStats]:
    """Yield stats for each module that owns parameters or runs counted operators itself."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        params = 0
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params += param.numel()
        flops = self_flops.get(name, 0)
        if params or flops:
            yield LayerStats(
                name=name,
                type=type(module).__name__,
                params=params,
                macs=flops // 2,
                flops=flops,
                channels=_width(module),
            )


def _width(module: nn.Module) -> int | None:
    """Return the module's output width if it declares one."""
    for attribute in _WIDTH_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _time(model: nn.Module, inputs: tuple[Any, ...], device: torch.device, threads: int, min_run_time: float) -> Latency:
    """Time ``model(*inputs)`` on ``device`` with torch.utils.benchmark."""
    # Imported here: torch.utils.benchmark pulls in cpp_extension, which logs a CUDA_HOME
    # warning on some machines; `import slimprune` should print nothing.
    from torch.utils import benchmark

    runner = model if _device_of(model) == device else _copy_to(model, device)
    timer = benchmark.Timer(
        stmt="call_model(model, inputs)",
        globals={"model": runner, "inputs": _to_device(inputs, device), "call_model": call_model},
        num_threads=threads,
    )
    timer.timeit(_WARMUP_CALLS)
    result = timer.blocked_autorange(min_run_time=min_run_time)
    first = next(x for x in inputs if isinstance(x, torch.Tensor))
    return Latency(
        device=str(device),
        threads=threads,
        batch=int(first.shape[0]) if first.dim() else 1,
        median_ms=result.median * 1e3,
        iqr_ms=result.iqr * 1e3,
        repeats=len(result.times),
    )


def _time_onnxruntime(model: nn.Module, inputs: tuple[Any, ...], threads: int, min_run_time: float) -> Latency:
    """Time the deployed ``model`` exported to ONNX and run by onnxruntime (see :mod:`slimprune.latency`)."""
    from .latency import onnxruntime_times

    times = np.asarray(onnxruntime_times(model, inputs, threads=threads, min_run_time=min_run_time))
    first = next(x for x in inputs if isinstance(x, torch.Tensor))
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return Latency(
        device="cpu",
        threads=threads,
        batch=int(first.shape[0]) if first.dim() else 1,
        median_ms=float(median),
        iqr_ms=float(q3 - q1),
        repeats=int(times.size),
        backend="onnxruntime",
    )


def _copy_to(model: nn.Module, device: torch.device) -> nn.Module:
    """Return a copy of ``model`` on ``device``, leaving the original where it is."""
    try:
        return copy.deepcopy(model).to(device)
    except Exception as e:
        e.add_note(
            f"slimprune.measure: the model is not on {device} and could not be copied there; "
            f"move it yourself (model.to('{device}')) before measuring."
        )
        raise


def _ratio(numerator: float, denominator: float) -> float | None:
    """Return numerator / denominator, or None when the denominator is zero."""
    return numerator / denominator if denominator else None


def _human(value: float) -> str:
    """Format a count with a K/M/G/T suffix and three significant digits."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def _percent(part: float, whole: float) -> str:
    """Format part/whole as a percentage, or a dash when whole is zero."""
    return f"{100 * part / whole:.1f}%" if whole else "—"


def _change(ratio: float | None) -> str:
    """Format a pruned/original ratio as a signed percentage change."""
    return "—" if ratio is None else f"{100 * (ratio - 1):+.1f}%"


def _or_dash(value: Any) -> str:
    """Format a value, or a dash for None."""
    return "—" if value is None else str(value)


def _arrow(before: LayerStats | None, after: LayerStats | None, cell: Callable[[LayerStats], str]) -> str:
    """Format one field of two layers as "before → after", a dash for a missing layer."""
    return f"{'—' if before is None else cell(before)} → {'—' if after is None else cell(after)}"


def _latency_cell(latency: Latency | None) -> str:
    """Format a latency as median ± half the IQR."""
    if latency is None:
        return "—"
    return f"{latency.median_ms:.3g} ms ± {latency.iqr_ms / 2:.2g}"


def _caption(measurement: Measurement) -> str:
    """Describe the inputs and the latency conditions in one line."""
    shapes = ", ".join("?" if s is None else "×".join(map(str, s)) for s in measurement.input_shapes)
    latency = measurement.latency
    if latency is None:
        return f"inputs {shapes}; latency not measured"
    return (
        f"inputs {shapes}; latency ({latency.backend}{', deployed form' if latency.deployed else ''}): median of {latency.repeats} blocks on {latency.device}, "
        f"{latency.threads} thread(s), batch {latency.batch}"
    )
