"""Pruning Ultralytics YOLO with slimprune: SynthFaces in YOLO format (``data.py``)."""
