"""The soak benchmark (``benchmarks/soak.py``), shortened: a few dozen steps at a fault
rate high enough, and retries few enough, that whole phases fail and are re-run, through
the ``openai`` client and ``ChatOpenAI``. Nothing may be lost or corrupted, and no
failed phase may leave partial state."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.fixture(scope="module")
def soak():
    spec = importlib.util.spec_from_file_location("afnio_soak_benchmark", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.mark.parametrize("client", ["openai", "chatopenai"])
def test_soak_under_heavy_faults_loses_and_corrupts_nothing(soak, capsys, client):
    result = soak.main(
        ["--steps", "24", "--fault-rate", "0.3", "--max-attempts", "2", "--seed", "3", "--quiet",
         "--client", client]
    )
    (run,) = result["runs"]
    assert run["client"] == client
    assert run["problems"] == []
    assert soak.clean(result)
    assert run["steps_completed"] == 24
    assert run["faults_seen"] > 20
    assert run["retries"] > 0 and run["json_reasks"] > 0
    assert sum(run["phase_failures"].values()) > 0  # whole phases failed and were re-run
    assert capsys.readouterr().out.strip().startswith('{"benchmark": "soak"')


def test_soak_without_faults_is_exact_through_both_clients(soak, capsys):
    result = soak.main(["--steps", "5", "--fault-rate", "0", "--quiet"])
    assert soak.clean(result)
    assert [run["client"] for run in result["runs"]] == ["openai", "chatopenai"]
    for run in result["runs"]:
        assert run["faults_seen"] == 0 and run["retries"] == 0
        assert run["requests"] == 5 * 6  # 2 forward, 2 backward, 2 optimizer calls a step


def test_soak_rejects_bad_arguments(soak):
    with pytest.raises(SystemExit):
        soak.main(["--steps", "0"])
