"""The benchmark keeps its loopback server on a CPU of its own and the measured process
(and a loaded run's busy process) on the others, as ``benchmarks/placement.py`` says.
Read back from the kernel (``os.sched_getaffinity``), never timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.background import busy_core  # noqa: E402
from benchmarks.placement import Placement, plan_placement  # noqa: E402
from benchmarks.server_process import ServerProcess  # noqa: E402

pinnable = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs os.sched_setaffinity and at least 2 CPUs",
)


def _affinity_of_every_thread(pid: int) -> list[set[int]]:
    return [os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")]


@pinnable
def test_the_plan_gives_the_server_the_last_cpu_and_the_client_every_other():
    cpus = sorted(os.sched_getaffinity(0))
    placement = plan_placement()
    assert placement.server == (cpus[-1],)
    assert placement.client == tuple(cpus[:-1])
    assert placement.describe() == {"client_cpus": cpus[:-1], "server_cpus": [cpus[-1]]}


def test_no_pin_leaves_everything_to_the_scheduler():
    placement = plan_placement(pin=False)
    assert placement == Placement(None, None)
    assert placement.describe() is None
    placement.pin_this_process()  # a no-op: nothing to pin
    with ServerProcess(cpus=None) as server:
        assert server.base_url.startswith("http://127.0.0.1:")


@pinnable
def test_the_server_process_and_its_serving_thread_run_on_the_cpus_given():
    cpu = sorted(os.sched_getaffinity(0))[-1]
    with ServerProcess(cpus=[cpu]) as server:
        assert server._process is not None
        threads = _affinity_of_every_thread(server._process.pid)
    assert len(threads) >= 2  # the main thread and the loop server's
    assert all(affinity == {cpu} for affinity in threads)


@pinnable
def test_the_busy_process_runs_on_the_cpus_given():
    cpu = sorted(os.sched_getaffinity(0))[0]
    with busy_core(cpus=[cpu]) as spinner:
        assert spinner.poll() is None  # still spinning, not failed on the pinning
        assert os.sched_getaffinity(spinner.pid) == {cpu}


@pinnable
def test_pinning_this_process_moves_it_and_the_threads_it_starts_after():
    code = (
        "import os, sys, threading\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from benchmarks.placement import plan_placement\n"
        "placement = plan_placement()\n"
        "placement.pin_this_process()\n"
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))\n"
        "t.start(); t.join()\n"
        "assert os.sched_getaffinity(0) == set(placement.client), os.sched_getaffinity(0)\n"
        "assert seen == [set(placement.client)], seen\n"
        "print('pinned', sorted(placement.client))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pinned ")
    assert os.sched_getaffinity(0) != set(plan_placement().client)  # this process untouched
