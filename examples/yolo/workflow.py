"""Two adapters a pruned model needs in Ultralytics' workflow: training it, exporting it.

Training. ``YOLO.train`` builds a fresh model from the yaml unless it was loaded from a checkpoint,
so a pruned ``DetectionModel`` set as ``yolo.model`` would be thrown away. A trainer whose
``get_model`` returns the pruned model trains it instead (in place: its weights change).

Exporting. Ultralytics' exporter replaces each C2f's ``forward`` with ``forward_split``, a
method of the original class that splits ``cv1``'s output into two halves of ``self.c``
channels. slimprune prunes the halves independently, so a pruned C2f's forward is generated
code (a :class:`slimprune.Rewritten` module) and ``forward_split`` no longer fits (export
fails with "split_with_sizes expects split_sizes to sum exactly to ..."). :func:`exportable`
points ``forward_split`` at the generated forward, which already uses ``split``.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def trainer_for(yolo: Any, model: nn.Module) -> type:
    """A subclass of ``yolo``'s task trainer that trains ``model`` instead of building one.

    Example:
        >>> y = YOLO("yolov8n.yaml"); y.model = pruned  # doctest: +SKIP
        >>> y.train(data="data.yaml", trainer=trainer_for(y, pruned), epochs=1)  # doctest: +SKIP
    """
    base = yolo.task_map[yolo.task]["trainer"]

    class PrunedTrainer(base):  # type: ignore[misc, valid-type]
        def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
            return model

    PrunedTrainer.__qualname__ = f"Pruned{base.__name__}"
    return PrunedTrainer


def exportable(model: nn.Module) -> nn.Module:
    """``model`` with each rewritten module's ``forward_split`` made its generated ``forward``.

    Example:
        >>> yolo.model = exportable(yolo.model); yolo.export(format="onnx")  # doctest: +SKIP
    """
    import slimprune

    for m in model.modules():
        if isinstance(m, slimprune.Rewritten) and hasattr(m, "forward_split"):
            m.forward_split = m.forward
    return model
