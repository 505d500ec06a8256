"""The exceptions and warnings slimprune raises.

Every error is a :class:`SlimpruneError`, so ``except slimprune.SlimpruneError`` catches
anything the library refuses to do. Messages follow one pattern: what was wrong, where,
what is allowed, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "SlimpruneError",
    "TraceError",
    "UnsupportedOpWarning",
    "ShapeSpecializationWarning",
    "InvalidArgumentError",
    "InfeasiblePlanError",
    "PlanMismatchError",
    "ExampleInputError",
    "FileFormatError",
    "ArgumentTypeError",
    "ExampleInputTypeError",
    "RuleError",
    "RuleOutputTypeError",
    "PlanFormatError",
    "ModelCopyError",
    "RuleReplacedWarning",
]


class SlimpruneError(Exception):
    """Base class of every error raised by slimprune."""


class InvalidArgumentError(SlimpruneError, ValueError):
    """An argument has a value slimprune cannot use (a ratio outside [0, 1), an unknown name...)."""


class TraceError(SlimpruneError):
    """``torch.fx`` could not trace the model; the message names the module and the operation."""


class ExampleInputError(SlimpruneError, ValueError):
    """The example inputs do not fit the model (wrong shape, wrong type), or none could be built."""


class InfeasiblePlanError(SlimpruneError):
    """The constraints cannot be met (for example ``min_channels`` above a layer's width)."""


class PlanMismatchError(SlimpruneError):
    """A plan was applied to a model other than the one it was made for."""


class FileFormatError(SlimpruneError):
    """A slimprune file is truncated, tampered with, or from a newer format version."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has a type slimprune cannot use (also a ``TypeError``)."""


class ExampleInputTypeError(ExampleInputError, TypeError):
    """The example inputs are of a kind slimprune cannot pass to forward (also a ``TypeError``)."""


class RuleError(SlimpruneError, ValueError):
    """A channel rule (built-in or registered) returned or recorded something that does not fit
    the traced graph: a bug in that rule."""


class RuleOutputTypeError(RuleError, TypeError):
    """A channel rule asked to record a value a plan cannot hold (also a ``TypeError``)."""


class PlanFormatError(FileFormatError, ValueError):
    """A plan holds a recorded graph edit this version of slimprune cannot read."""


class ModelCopyError(SlimpruneError, TypeError):
    """The pruned model is built as a copy, and an attribute of one of the model's modules cannot
    be deep-copied (a lock, an open file, a generator); the message names the module and the
    attribute (also a ``TypeError``, as ``copy.deepcopy`` raises)."""


class UnsupportedOpWarning(UserWarning):
    """Channels flow through an op slimprune has no rule for; they are kept (a barrier)."""


class RegionFallbackWarning(UserWarning):
    """The model could not be traced whole, so only its traceable regions were pruned, with the
    channels on their boundaries kept (the warning names the trace error and the regions)."""


class ShapeSpecializationWarning(UserWarning):
    """A pruned model is a graph traced by running forward, with Python decisions on shapes
    fixed to the example inputs' (only when forward both needs a rewritten graph and
    branches on shapes in Python)."""


class RuleReplacedWarning(UserWarning):
    """:func:`slimprune.register_rule` replaced the rule a target already had (pass
    ``replace=True`` to say that is intended)."""


def user_stacklevel() -> int:
    """The ``warnings.warn`` stacklevel, for the function calling this, that points at the first
    frame outside slimprune: a warning names the user's line whether it came through
    ``plan``, ``prune`` or ``apply``, however deep inside slimprune it was raised."""
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 1, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level
