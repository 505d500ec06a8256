"""``model.get_submodule(path)`` answered from a table made in one walk of the model.

``get_submodule`` walks the path one attribute at a time through ``nn.Module.__getattr__``;
a pass that looks up every sliced module (the rewriter, the plan check) does hundreds of
such walks. A :class:`Submodules` table is made once per pass, while the model's module
tree does not change (parameters and attributes may), and falls back to ``get_submodule``
for a path the table lacks, so a missing module raises the ``AttributeError`` it raises.
"""

from __future__ import annotations

from torch import nn

__all__ = ["MODULE_TREE", "Submodules"]

# The attributes of an nn.Module that hold its tree: its parameters, buffers and children.
MODULE_TREE = frozenset({"_parameters", "_buffers", "_modules"})


class Submodules:
    """Every submodule of ``model`` by its path (shared modules under each of their paths)."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._table = dict(model.named_modules(remove_duplicate=False))

    def __call__(self, path: str) -> nn.Module:
        """The submodule at ``path`` (``""``: the model itself). Raises AttributeError if none."""
        m = self._table.get(path)
        return m if m is not None else self._model.get_submodule(path)
