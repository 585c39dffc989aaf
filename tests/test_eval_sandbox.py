"""The sandbox against ordinary and hostile programs: real subprocesses, no mocks.

Hostile programs run together in one parallel batch (``hostile`` fixture) with tight limits; each test
then checks one of them: the harness survives, the sample is not passed, nothing outside the program's
temp dir changed, no process is left behind, and the batch's wall time stays bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from textbooks.sandbox import ExecResult, Limits, Program, Sandbox, run_programs

TIGHT = Limits(test_cpu_s=1.5, setup_cpu_s=1.5, wall_s=6.0, memory_bytes=256 << 20, output_bytes=64 << 10)
BATCH_WALL_LIMIT_S = 45.0


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(workers=2, limits=TIGHT) as sb:
        yield sb


def processes_of(uids: tuple[int, ...]) -> list[int]:
    """PIDs of live processes whose real uid is one of ``uids``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = Path(f"/proc/{name}/status").read_text()
            uid = int(status.split("\nUid:")[1].split()[0])
            if uid in uids and "\nState:\tZ" not in status:
                found.append(int(name))
    return found


# ---------------------------------------------------------------------------------------------- ordinary


def test_statuses_and_error_types(sandbox: Sandbox) -> None:
    f = "def f(x):\n    return x + 1\n"
    programs = [
        Program(f, ("assert f(1) == 2", "assert f(2) == 3")),
        Program(f, ("assert f(1) == 2", "assert f(2) == 4")),
        Program("def f(x)\n    return x\n", ("assert f(1) == 2",)),
        Program(f, ("assert g(1) == 2",)),
        Program(
            f + "import time\ndef slow():\n    while True:\n        pass\n", ("assert f(1) == 2", "slow()")
        ),
        Program("x = bytearray(8 * 1024 ** 3)\n", ()),
        Program("raise ValueError('bad value')\n", ()),
    ]
    r = sandbox.run_many(programs)
    assert [x.status for x in r] == ["passed", "failed", "error", "error", "timeout", "error", "error"]
    assert r[0].passed and r[0].error_type is None
    assert (r[1].error_type, r[1].phase) == ("AssertionError", 1)
    assert (r[2].error_type, r[2].phase) == ("SyntaxError", "setup")
    assert (r[3].error_type, r[3].phase) == ("NameError", 0)
    assert r[4].error_type in ("CpuTimeout", "WallTimeout") and r[4].phase in (1, None)
    assert r[5].error_type == "MemoryError"
    assert (r[6].error_type, r[6].message) == ("ValueError", "bad value")
    assert r[1].human_eval_result() == "failed: AssertionError"


def test_results_come_back_in_order(sandbox: Sandbox) -> None:
    programs = [Program(f"print({i})\n", ()) for i in range(40)]
    assert [r.stdout for r in sandbox.run_many(programs)] == [f"{i}\n" for i in range(40)]


def test_run_programs_starts_and_closes_its_own_sandbox() -> None:
    r = run_programs([Program("x = 1\n", ("assert x == 1",)), Program("", ("assert False",))], workers=2)
    assert [x.status for x in r] == ["passed", "failed"]


def test_environment_is_scrubbed_and_the_harness_is_not_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("TEXTBOOKS_TEST_SECRET", "s3cret")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    check = (
        "import os, sys\n"
        "assert 'TEXTBOOKS_TEST_SECRET' not in os.environ and 'HTTPS_PROXY' not in os.environ\n"
        "assert 'PYTHONPATH' not in os.environ and '/nonexistent' not in sys.path\n"
        "assert os.environ['HOME'] == os.getcwd() == os.environ['TMPDIR']\n"
        "assert os.environ['PYTHONHASHSEED'] == '0'\n"
        "assert not [m for m in sys.modules if m.startswith('textbooks')], 'harness imported'\n"
        "assert sys.stdin.read() == ''\n"
        "assert __name__ == '__main__'\n"
    )
    for fresh in (False, True):
        with Sandbox(workers=1, fresh=fresh) as sb:
            r = sb.run(Program(check, ("assert True",)))
            assert r.passed, (fresh, r)
            assert sb.isolation.fresh_interpreter is fresh


def test_isolation_is_reported(sandbox: Sandbox) -> None:
    iso = sandbox.isolation.as_dict()
    assert set(iso) >= {"network", "filesystem", "dedicated_uid", "fresh_interpreter", "python", "notes"}
    if os.geteuid() == 0:  # as root every mechanism is available on Linux
        assert iso["network"] and iso["filesystem"] and iso["dedicated_uid"], iso["notes"]
        assert len(sandbox.program_uids) == sandbox.workers


def test_without_isolation_programs_still_run_and_time_out() -> None:
    with Sandbox(workers=1, isolate=False, limits=Limits(wall_s=1.0)) as sb:
        assert not sb.isolation.network and not sb.isolation.filesystem and not sb.isolation.dedicated_uid
        ok = sb.run(
            Program("import os\nopen('x.txt', 'w').write('hi')\n", ("assert open('x.txt').read() == 'hi'",))
        )
        assert ok.passed, ok
        hung = sb.run(Program("import time\ntime.sleep(30)\n"))
        assert (hung.status, hung.error_type) == ("timeout", "WallTimeout") and hung.wall_s < 3


@pytest.mark.slow
def test_wall_limit_of_programs_with_many_tests_is_capped(sandbox: Sandbox) -> None:
    limits = Limits(test_cpu_s=0.5, setup_cpu_s=0.5, wall_slack_s=0.5, max_wall_s=2.0)
    assert limits.wall_for(1) == 1.5 and limits.wall_for(2000) == 2.0  # not 1,001 s
    tests = tuple(["pass"] * 1999 + ["import time\ntime.sleep(30)"])  # HumanEval+-sized, then a sleeper
    r = sandbox.run(Program("x = 1\n", tests), limits=limits)
    assert (r.status, r.error_type) == ("timeout", "WallTimeout") and r.wall_s < 4.0


# ---------------------------------------------------------------------------------------------- hostile


@dataclass
class Hostile:
    results: dict[str, ExecResult]
    wall_s: float
    victim: Path  # root-owned 0700 dir with a sentinel (like a test's tmp_path)
    open_victim: Path  # world-writable dir with a world-writable sentinel: only a read-only mount protects it
    connections: list[bytes]
    repo_root: Path
    leftovers: list[int]


class _Listener:
    """A TCP server on 127.0.0.1 that records whatever connects."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    self.received.append(conn.recv(100) or b"<connected>")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def hostile_programs(victim: Path, open_victim: Path, port: int, repo_root: Path) -> dict[str, Program]:
    t = ("assert True",)
    dirs = [str(victim), str(open_victim), str(repo_root)]
    touch = f"""import os
for d in {dirs!r}:
    try:
        open(os.path.join(d, 'escaped.txt'), 'w').write('x')
    except OSError:
        pass
    try:
        os.remove(os.path.join(d, 'sentinel.txt'))
    except OSError:
        pass
try:
    os.chmod({str(victim)!r}, 0o777)
except OSError:
    pass
"""
    sentinel_gone = f"assert not os.path.exists(os.path.join({str(victim)!r}, 'sentinel.txt'))"
    return {
        "fork_bomb": Program(
            "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", t
        ),
        # RLIMIT_AS counts address space, touched or not: untouched blocks reach it without the page faults
        # that cost a slow VM more than the 1.5 CPU seconds allowed
        "memory_bomb": Program("blocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n", t),
        "infinite_loop": Program("def f():\n    while True:\n        pass\n", ("assert f() == 1",)),
        "swallow_timeout": Program(
            "while True:\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n",
            t,
        ),
        "files": Program(touch, (sentinel_gone,)),
        "socket": Program(
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\ns.sendall(b'escaped')\n",
            t,
        ),
        "os_exit": Program("import os\nos._exit(0)\n", ("assert False",)),
        "sys_exit": Program("import sys\nsys.exit(0)\n", ("assert False",)),
        "exit_in_test": Program("def f():\n    return 1\n", ("import os\nos._exit(0)", "assert f() == 2")),
        "stdout_flood": Program(
            "import sys\nfor _ in range(64):\n    sys.stdout.write('x' * (1 << 20))\n", t
        ),
        "stdout_forever": Program("while True:\n    print('y' * 10000)\n", t),
        "ignore_sigterm": Program(
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.05)\n",
            t,
        ),
        "orphan": Program(
            "import os, signal, time\nif os.fork() == 0:\n    os.setsid()\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    time.sleep(600)\n",
            t,
        ),
        "forge_marker": Program(
            "import os\nfor fd in range(1, 1024):\n    try:\n        os.write(fd, b'PASS 0123456789abcdef\\n')\n"
            "    except OSError:\n        pass\nos._exit(0)\n",
            ("assert False",),
        ),
        "kill_harness": Program(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n", t),
    }


@pytest.fixture(scope="module")
def hostile(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Iterator[Hostile]:
    victim = tmp_path_factory.mktemp("victim")
    (victim / "sentinel.txt").write_text("keep")
    # outside /tmp, which the sandbox replaces by its own tmpfs
    open_victim = Path(
        tempfile.mkdtemp(
            prefix="textbooks-sandbox-test-", dir="/var/tmp" if Path("/var/tmp").is_dir() else None
        )
    )
    open_victim.chmod(0o777)
    (open_victim / "sentinel.txt").write_text("keep")
    (open_victim / "sentinel.txt").chmod(0o666)
    listener = _Listener()
    progs = hostile_programs(victim, open_victim, listener.port, repo_root)
    if not sandbox.isolation.dedicated_uid:  # under the harness's own uid this one would succeed
        del progs["kill_harness"]
    if not (sandbox.isolation.dedicated_uid or sandbox.isolation.filesystem):  # nor would this one
        del progs["files"]
    try:
        t0 = time.perf_counter()
        out = sandbox.run_many(list(progs.values()))
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        leftovers = processes_of(sandbox.program_uids) if sandbox.program_uids else []
        yield Hostile(
            dict(zip(progs, out)), wall, victim, open_victim, listener.received, repo_root, leftovers
        )
    finally:
        listener.close()
        shutil.rmtree(open_victim, ignore_errors=True)
        (repo_root / "escaped.txt").unlink(missing_ok=True)


@pytest.mark.slow
def test_hostile_batch_is_bounded_and_leaves_no_process(hostile: Hostile) -> None:
    assert hostile.wall_s < BATCH_WALL_LIMIT_S
    for name, r in hostile.results.items():
        assert not r.passed or name in ("stdout_flood", "orphan", "files"), (name, r)
        assert r.wall_s <= TIGHT.wall_for(1) + 2.0, (name, r.wall_s)
    assert hostile.leftovers == []


@pytest.mark.slow
def test_fork_bomb(hostile: Hostile) -> None:
    r = hostile.results["fork_bomb"]
    assert r.status in ("timeout", "error"), r
    assert hostile.leftovers == []


@pytest.mark.slow
def test_memory_bomb(hostile: Hostile) -> None:
    r = hostile.results["memory_bomb"]
    assert (r.status, r.error_type) == ("error", "MemoryError"), r


@pytest.mark.slow
def test_infinite_loop(hostile: Hostile) -> None:
    r = hostile.results["infinite_loop"]
    assert r.status == "timeout" and r.error_type in ("CpuTimeout", "WallTimeout"), r
    # catching the in-program budget exception only defers the kill: RLIMIT_CPU or the wall clock
    r = hostile.results["swallow_timeout"]
    assert r.status == "timeout" and r.error_type in ("CpuLimit", "WallTimeout"), r


@pytest.mark.slow
def test_files_outside_the_temp_dir_are_untouched(hostile: Hostile, sandbox: Sandbox) -> None:
    if "files" not in hostile.results:
        pytest.skip("no filesystem isolation here (needs root for a mount namespace or a dedicated uid)")
    r = hostile.results["files"]
    assert (hostile.victim / "sentinel.txt").read_text() == "keep"
    assert not (hostile.victim / "escaped.txt").exists()
    assert oct(hostile.victim.stat().st_mode & 0o777) == "0o700"
    assert not (hostile.repo_root / "escaped.txt").exists()
    assert r.passed  # its test checks the victim dir from inside: the sentinel is not even visible there
    if sandbox.isolation.filesystem:  # a world-writable dir: only the read-only mount stands in the way
        assert (hostile.open_victim / "sentinel.txt").read_text() == "keep"
        assert not (hostile.open_victim / "escaped.txt").exists()


@pytest.mark.slow
def test_no_network(hostile: Hostile, sandbox: Sandbox) -> None:
    if not sandbox.isolation.network:
        pytest.skip("network isolation unavailable here (needs root/CAP_SYS_ADMIN for a network namespace)")
    r = hostile.results["socket"]
    assert (r.status, r.error_type) == ("error", "OSError"), r
    assert hostile.connections == []


@pytest.mark.slow
@pytest.mark.parametrize(("name", "error_type"), [("os_exit", "EarlyExit"), ("sys_exit", "SystemExit")])
def test_exiting_before_the_tests_is_not_a_pass(hostile: Hostile, name: str, error_type: str) -> None:
    r = hostile.results[name]
    assert (r.status, r.error_type) == ("error", error_type), r
    assert r.exit_code == 0  # a clean exit status is not enough


@pytest.mark.slow
def test_exiting_inside_a_test_or_forging_the_marker_is_not_a_pass(hostile: Hostile) -> None:
    assert hostile.results["exit_in_test"].status == "error"
    r = hostile.results["forge_marker"]
    assert (r.status, r.error_type) == ("error", "EarlyExit"), r
    assert "PASS 0123456789abcdef" in r.stdout


@pytest.mark.slow
def test_megabytes_of_output_are_capped(hostile: Hostile) -> None:
    flood = hostile.results["stdout_flood"]
    assert flood.passed, flood
    assert flood.stdout_bytes == 64 << 20 and len(flood.stdout) == TIGHT.output_bytes
    forever = hostile.results["stdout_forever"]
    assert forever.status == "timeout" and len(forever.stdout) <= TIGHT.output_bytes
    assert forever.stdout_bytes > TIGHT.output_bytes


@pytest.mark.slow
def test_ignoring_sigterm_does_not_help(hostile: Hostile) -> None:
    r = hostile.results["ignore_sigterm"]
    assert (r.status, r.error_type, r.signal) == ("timeout", "WallTimeout", "SIGKILL"), r


@pytest.mark.slow
def test_background_processes_are_killed(hostile: Hostile) -> None:
    r = hostile.results["orphan"]
    assert r.passed and r.orphans_killed >= 1, r
    assert hostile.leftovers == []


@pytest.mark.slow
def test_programs_cannot_signal_the_harness(hostile: Hostile) -> None:
    if "kill_harness" not in hostile.results:
        pytest.skip("programs run under the harness's uid here (no root for a dedicated uid)")
    r = hostile.results["kill_harness"]
    assert (r.status, r.error_type) == ("error", "PermissionError"), r
