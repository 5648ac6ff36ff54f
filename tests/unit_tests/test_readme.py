"""The README's promises: CI runs its test command, and its main example runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def setup_commands() -> list[str]:
    section = README.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_starts_with_the_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "afnio-langchain demo" in main_job and "pip install" in main_job
    assert "pytest" in tests and "pip install" in tests


def test_ci_runs_exactly_the_readme_test_command():
    ci_script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert setup_commands()[1] in ci_script.splitlines()


def test_readme_engine_example_runs_as_written(capsys):
    example = re.findall(r"```python\n(.*?)```", README, re.S)[0]
    from afnio_langchain import set_backward_model

    try:
        exec(compile(example, "README.md", "exec"), {})
    finally:
        set_backward_model(None)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "['Ciao', 'Hola']",
        "The system instruction should enforce the use of capital letters only.",
    ]


def test_readme_performance_section_is_the_headline_of_docs_performance():
    """The README's figures are the ones docs/performance.md gives, not an older copy:
    its Performance section is the doc's headline part, word for word (the doc's
    round-by-round sections stay in the doc)."""
    doc = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    headline = doc.split("### What the measurements changed", 1)[0]
    headline = "\n".join(
        line for line in headline.splitlines() if not line.startswith("<!-- For the README")
    )
    section = "## Performance" + README.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    assert " ".join(section.split()) == " ".join(headline.split())
    assert "### Round" not in section and "(docs/performance.md)" in section
