"""EagleEye face detector: the reference end-to-end network-slimming example."""
