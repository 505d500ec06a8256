"""The rule registry: :func:`register_rule` fills it, :func:`lookup_rule` reads it.

Rule families (``layers.py``, ``pointwise.py``, ...) import :func:`register_rule` from here,
not from the :mod:`slimprune.rules` package, which imports them.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import InvalidArgumentError, RuleReplacedWarning

__all__ = ["Rule", "register_rule", "register_lazy_rules", "lookup_rule", "has_module_rule", "registered_targets",
           "rule_of", "rule_targets"]


@dataclass(frozen=True)
class Rule:
    """How one op type treats channels.

    Attributes:
        propagate: ``(ctx, node) -> ChannelInfo | tuple | None``: map input labels to
            output labels, tie labels together, and record sliced parameters.
        resize: for modules, ``(module, original) -> None`` updating attributes such as
            ``out_channels`` from the already-sliced parameters.
        fold: for modules consuming channels, ``(module, consts) -> Tensor | dict``: the
            bias change that reproduces removed input channels holding constant values
            ``consts`` (a full-length input vector, zero at kept channels), or a dict of
            changes by parameter name for a module with several biases (an LSTM's).
    """

    propagate: Callable[..., Any]
    resize: Callable[[nn.Module, nn.Module], None] | None = None
    fold: Callable[[nn.Module, Any], Any] | None = None


_MODULE_RULES: dict[type, Rule] = {}
_FUNCTION_RULES: dict[Any, Rule] = {}
_METHOD_RULES: dict[str, Rule] = {}
# Rules for a third-party package's classes, registered the first time a class from that
# package is looked up (so slimprune never imports timm, say, for a model without it).
_LAZY: dict[str, list[Callable[[], None]]] = {}


def register_lazy_rules(package: str, loader: Callable[[], None]) -> None:
    """Call ``loader`` (which registers rules) the first time a module class defined in the
    top-level package ``package`` is looked up; loaders of one package run in the order given."""
    _LAZY.setdefault(package, []).append(loader)


def load_lazy_rules() -> None:
    """Register every lazily loaded family now (those whose package is not importable
    register nothing), e.g. before listing :func:`rule_targets`."""
    while _LAZY:
        for loader in _LAZY.pop(next(iter(_LAZY))):
            loader()


def register_rule(
    *targets: type | Callable[..., Any] | str,
    resize: Callable[[nn.Module, nn.Module], None] | None = None,
    fold: Callable[[nn.Module, Any], Any] | None = None,
    replace: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a channel rule for modules (a class), functions, or tensor methods (a name).

    A module class with a rule is traced as a leaf: fx records one call of it and the rule
    says what happens to its channels. Registering a target again replaces the old rule
    and warns (:class:`~slimprune.RuleReplacedWarning`) unless ``replace=True``.

    Example:
        >>> @register_rule(torch.roll, "roll")
        ... def roll(ctx, node):
        ...     return ctx.passthrough(node)
    """
    if not targets:
        raise TypeError("register_rule needs at least one target: a module class, a function or a method name")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        rule = Rule(fn, resize, fold)
        tables = [_table(t) for t in targets]  # refuse a bad target before registering any
        for t, table in zip(targets, tables):
            old = table.get(t)
            if old is not None and old != rule and not replace:
                warnings.warn(
                    f"register_rule({_name(t)}) replaces the rule {old.propagate.__module__}."
                    f"{old.propagate.__qualname__} with {fn.__module__}.{fn.__qualname__}; pass "
                    f"replace=True if that is intended", RuleReplacedWarning, stacklevel=3)
            table[t] = rule
        return fn

    return decorator


def _table(t: Any) -> dict[Any, Rule]:
    """The registry table a target belongs in."""
    if isinstance(t, str):
        return _METHOD_RULES
    if inspect.isclass(t) and issubclass(t, nn.Module):
        return _MODULE_RULES
    if callable(t):
        return _FUNCTION_RULES
    raise TypeError(
        f"cannot register a channel rule for {t!r}: targets are nn.Module classes, "
        f"functions (torch.cat, operator.add) or tensor method names ('view')"
    )


def _name(t: Any) -> str:
    if isinstance(t, str):
        return repr(t)
    return f"{getattr(t, '__module__', None) or '?'}.{getattr(t, '__qualname__', None) or getattr(t, '__name__', repr(t))}"


# Set by record_lookups(): every registered target whose rule lookup_rule returned.
_looked_up: set[tuple[str, Any]] | None = None


def record_lookups() -> set[tuple[str, Any]]:
    """Start noting which rules :func:`lookup_rule` hands out (for the test suite's check
    that every registered rule is exercised); returns the live set of ``(kind, target)``."""
    global _looked_up
    if _looked_up is None:
        _looked_up = set()
    return _looked_up


@contextlib.contextmanager
def lookups_recorded() -> Iterator[set[tuple[str, Any]]]:
    """Note, in a fresh set, the ``(kind, target)`` of every rule :func:`lookup_rule` hands out
    inside the ``with`` block (added to an enclosing :func:`record_lookups` set too)."""
    global _looked_up
    outer, _looked_up = _looked_up, set()
    try:
        yield _looked_up
    finally:
        if outer is not None:
            outer |= _looked_up
        _looked_up = outer


def rule_targets() -> list[tuple[str, Any]]:
    """Every registered ``(kind, target)``, kind one of ``module``, ``function``, ``method``."""
    return ([("module", t) for t in _MODULE_RULES] + [("function", t) for t in _FUNCTION_RULES]
            + [("method", t) for t in _METHOD_RULES])


def target_name(kind: str, target: Any) -> str:
    """A readable, unique name for a registered target (``function torch.cat``)."""
    return f"{kind} {_name(target)}"


def _module_rule(cls: type) -> Rule | None:
    owner = _rule_owner(cls)
    return None if owner is None else _MODULE_RULES[owner]


def _rule_owner(cls: type) -> type | None:
    """The registered class whose rule modules of ``cls`` use, or None."""
    if _LAZY:
        for loader in _LAZY.pop(str(getattr(cls, "__module__", "")).partition(".")[0], ()):
            loader()
    if cls in _MODULE_RULES:
        return cls
    # A subclass inherits its parent's rule only if it keeps the parent's forward:
    # a subclass that overrides forward may do anything with its channels.
    for base in cls.__mro__[1:]:
        if base in _MODULE_RULES:
            return base if cls.forward is base.forward else None
    return None


def rule_of(kind: str, target: Any) -> Rule | None:
    """The rule registered for one ``(kind, target)`` of :func:`rule_targets` (a module class's
    own or inherited rule), or None; unlike :func:`lookup_rule` it records no lookup."""
    if kind == "module":
        return _module_rule(target)
    if kind in ("function", "method"):
        return (_FUNCTION_RULES if kind == "function" else _METHOD_RULES).get(target)
    raise InvalidArgumentError(f"rule_of(kind={kind!r}): kind is one of 'module', 'function', 'method'")


def has_module_rule(cls: type) -> bool:
    """True if modules of this class have a channel rule (and are traced as leaves)."""
    return _module_rule(cls) is not None


def lookup_rule(op: str, target: Any, module: nn.Module | None = None) -> Rule | None:
    """The rule for one fx node (``op``/``target`` as in ``torch.fx.Node``), or None."""
    if op == "call_module":
        owner = _rule_owner(type(module))
        return None if owner is None else _note("module", owner, _MODULE_RULES[owner])
    if op == "call_function":
        try:
            rule = _FUNCTION_RULES.get(target)
        except TypeError:  # unhashable target
            return None
        return None if rule is None else _note("function", target, rule)
    if op == "call_method":
        rule = _METHOD_RULES.get(target)
        return None if rule is None else _note("method", target, rule)
    return None


def _note(kind: str, target: Any, rule: Rule) -> Rule:
    if _looked_up is not None:
        _looked_up.add((kind, target))
    return rule


def registered_targets() -> dict[str, list[str]]:
    """Everything that has a rule, for error messages and docs."""
    return {
        "modules": sorted(c.__name__ for c in _MODULE_RULES),
        "functions": sorted(getattr(f, "__name__", repr(f)) for f in _FUNCTION_RULES),
        "methods": sorted(_METHOD_RULES),
    }
