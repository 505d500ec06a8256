"""slimprune: structural channel pruning for PyTorch."""
