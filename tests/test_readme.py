"""The README's two commands are what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "python -m pip install -q torch==2.13.0" in ci, "CI pins the CPU torch first"
    for command in commands:
        assert command.strip() in ci, f"CI does not run the README command: {command}"
    assert ci.index(commands[0].strip()) < ci.index(commands[1].strip())
