"""Shared pytest setup.

Hypothesis draws the same examples on every run (derandomize), so a CI failure is
reproducible by rerunning it, and a green suite stays green unless the code changes.
Set HYPOTHESIS_PROFILE=explore to draw fresh examples locally.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
