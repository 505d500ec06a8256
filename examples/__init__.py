"""Runnable examples for slimprune."""
