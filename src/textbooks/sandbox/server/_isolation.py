"""OS isolation for the fork server: namespaces, a new root filesystem, dedicated uids, rlimits.

Standard library only (imported by ``_server.py`` before it forks anything). Each mechanism degrades
gracefully where the OS refuses it and says so in a note; the server reports what it got.

* network: a network namespace per server with no usable device (only ``lo``, down);
* filesystem: a mount namespace per server whose root is a fresh tmpfs holding read-only binds of the
  operating system (``/usr``, ``/bin``, ``/lib*``, a few files of ``/etc``), the interpreter's own
  prefix, the sandbox's code (at ``/.sandbox``) and a handful of device nodes; ``/proc`` is a new instance
  that hides other users' processes (``hidepid``), ``/tmp`` and ``/dev/shm`` are fresh size-limited tmpfs
  wiped after every program, and every ``site-packages``/``dist-packages`` directory and each path the
  harness asks to hide (the package, the benchmark files) is covered by an empty read-only tmpfs. Nothing
  else of the machine exists there: not the checkout, the virtual environment, ``/home``, ``/root``,
  ``/work``, ``/var``;
* IPC: a fresh IPC namespace per program (``unshare_ipc``), so System V shared memory, semaphores and
  message queues die with the program;
* uids: programs run as ``UID_BASE + 2 * server pid`` and the judge as the next uid, so neither can
  signal, trace or write anything of the other, of the server or of the harness.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import signal
import struct
import sys

UID_BASE = 2_000_000_000
CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC = 0x00020000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD = 0x1, 0x8000, -100
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (a syscall added after the unification)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
SANDBOX_MOUNT = "/.sandbox"  # where the sandbox's own code is visible inside the new root
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/localtime",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/hosts",
    "/etc/mime.types",
)
DEVICES = ("null", "zero", "full", "random", "urandom")


def libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        lib = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    lib.syscall.restype = ctypes.c_long
    return lib


LIBC = libc()


def prctl(option: int, arg: int) -> bool:
    if LIBC is None:
        return False
    return LIBC.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unshare(flags: int) -> str | None:
    """Enter new namespaces; None on success, else why not."""
    if LIBC is None:
        return "no libc (not Linux)"
    if not is_root():
        return "needs root (CAP_SYS_ADMIN) for unshare"
    if LIBC.unshare(flags) != 0:
        return f"unshare failed: {os.strerror(ctypes.get_errno())}"
    return None


def unshare_ipc() -> bool:
    """A fresh IPC namespace for the calling process (a program's child, before it drops root)."""
    return is_root() and LIBC is not None and LIBC.unshare(CLONE_NEWIPC) == 0


def probe_uid(uid: int) -> bool:
    """Whether a child can switch to ``uid`` (root only)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def drop_to(uid: int, gid: int | None = None) -> None:
    """Become ``uid`` (and group ``gid``, default the same number) with no supplementary groups."""
    os.setgroups([])
    os.setgid(uid if gid is None else gid)
    os.setuid(uid)


def kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid``: a helper switches to it and kills -1."""
    helper = os.fork()
    if helper == 0:
        try:
            drop_to(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(helper, 0)


def user_tasks(uid: int) -> int | None:
    """How many tasks (threads) processes of ``uid`` run now, or None where /proc cannot tell."""
    if not os.path.isdir("/proc"):
        return None
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
        except (OSError, KeyError, ValueError):
            continue
    return total


# ----------------------------------------------------------------------------------------------------------
# mounts


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    if LIBC.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {target}: {os.strerror(e)}")


def make_readonly(path: str) -> None:
    """Make every mount at and below ``path`` read-only (mount attributes only, never superblocks)."""
    attr = struct.pack("QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    r = LIBC.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        path.encode(),
        ctypes.c_uint(AT_RECURSIVE),
        buf,
        ctypes.c_size_t(len(attr)),
    )
    if r == 0:
        return
    # Older kernels: remount each bind read-only; MS_BIND keeps it per mount (never the superblock).
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME}
    keep |= {"nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME}
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        target = fields[4].encode().decode("unicode_escape")
        if target != path and not target.startswith(path.rstrip("/") + "/"):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in fields[5].split(","):
            flags |= keep.get(opt, 0)
        mount(None, target, None, flags, None)


def _top_most(paths: list[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(paths)):
        if not any(p == q or p.startswith(q.rstrip("/") + "/") for q in out):
            out.append(p)
    return out


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class NewRoot:
    """Builds the server's root filesystem (see the module docstring) and moves the server into it.

    ``python`` is the interpreter programs run with, ``code_dir`` the sandbox's directory, ``hide`` paths
    to cover, ``judge_gid`` the group allowed to see every process in the new ``/proc``.
    """

    def __init__(self, python: str, code_dir: str, hide: list[str], tmpfs_mb: int, judge_gid: int | None):
        self.python, self.code_dir, self.hide, self.tmpfs_mb = python, code_dir, hide, tmpfs_mb
        self.judge_gid = judge_gid
        self.notes: list[str] = []
        self.processes_hidden = False
        self.protected: set[str] = set()

    def _sources(self) -> tuple[list[str], list[str], dict[str, str]]:
        """(directories to bind, files to bind, symlinks to recreate) at their own paths."""
        dirs, links = [], {}
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                links[d] = os.readlink(d)
            elif os.path.isdir(d):
                dirs.append(d)
        exe = os.path.realpath(self.python)
        prefixes = [os.path.dirname(exe), os.path.dirname(os.path.abspath(self.python))]
        prefixes += [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
        for p in prefixes:
            real = os.path.realpath(p)
            if os.path.isdir(real) and not _under(real, dirs):
                dirs.append(real)
        files = [f for f in ETC_FILES if os.path.isfile(f)]
        return _top_most(dirs), files, links

    def hidden_dirs(self) -> list[str]:
        """site-packages of the interpreter and the paths the harness named, where they exist."""
        import site
        import sysconfig

        found = set(site.getsitepackages([sys.base_prefix, sys.prefix]))
        for key in ("purelib", "platlib"):
            with contextlib.suppress(KeyError):
                found.add(sysconfig.get_paths()[key])
        found.update(self.hide)
        return sorted({os.path.realpath(p) for p in found if os.path.exists(p)})

    def build(self, staging: str = "/tmp") -> None:
        """Mount the new root at ``staging`` and pivot into it; raises OSError on failure."""
        dirs, files, links = self._sources()
        hide = self.hidden_dirs()
        fds: list[tuple[str, int, bool]] = []  # opened before anything is mounted over them
        for d in dirs:
            fds.append((d, os.open(d, os.O_PATH | os.O_DIRECTORY), True))
        for f in files:
            fds.append((f, os.open(f, os.O_PATH), False))
        code = os.open(self.code_dir, os.O_PATH | os.O_DIRECTORY)
        devs = [(d, os.open(f"/dev/{d}", os.O_PATH)) for d in DEVICES if os.path.exists(f"/dev/{d}")]
        # never cover what the interpreter itself needs (a harness without a venv: sys.prefix is Python's)
        hide_fds = [(h, os.path.isdir(h)) for h in hide if not any(_under(d, [h]) for d in dirs)]
        try:
            mount("tmpfs", staging, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
            r = staging.rstrip("/")
            mb = int(self.tmpfs_mb)
            for d in ("/tmp", "/dev/shm"):  # first: binds of an interpreter under /tmp go on top
                os.makedirs(r + d, mode=0o755, exist_ok=True)
                mount("tmpfs", r + d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={mb}m,mode=1777")
            for path, fd, is_dir in fds:
                target = r + path
                self._mountpoint(target, is_dir)
                mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC, None)
                make_readonly(target)
            for path, dest in links.items():
                os.symlink(dest, r + path)
            self._mountpoint(r + SANDBOX_MOUNT, True)
            mount(f"/proc/self/fd/{code}", r + SANDBOX_MOUNT, None, MS_BIND, None)
            make_readonly(r + SANDBOX_MOUNT)
            os.makedirs(r + "/dev", mode=0o755, exist_ok=True)
            for name, fd in devs:
                self._mountpoint(f"{r}/dev/{name}", False)
                mount(f"/proc/self/fd/{fd}", f"{r}/dev/{name}", None, MS_BIND, None)
            for name, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0")):
                os.symlink(dest, f"{r}/dev/{name}")
            os.symlink("/proc/self/fd/1", f"{r}/dev/stdout")
            os.symlink("/proc/self/fd/2", f"{r}/dev/stderr")
            self._mount_proc(r + "/proc")
            for h, is_dir in hide_fds:
                target = r + h
                if not os.path.exists(target):
                    continue  # not visible in the new root anyway
                if is_dir:
                    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_RDONLY, "size=4k,mode=0555")
                else:
                    mount(f"/proc/self/fd/{devs[0][1]}", target, None, MS_BIND, None)  # /dev/null over it
        except OSError:
            LIBC.umount2(staging.encode(), MNT_DETACH)  # leave the namespace as it was
            raise
        else:
            self._pivot(staging)
            mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
        finally:
            for _, fd, _ in fds:
                os.close(fd)
            os.close(code)
            for _, fd in devs:
                os.close(fd)
        # what the per-program wipe of /tmp and /dev/shm must leave alone
        self.protected = {
            d[len(base) + 1 :].split("/")[0]
            for d in dirs + files
            for base in ("/tmp", "/dev/shm")
            if d.startswith(base + "/")
        }
        self.notes.append(
            "filesystem: new root with " + ", ".join(dirs + files) + f"; {len(hide_fds)} package paths hidden"
        )

    @staticmethod
    def _mountpoint(target: str, is_dir: bool) -> None:
        if is_dir:
            os.makedirs(target, mode=0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
            with open(target, "w"):
                pass

    def _mount_proc(self, target: str) -> None:
        os.makedirs(target, mode=0o555, exist_ok=True)
        # per-mount hidepid needs Linux 5.8; before that the option would change the host's /proc too
        if _kernel_at_least(5, 8) and self.judge_gid is not None:
            try:
                opts = f"hidepid=invisible,gid={self.judge_gid}"
                mount("proc", target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts)
                self.processes_hidden = True
                return
            except OSError as e:
                self.notes.append(f"processes: a /proc hiding other users' processes failed ({e})")
        mount("/proc", target, None, MS_BIND | MS_REC, None)
        self.notes.append("processes: /proc lists every process of the machine")

    def _pivot(self, staging: str) -> None:
        os.chdir(staging)
        number = SYS_PIVOT_ROOT.get(platform.machine())
        if number is not None and LIBC.syscall(ctypes.c_long(number), b".", b".") == 0:
            if LIBC.umount2(b".", MNT_DETACH) != 0:
                raise OSError(ctypes.get_errno(), "umount of the old root failed")
        else:
            os.chroot(".")
        os.chdir("/")


def is_mountpoint(path: str) -> bool:
    try:
        return os.stat(path).st_dev != os.stat(os.path.dirname(path.rstrip("/")) or "/").st_dev
    except OSError:
        return False


def empty_dir(path: str, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Delete everything in ``path`` except mount points and the entries named in ``keep`` (which hold
    binds the new root placed there)."""
    import shutil

    try:
        entries = list(os.scandir(path))
        dev = os.stat(path).st_dev
    except OSError:
        return
    for e in entries:
        if e.name in keep:
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_dev != dev:
            continue
        if e.is_dir(follow_symlinks=False):
            shutil.rmtree(e.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(e.path)
