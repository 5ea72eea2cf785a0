"""The README documents every setting and both commands."""

from __future__ import annotations

from pathlib import Path

from service.settings import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme():
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in README]
    assert missing == []


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in ci
