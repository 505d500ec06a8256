"""``python -m examples.yolo [--quick]``: the network-slimming example (slimming.py)."""

from .slimming import main

main()
