"""The README's install and test commands are the ones CI runs, and they declare every import."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_command() -> str:
    """The one line of the README's 'Install and test' code block."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Install and test", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, f"README's 'Install and test' should have one bash block, has {len(blocks)}"
    lines = [ln for ln in blocks[0].splitlines() if ln.strip()]
    assert len(lines) == 1, f"README's install-and-test block should be one line, is {lines}"
    return lines[0]


def _ci_command() -> str:
    text = (ROOT / ".ci" / "run").read_text()
    found = re.findall(r"^INSTALL_AND_TEST='(.*)'$", text, flags=re.M)
    assert len(found) == 1, ".ci/run should set INSTALL_AND_TEST once"
    return found[0]


def test_ci_runs_the_readme_install_and_test_commands_verbatim() -> None:
    assert _ci_command() == _readme_command()


def test_ci_creates_its_own_virtual_environment_and_runs_pytest_from_it() -> None:
    text = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv" in text and "/venv/bin/activate" in text
    # The venv is activated before the command runs, so `pip` and `pytest` are the venv's.
    assert text.index("/venv/bin/activate") < text.index('eval "$install"') < text.index('eval "$test_cmd"')


def test_readme_install_command_names_extras_that_setup_cfg_defines() -> None:
    extras = re.search(r'\.\[([a-z0-9_,-]+)\]', _readme_command()).group(1).split(",")
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    defined = set(cfg["options.extras_require"])
    assert set(extras) <= defined, f"README installs extras {extras}; setup.cfg defines {sorted(defined)}"
    # The test extra must bring the example's image libraries (a fresh clone once failed on cv2).
    test_reqs = cfg["options.extras_require"]["test"]
    for dist in ("opencv-python-headless", "pillow", "torchvision", "hypothesis", "pytest"):
        assert dist in test_reqs, f"{dist} missing from the test extra"
