"""The rule registry: :func:`register_rule` fills it, :func:`lookup_rule` reads it.

Rule families (``layers.py``, ``pointwise.py``, ...) import :func:`register_rule` from here,
not from the :mod:`slimprune.rules` package, which imports them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Rule", "register_rule", "lookup_rule", "has_module_rule", "registered_targets"]


@dataclass(frozen=True)
class Rule:
    """How one op type treats channels.

    Attributes:
        propagate: ``(ctx, node) -> ChannelInfo | tuple | None``: map input labels to
            output labels, tie labels together, and record sliced parameters.
        resize: for modules, ``(module, original) -> None`` updating attributes such as
            ``out_channels`` from the already-sliced parameters.
        fold: for modules consuming channels, ``(module, consts) -> Tensor | None``: the
            bias change that reproduces removed input channels holding constant values
            ``consts`` (a full-length input vector, zero at kept channels).
    """

    propagate: Callable[..., Any]
    resize: Callable[[nn.Module, nn.Module], None] | None = None
    fold: Callable[[nn.Module, Any], Any] | None = None


_MODULE_RULES: dict[type, Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}


def register_rule(
    *targets: type | Callable[..., Any] | str,
    resize: Callable[[nn.Module, nn.Module], None] | None = None,
    fold: Callable[[nn.Module, Any], Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a channel rule for modules (a class), functions, or tensor methods (a name).

    A module class with a rule is traced as a leaf: fx records one call of it and the rule
    says what happens to its channels. Registering a target again replaces the old rule.

    Example:
        >>> @register_rule(torch.roll, "roll")
        ... def roll(ctx, node):
        ...     return ctx.passthrough(node)
    """
    if not targets:
        raise TypeError("register_rule needs at least one target: a module class, a function or a method name")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        rule = Rule(fn, resize, fold)
        for t in targets:
            if isinstance(t, str):
                _METHOD_RULES[t] = rule
            elif inspect.isclass(t) and issubclass(t, nn.Module):
                _MODULE_RULES[t] = rule
            elif callable(t):
                _FUNCTION_RULES[t] = rule
            else:
                raise TypeError(
                    f"cannot register a channel rule for {t!r}: targets are nn.Module classes, "
                    f"functions (torch.cat, operator.add) or tensor method names ('view')"
                )
        return fn

    return decorator


def _module_rule(cls: type) -> Rule | None:
    rule = _MODULE_RULES.get(cls)
    if rule is not None:
        return rule
    # A subclass inherits its parent's rule only if it keeps the parent's forward:
    # a subclass that overrides forward may do anything with its channels.
    for base in cls.__mro__[1:]:
        if base in _MODULE_RULES:
            return _MODULE_RULES[base] if cls.forward is base.forward else None
    return None


def has_module_rule(cls: type) -> bool:
    """True if modules of this class have a channel rule (and are traced as leaves)."""
    return _module_rule(cls) is not None


def lookup_rule(op: str, target: Any, module: nn.Module | None = None) -> Rule | None:
    """The rule for one fx node (``op``/``target`` as in ``torch.fx.Node``), or None."""
    if op == "call_module":
        return _module_rule(type(module))
    if op == "call_function":
        try:
            return _FUNCTION_RULES.get(target)
        except TypeError:  # unhashable target
            return None
    if op == "call_method":
        return _METHOD_RULES.get(target)
    return None


def registered_targets() -> dict[str, list[str]]:
    """Everything that has a rule, for error messages and docs."""
    return {
        "modules": sorted(c.__name__ for c in _MODULE_RULES),
        "functions": sorted(getattr(f, "__name__", repr(f)) for f in _FUNCTION_RULES),
        "methods": sorted(_METHOD_RULES),
    }
