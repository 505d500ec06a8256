"""slimprune: structural channel pruning for PyTorch.

    >>> import slimprune
    >>> small = slimprune.prune(model, 0.5)                 # 50% of prunable channels, by |BN gamma|
    >>> plan = slimprune.plan(model, threshold=1e-3)        # network slimming after sparsity training
    >>> small = slimprune.apply(model, plan)
    >>> a = slimprune.analyze(model)                        # trace once ...
    >>> plans = [slimprune.plan(a, r) for r in (0.3, 0.5)]  # ... plan many times
"""

from ._analysis import Analysis as Analysis
from ._analysis import analyze as analyze
from ._dropin import Rewritten as Rewritten
from ._graph import ChannelGraph as ChannelGraph
from ._importance import taylor_importance as taylor_importance
from ._graph import ChannelGroup as ChannelGroup
from ._graph import ChannelInfo as ChannelInfo
from ._plan import PruningPlan as PruningPlan
from ._prune import apply as apply
from ._prune import plan as plan
from ._prune import prune as prune
from ._silence import silence as silence
from .errors import (
    ExampleInputError as ExampleInputError,
    FileFormatError as FileFormatError,
    InfeasiblePlanError as InfeasiblePlanError,
    InvalidArgumentError as InvalidArgumentError,
    PlanMismatchError as PlanMismatchError,
    SlimpruneError as SlimpruneError,
    TraceError as TraceError,
    UnsupportedOpWarning as UnsupportedOpWarning,
    RegionFallbackWarning as RegionFallbackWarning,
    ShapeSpecializationWarning as ShapeSpecializationWarning,
    RuleReplacedWarning as RuleReplacedWarning,
    ArgumentTypeError as ArgumentTypeError,
    ExampleInputTypeError as ExampleInputTypeError,
    RuleError as RuleError,
    RuleOutputTypeError as RuleOutputTypeError,
    PlanFormatError as PlanFormatError,
    ModelCopyError as ModelCopyError,
)
from .rules import register_rule as register_rule
from . import io as io  # noqa: E402  save/load of pruned models
from . import measure as measure  # noqa: E402  params, FLOPs, latency
from . import sparsity as sparsity  # noqa: E402  sparsity training (network slimming)
from .io import load as load
from .io import save as save
from .sparsity import SparsityRegularizer as SparsityRegularizer

from ._version import __version__ as __version__  # noqa: E402

__all__ = [
    "Analysis",
    "ChannelGraph",
    "ChannelGroup",
    "ChannelInfo",
    "ExampleInputError",
    "FileFormatError",
    "InfeasiblePlanError",
    "InvalidArgumentError",
    "PlanMismatchError",
    "PruningPlan",
    "Rewritten",
    "SlimpruneError",
    "TraceError",
    "UnsupportedOpWarning",
    "RegionFallbackWarning",
    "ShapeSpecializationWarning",
    "SparsityRegularizer",
    "analyze",
    "apply",
    "io",
    "load",
    "measure",
    "plan",
    "prune",
    "register_rule",
    "RuleReplacedWarning",
    "ArgumentTypeError",
    "ExampleInputTypeError",
    "RuleError",
    "RuleOutputTypeError",
    "PlanFormatError",
    "ModelCopyError",
    "save",
    "silence",
    "sparsity",
    "taylor_importance",
]
