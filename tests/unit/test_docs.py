"""docs/settings.md is generated from the settings table and must be kept up to date."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from unyoke import config

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "settings.md"
REGENERATE = "python -m unyoke.config --markdown > docs/settings.md (or make docs)"


def test_settings_doc_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == config.markdown(), f"stale: run {REGENERATE}"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    for setting in config.SETTINGS:
        assert f"`{setting.name}`" in text or not setting.python, setting.name
        if setting.cli:
            assert config.flag_for(setting.name) in text, setting.name


def test_generated_by_the_module_command() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    done = subprocess.run(
        [sys.executable, "-m", "unyoke.config", "--markdown"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == config.markdown()
    assert done.stderr == ""
