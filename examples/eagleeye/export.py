"""ONNX export of an EagleEye detector (pruned or not) with a dynamic image size.

The graph maps a float ``images`` batch ``[N, 3, H, W]`` (RGB in [0, 1]) to the raw
``cls_logits [N, A, 1]`` and ``box_deltas [N, A, 4]``, A depending on H and W; anchors,
decoding and NMS stay outside (``anchors.generate_anchors``, ``detect.detect``), as in
PyTorch. Needs the ``onnx`` package (the ``eagleeye`` extra); the check in the tests runs
the file with onnxruntime.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "export_onnx"]

INPUT_NAME = "images"
OUTPUT_NAMES = ("cls_logits", "box_deltas")


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    sample_size: int = 384,
    opset: int = 17,
    dynamo: bool = False,
) -> Path:
    """Write ``model`` to ``path`` as ONNX with dynamic batch, height and width.

    Args:
        model: an EagleEye returning ``(cls_logits, box_deltas)``; exported in eval mode
            on CPU (its mode and device are restored afterwards).
        path: the ``.onnx`` file; written under a temporary name and renamed, so a failed
            export leaves an existing file untouched.
        sample_size: side of the square sample input traced.
        opset: ONNX opset.
        dynamo: use the ``torch.export``-based exporter (needs ``onnxscript``; about 25x
            slower to export this model on a loaded 2-core machine, 74 s against 3 s)
            instead of the TorchScript-based one.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    was_training = model.training
    device = next(model.parameters()).device
    model.eval().cpu()
    sample = torch.rand(1, 3, sample_size, sample_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            if dynamo:
                dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
                program = torch.onnx.export(
                    model, (sample,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_shapes=(dims,), opset_version=max(opset, 18), dynamo=True,
                )
                program.save(str(tmp))
            else:
                axes = {0: "batch", 1: "anchors"}
                torch.onnx.export(
                    model, (sample,), str(tmp), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                    dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, **{n: axes for n in OUTPUT_NAMES}},
                    opset_version=opset, dynamo=False,
                )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
        model.to(device).train(was_training)
    return path
