#!/usr/bin/env python3
"""Pelagos beside containerd-shim-runc-v2: one private containerd, both runtimes, one table.

Every metric alternates the runtime round by round (runc first in even rounds, pelagos first in
odd ones), so whatever else the machine does falls on both. Measurements go through `ctr`, as a
user would drive containerd. Prints a table (metric / runc / pelagos / ratio / target) and writes
JSON. A failed round is recorded with the command, its stderr and, for a hang, where every
thread of the shims waits; after MAX_FAILURES a runtime is dropped from that metric and the bench
goes on.

How the shim side is seen:
- memory: the shim daemons of this containerd and their descendants that are not container
  processes (a process in a cgroup below /<namespace> is the container's): Rss and Pss from
  /proc/<pid>/smaps_rollup, plus memfds they hold open without mapping them (shmem that no
  smaps shows, e.g. a sealed copy of the shim binary);
- CPU: containerd runs under a small reaper process that is a child subreaper, so each shim
  daemon, orphaned by its `start` process, is re-parented to the reaper, which reaps it with
  wait4() and reports its rusage: the daemon plus everything it reaped (runc, runc init, the
  setup helper, the container). The `start` process is reaped by containerd and shows up in
  containerd's cutime/cstime;
- the part containerd sees: `ctr` itself costs ~15-30 ms of CPU per call, the same for both
  runtimes, so run-to-exit and exec are also timed between the events containerd publishes
  (/containers/create or /tasks/exec-added, then /tasks/exit) as one `ctr events` receives them.

`--profile DIR` replaces the table by a profile: perf record -a around N lifecycles and N execs
per runtime, CPU per operation by process group (only processes descended from this bench count,
from perf's fork records), the pelagos shim's symbols, and strace -c of a pelagos daemon.

Standard library only (Python 3.11), run as root. scripts/bench.sh builds the release shim and
calls this script; `bench.py --help` lists the knobs.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tarfile
import termios
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

RUNC = "io.containerd.runc.v2"
PELAGOS = "io.containerd.pelagos.v2"
RUNTIMES = (RUNC, PELAGOS)
SHORT = {RUNC: "runc", PELAGOS: "pelagos"}
SHIM_BINARY = {RUNC: "containerd-shim-runc-v2", PELAGOS: "containerd-shim-pelagos-v2"}
IMAGE_REF = "localhost/pelagos-bench/busybox:latest"
BUSYBOX = "/bin/busybox"
APPLETS = ("sh", "true", "sleep", "dd", "cat", "head", "yes", "echo")
GROUP_ANNOTATION = "io.containerd.runc.v2.group"
SHIM_SOCKET_DIR = Path("/run/containerd/s")
PELAGOS_STATE_ROOT = Path("/run/pelagos")
# A ctr call that takes this long is hung: run, exec and delete take well under a second.
CTR_TIMEOUT = 30.0
# A runtime that failed a metric this many times is not measured further on it.
MAX_FAILURES = 3
SLEEP_FOREVER = ("sleep", "1000000")
MIB = 1 << 20

# Targets from issue 5: pelagos/runc ratio of medians, and which way is better.
TARGETS = {
    "run_to_exit": ("<=", 0.5),
    "exec": ("<=", 0.3),
    "pss_single": ("<=", 0.2),
    "stdout_fifo": (">=", 2.0),
    "exit_event": ("<=", 0.5),
    "density_wall": ("<=", 0.6),
}

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


class Failure(Exception):
    """A step of one runtime failed; carries what a person needs to reproduce it."""

    def __init__(self, what: str, cmd: list[str] | None = None, rc: int | None = None,
                 stderr: str = "", detail: str = ""):
        self.what = what
        self.cmd = cmd
        self.rc = rc
        self.stderr = stderr.strip()
        self.detail = detail.strip()
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [self.what]
        if self.cmd:
            parts.append("command: " + " ".join(self.cmd))
        if self.rc is not None:
            parts.append(f"exit status: {self.rc}")
        if self.stderr:
            parts.append("stderr: " + self.stderr[-2000:])
        if self.detail:
            parts.append(self.detail)
        return "\n  ".join(parts)


# ----------------------------------------------------------------------------------------------
# The image: busybox-static in one uncompressed layer, built in memory.


def _tar_add(tar: tarfile.TarFile, name: str, kind: bytes, mode: int,
             data: bytes = b"", link: str = "") -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.linkname = link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _tar_bytes(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            _tar_add(tar, *e)
    return buf.getvalue()


def oci_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le"}.get(m, m)


def build_image(out: Path) -> None:
    """Writes an OCI image layout archive of busybox to `out`."""
    if not os.path.exists(BUSYBOX):
        raise SystemExit(f"{BUSYBOX} is missing: install busybox-static")
    d, r, s = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE
    entries = [(n, d, 0o755) for n in ("bin", "etc", "dev", "proc", "sys", "run", "var")]
    entries += [("tmp", d, 0o1777), ("root", d, 0o700)]
    entries.append(("bin/busybox", r, 0o755, Path(BUSYBOX).read_bytes()))
    entries += [(f"bin/{a}", s, 0o777, b"", "busybox") for a in APPLETS]
    entries.append(("etc/passwd", r, 0o644, b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(("etc/group", r, 0o644, b"root:x:0:\n"))
    layer = _tar_bytes(entries)

    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return digest, len(data)

    layer_digest, layer_size = blob(layer)
    config = {
        "architecture": oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_size = blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}],
    }
    manifest_digest, manifest_size = blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {"io.containerd.image.name": IMAGE_REF,
                            "org.opencontainers.image.ref.name": "latest"},
        }],
    }
    files = [("blobs", d, 0o755), ("blobs/sha256", d, 0o755)]
    files += [(f"blobs/sha256/{k.split(':')[1]}", r, 0o644, v) for k, v in blobs.items()]
    files.append(("oci-layout", r, 0o644, b'{"imageLayoutVersion":"1.0.0"}'))
    files.append(("index.json", r, 0o644, json.dumps(index).encode()))
    out.write_bytes(_tar_bytes(files))


# ----------------------------------------------------------------------------------------------
# /proc


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the comm, so index 0 is field 3 (state)."""
    text = read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    return text[text.rfind(")") + 2:].split()


def cmdline(pid: int) -> list[str]:
    return [a for a in read_text(f"/proc/{pid}/cmdline").split("\0") if a]


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def smaps_rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in KiB."""
    rss = pss = 0
    for line in read_text(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def held_memfds(pid: int) -> dict[tuple[int, int], int]:
    """memfds that `pid` holds open but has not mapped, (dev, ino) -> bytes.

    Their pages are shmem that no smaps_rollup shows, yet they stay resident as long as the fd
    is open (e.g. a sealed copy of a binary kept for later execs).
    """
    mapped = set()
    for line in read_text(f"/proc/{pid}/maps").splitlines():
        f = line.split()
        if len(f) >= 5 and f[4] != "0":
            mapped.add(int(f[4]))
    out = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            if not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                continue
            st = os.stat(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if st.st_ino not in mapped:
            out[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return out


def in_namespace_cgroup(pid: int, namespace: str) -> bool:
    prefix = f"/{namespace}/"
    for line in read_text(f"/proc/{pid}/cgroup").splitlines():
        path = line.split(":", 2)[-1]
        if path.startswith(prefix) or path == prefix[:-1]:
            return True
    return False


def cgroup_mounts() -> list[Path]:
    out = []
    for line in read_text("/proc/self/mountinfo").splitlines():
        pre, _, post = line.partition(" - ")
        fstype = post.split(" ", 1)[0]
        if fstype in ("cgroup", "cgroup2"):
            out.append(Path(pre.split()[4]))
    return out


def mount_points() -> list[str]:
    out = []
    for line in read_text("/proc/self/mountinfo").splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        out.append(mp)
    return out


# ----------------------------------------------------------------------------------------------
# The reaper: parent of containerd, child subreaper, reports every process it reaps.


def reaper_main(argv: list[str]) -> int:
    """`bench.py _reaper -- containerd ...`: runs containerd and reaps orphans with wait4.

    Reports `start <pid>` then `reap <pid> <status> <user_s> <sys_s>` lines on stdout. Exits
    when it has no children left. SIGTERM (also sent when the bench dies) goes on to containerd.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig, pr_set_child_subreaper = 1, 36
    libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    cmd = argv[argv.index("--") + 1:]
    devnull = os.open(os.devnull, os.O_RDWR)
    child = os.posix_spawn(cmd[0], cmd, os.environ,
                           file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                         (os.POSIX_SPAWN_DUP2, devnull, 1)],
                           setpgroup=0)
    out = os.fdopen(1, "w", buffering=1)
    out.write(f"start {child}\n")

    def forward(_sig, _frame):
        try:
            os.kill(child, signal.SIGTERM)
        except ProcessLookupError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status, ru = os.wait4(-1, 0)
        except ChildProcessError:
            return 0
        except InterruptedError:
            continue
        out.write(f"reap {pid} {status} {ru.ru_utime:.6f} {ru.ru_stime:.6f}\n")


@dataclass
class Reap:
    pid: int
    status: int
    cpu: float  # seconds, user + system, of the process and what it reaped


class Reaper:
    """The bench side of the reaper: collects its reports in a list."""

    def __init__(self, cmd: list[str], stderr_fd: int, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "_reaper", "--", *cmd],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_fd,
            env=env, process_group=0)
        line = self.proc.stdout.readline().decode()
        if not line.startswith("start "):
            raise SystemExit(f"reaper did not start containerd: {line!r}")
        self.containerd_pid = int(line.split()[1])
        self.reaps: list[Reap] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            f = raw.decode().split()
            if len(f) == 5 and f[0] == "reap":
                r = Reap(int(f[1]), int(f[2]), float(f[3]) + float(f[4]))
                with self.cond:
                    self.reaps.append(r)
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.reaps)

    def wait_new(self, mark: int, timeout: float) -> list[Reap]:
        """Waits until at least one process was reaped after `mark`; returns those reaps."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.reaps) <= mark:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return self.reaps[mark:]

    def wait_pids(self, pids: set[int], timeout: float) -> dict[int, Reap]:
        """Waits until every pid of `pids` was reaped; returns those found."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = {r.pid: r for r in self.reaps if r.pid in pids}
                left = deadline - time.monotonic()
                if len(found) == len(pids) or left <= 0:
                    return found
                self.cond.wait(left)

    def reaped(self, pid: int) -> bool:
        with self.cond:
            return any(r.pid == pid for r in self.reaps)

    def wait_exit(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# ----------------------------------------------------------------------------------------------
# Events: one `ctr events` subscriber, lines time-stamped as they arrive.


@dataclass
class Event:
    t: int  # perf_counter_ns when the line was read
    topic: str
    body: dict


EVENT_RE = re.compile(r"\s(/[a-z-]+/[a-z-]+)\s*(\{.*\})?\s*$")


class Events:
    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.events: list[Event] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            t = time.perf_counter_ns()
            m = EVENT_RE.search(raw.decode(errors="replace"))
            if not m:
                continue
            try:
                body = json.loads(m.group(2)) if m.group(2) else {}
            except json.JSONDecodeError:
                body = {}
            with self.cond:
                self.events.append(Event(t, m.group(1), body))
                self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(self, mark: int, topic: str, timeout: float, **fields) -> Event | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            i = mark
            while True:
                while i < len(self.events):
                    e = self.events[i]
                    i += 1
                    if e.topic == topic and all(e.body.get(k) == v for k, v in fields.items()):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()


# ----------------------------------------------------------------------------------------------
# containerd


class Deadline:
    """Waits for `fd` to be readable until a deadline shared by every wait."""

    def __init__(self, seconds: float, fd: int):
        self.end = time.monotonic() + seconds
        self.poll = select.poll()
        self.poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def wait(self) -> bool:
        left = self.end - time.monotonic()
        return left > 0 and bool(self.poll.poll(left * 1000))


@dataclass
class Ran:
    rc: int
    out: bytes
    err: str
    seconds: float


class Containerd:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        tag = str(os.getpid())
        self.base = Path("/run/pelagos-bench") / tag
        self.root = Path("/var/lib/pelagos-bench") / tag
        self.namespace = f"pelagos-bench-{tag}"
        self.address = str(self.base / "containerd.sock")
        self.bin_dir = Path(args.containerd_dir)
        ctr = self.bin_dir / "ctr"
        self.ctr_bin = str(ctr) if ctr.exists() else (shutil.which("ctr") or "ctr")
        version = subprocess.run([str(self.bin_dir / "containerd"), "--version"],
                                 capture_output=True, text=True).stdout
        m = re.search(r" v?(\d+)\.(\d+)", version)
        self.major = int(m.group(1)) if m else 1
        self.fifo_dir = self.base / "fifo"
        self.log_path = self.base / "containerd.log"
        self.groups: set[str] = set()
        self.reaper: Reaper | None = None
        self.events: Events | None = None
        self.booted = threading.Event()

    # -- lifecycle of the daemon ----------------------------------------------------------------

    def start(self) -> None:
        for d in (self.base, self.root):
            shutil.rmtree(d, ignore_errors=True)
        for d in (self.base / "bin", self.base / "state", self.fifo_dir, self.root):
            d.mkdir(parents=True)
        os.symlink(self.args.shim, self.base / "bin" / SHIM_BINARY[PELAGOS])
        (self.base / "config.toml").write_text(self.config())
        env = {
            "PATH": f"{self.base / 'bin'}:{self.bin_dir}:/usr/local/sbin:/usr/local/bin:"
                    "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        for k, v in os.environ.items():
            if k.startswith("RUST_") or k.startswith("PELAGOS_"):
                env[k] = v
        rd, wr = os.pipe()
        cmd = [str(self.bin_dir / "containerd"), "--config", str(self.base / "config.toml"),
               "--log-level", "debug" if self.args.debug else "info"]
        self.reaper = Reaper(cmd, wr, env)
        os.close(wr)
        threading.Thread(target=self._log_reader, args=(rd,), daemon=True).start()
        if not self.booted.wait(60):
            raise SystemExit(f"containerd did not boot in 60s:\n{self.log_tail(30)}")
        log(f"containerd {self.reaper.containerd_pid} up at {self.address}")
        archive = self.base / "busybox-oci.tar"
        build_image(archive)
        local = ["--local"] if self.major >= 2 else []
        self.ctr_ok(["images", "import", *local, "--platform", f"linux/{oci_arch()}",
                     str(archive)])
        archive.unlink()
        self.events = Events(self.ctr_cmd(["events"]))
        self._sync_events()

    def config(self) -> str:
        if self.major >= 2:
            return f"""version = 3
root = "{self.root}"
state = "{self.base / 'state'}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.podsandbox.controller.v1.podsandbox",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "{self.root}/opt"
"""
        return f"""version = 2
root = "{self.root}"
state = "{self.base / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri"]

[grpc]
  address = "{self.address}"

[ttrpc]
  address = "{self.address}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.root}/opt"
"""

    def _log_reader(self, fd: int) -> None:
        with open(fd, "rb") as src, open(self.log_path, "ab") as dst:
            for line in src:
                dst.write(line)
                dst.flush()
                if b"successfully booted" in line:
                    self.booted.set()

    def _sync_events(self) -> None:
        """`ctr events` has no readiness signal: label the namespace until the update shows."""
        for attempt in range(100):
            mark = self.events.mark()
            self.ctr_ok(["namespaces", "label", self.namespace, f"bench.sync={attempt}"])
            if self.events.wait(mark, "/namespaces/update", 0.3):
                return
        raise SystemExit("ctr events never showed a /namespaces/update event")

    def log_tail(self, n: int, grep: str | None = None) -> str:
        lines = read_text(str(self.log_path)).splitlines()
        if grep:
            lines = [ln for ln in lines if grep in ln]
        return "\n".join(lines[-n:])

    # -- ctr ------------------------------------------------------------------------------------

    def ctr_cmd(self, args: list[str]) -> list[str]:
        return [self.ctr_bin, "--address", self.address,
                "--namespace", self.namespace, *args]

    def ctr(self, args: list[str], timeout: float = CTR_TIMEOUT) -> Ran:
        cmd = self.ctr_cmd(args)
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stuck = self.snapshot()
            p.kill()
            out, err = p.communicate()
            raise Failure(f"ctr timed out after {timeout:.0f}s", cmd, None,
                          err.decode(errors="replace"), stuck)
        return Ran(p.returncode, out, err.decode(errors="replace"), time.perf_counter() - t)

    def ctr_ok(self, args: list[str], timeout: float = CTR_TIMEOUT, what: str = "") -> Ran:
        r = self.ctr(args, timeout)
        if r.rc != 0:
            raise Failure(what or f"ctr {args[0]} failed", self.ctr_cmd(args), r.rc, r.err,
                          self.shim_log_tail())
        return r

    def shim_log_tail(self) -> str:
        tail = self.log_tail(8, "pelagos")
        return f"containerd log (pelagos lines):\n{tail}" if tail else ""

    def run_args(self, runtime: str, cid: str, mode: str, cmd: tuple[str, ...],
                 group: str | None = None, tty: bool = False) -> list[str]:
        a = ["run", mode, "--runtime", runtime, "--fifo-dir", str(self.fifo_dir)]
        if tty:
            a.append("-t")
        # A shim's socket is named after its group, the container id when there is none.
        self.groups.add(group or cid)
        if group:
            a += ["--annotation", f"{GROUP_ANNOTATION}={group}"]
        return [*a, IMAGE_REF, cid, *cmd]

    def run_detached(self, runtime: str, cid: str, group: str | None = None) -> float:
        r = self.ctr_ok(self.run_args(runtime, cid, "-d", SLEEP_FOREVER, group),
                        what="ctr run -d failed")
        return r.seconds

    def remove(self, cid: str) -> float:
        """Kills and deletes the task, deletes the container; returns the seconds it took."""
        t = time.perf_counter()
        self.ctr_ok(["task", "rm", "-f", cid], what="ctr task rm -f failed")
        self.ctr_ok(["containers", "rm", cid], what="ctr containers rm failed")
        return time.perf_counter() - t

    def cleanup(self, cids) -> None:
        """Best effort after a failure: whatever is left of these containers goes."""
        for cid in cids:
            for args in (["task", "rm", "-f", cid], ["containers", "rm", cid]):
                try:
                    self.ctr(args)
                except Failure as f:
                    log(f"cleanup: {f.describe()}")

    # -- the shim side of the process tree --------------------------------------------------------

    def runtime_of(self, pid: int) -> str | None:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return None
        if exe == self.args.shim:
            return PELAGOS
        if os.path.basename(exe) == SHIM_BINARY[RUNC]:
            return RUNC
        return None

    def orphans(self) -> dict[int, list[str]]:
        """Everything re-parented to the reaper but containerd: shim daemons, or leaks."""
        rpid = self.reaper.proc.pid
        return {pid: cmdline(pid) for pid in all_pids()
                if pid != self.reaper.containerd_pid and (proc_stat(pid) or [0, 0])[1] == str(rpid)}

    def shims(self, runtime: str | None = None) -> dict[int, list[str]]:
        """Shim daemons of this containerd (children of the reaper), by pid."""
        return {pid: argv for pid, argv in self.orphans().items()
                if self.runtime_of(pid) is not None
                and (runtime is None or self.runtime_of(pid) == runtime)}

    def shim_of(self, cid: str, runtime: str) -> int | None:
        for pid, argv in self.shims(runtime).items():
            if any(argv[i] == "-id" and argv[i + 1] == cid for i in range(len(argv) - 1)):
                return pid
        return None

    def shim_side(self, runtime: str) -> tuple[list[int], list[int]]:
        """(shim-side pids, container pids) below the shim daemons of `runtime`."""
        children: dict[int, list[int]] = {}
        for pid in all_pids():
            st = proc_stat(pid)
            if st:
                children.setdefault(int(st[1]), []).append(pid)
        shim_side, container = [], []
        todo = list(self.shims(runtime))
        while todo:
            pid = todo.pop()
            if in_namespace_cgroup(pid, self.namespace):
                container.append(pid)
            else:
                shim_side.append(pid)
            todo.extend(children.get(pid, []))
        return shim_side, container

    def snapshot(self, limit: int = 60) -> str:
        """Where each thread of the shims and their containers waits: for hangs."""
        lines = []
        for rt in RUNTIMES:
            side, container = self.shim_side(rt)
            for pid in sorted(side + container):
                argv = " ".join(cmdline(pid))[:90]
                try:
                    tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
                except OSError:
                    continue
                lines.append(f"{SHORT[rt]} pid {pid}: {argv}")
                for tid in tids:
                    task = f"/proc/{pid}/task/{tid}"
                    st = proc_stat(int(tid)) or ["?"]
                    comm = read_text(f"{task}/comm").strip()
                    stack = [f.split()[-1].split("+")[0]
                             for f in read_text(f"{task}/stack").splitlines()[:5] if f.strip()]
                    lines.append(f"  tid {tid} {comm} {st[0]} wchan={read_text(f'{task}/wchan')}"
                                 f" stack={'<'.join(stack)}")
        if len(lines) > limit:
            lines = lines[:limit] + [f"... {len(lines) - limit} more lines"]
        return "threads of the shims and containers at the timeout:\n" + "\n".join(lines)

    def containerd_child_cpu(self) -> float:
        st = proc_stat(self.reaper.containerd_pid)
        if not st:
            return 0.0
        return (int(st[13]) + int(st[14])) / os.sysconf("SC_CLK_TCK")

    # -- teardown -------------------------------------------------------------------------------

    def leftovers(self) -> list[str]:
        """What is left after every container was deleted: a leak of the runtime."""
        out = []
        for pid, argv in self.orphans().items():
            out.append(f"process {pid} still running: {' '.join(argv)}")
        for pid in all_pids():
            if in_namespace_cgroup(pid, self.namespace):
                out.append(f"container process {pid} still running: {' '.join(cmdline(pid))}")
        return out

    def stop(self) -> None:
        if self.events:
            self.events.stop()
        if self.reaper is None:
            for d in (self.base, self.root):
                shutil.rmtree(d, ignore_errors=True)
            return
        if self.reaper.proc.poll() is None:
            listing = self.ctr(["task", "ls", "-q"], 30).out.decode().split()
            for cid in listing:
                self.ctr(["task", "rm", "-f", cid], 30)
            for cid in self.ctr(["containers", "ls", "-q"], 30).out.decode().split():
                self.ctr(["containers", "rm", cid], 30)
            try:
                os.kill(self.reaper.containerd_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            self.reaper.wait_pids({self.reaper.containerd_pid}, 15)
        # Shims and containers that outlived containerd were started by it: end them by pid.
        victims = set(self.orphans()) | {p for p in all_pids()
                                         if in_namespace_cgroup(p, self.namespace)}
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.reaper.wait_exit(15)
        for mp in sorted(mount_points(), reverse=True):
            if mp.startswith(str(self.base) + "/") or mp.startswith(str(self.root) + "/"):
                subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
        for cg in cgroup_mounts():
            remove_cgroup_tree(cg / self.namespace)
        for group in self.groups:
            key = f"{self.address}/{self.namespace}/{group}"
            sock = SHIM_SOCKET_DIR / hashlib.sha256(key.encode()).hexdigest()
            if sock.exists():
                sock.unlink()
        shutil.rmtree(PELAGOS_STATE_ROOT / self.namespace, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.args.keep_logs:
            keep = Path(self.args.keep_logs)
            shutil.copy(self.log_path, keep)
            log(f"containerd log kept at {keep}")
        shutil.rmtree(self.base, ignore_errors=True)
        for parent in (self.base.parent, self.root.parent):
            try:
                parent.rmdir()
            except OSError:
                pass


def remove_cgroup_tree(path: Path) -> None:
    if not path.is_dir():
        return
    for sub in path.iterdir():
        if sub.is_dir():
            remove_cgroup_tree(sub)
    try:
        path.rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------------------------------
# Statistics and results


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Metric:
    key: str
    label: str
    unit: str
    better: str  # "lower" or "higher"
    samples: dict[str, list[float]] = field(default_factory=lambda: {r: [] for r in RUNTIMES})
    failures: dict[str, list[str]] = field(default_factory=lambda: {r: [] for r in RUNTIMES})
    dead: set[str] = field(default_factory=set)
    stat: str = "median"
    extra: dict = field(default_factory=dict)

    def gave_up(self, runtime: str) -> bool:
        return runtime in self.dead or len(self.failures[runtime]) >= MAX_FAILURES

    def value(self, runtime: str) -> float | None:
        xs = self.samples[runtime]
        if not xs:
            return None
        if self.stat == "p90":
            return percentile(xs, 0.9)
        if self.stat == "mean":
            return statistics.fmean(xs)
        return statistics.median(xs)

    def ratio(self) -> float | None:
        a, b = self.value(RUNC), self.value(PELAGOS)
        if a is None or b is None or a == 0:
            return None
        return b / a

    def to_json(self) -> dict:
        out = {"label": self.label, "unit": self.unit, "better": self.better,
               "statistic": self.stat, "ratio_pelagos_over_runc": self.ratio()}
        for r in RUNTIMES:
            xs = self.samples[r]
            out[SHORT[r]] = {
                "value": self.value(r),
                "n": len(xs),
                "median": statistics.median(xs) if xs else None,
                "p90": percentile(xs, 0.9) if xs else None,
                "min": min(xs) if xs else None,
                "max": max(xs) if xs else None,
                "samples": [round(x, 6) for x in xs],
                "failures": self.failures[r],
            }
        if self.key in TARGETS:
            op, target = TARGETS[self.key]
            ratio = self.ratio()
            out["target"] = f"{op} {target}"
            out["target_met"] = None if ratio is None else (
                ratio <= target if op == "<=" else ratio >= target)
        out.update(self.extra)
        return out


class Results:
    def __init__(self):
        self.metrics: dict[str, Metric] = {}
        self.notes: list[str] = []

    def metric(self, key: str, label: str, unit: str, better: str = "lower",
               stat: str = "median") -> Metric:
        if key not in self.metrics:
            self.metrics[key] = Metric(key, label, unit, better, stat=stat)
        return self.metrics[key]

    def fail(self, m: Metric, runtime: str, f: Failure, fatal: bool = False) -> None:
        """Records a failed round; `fatal` (or MAX_FAILURES of them) ends the metric for it."""
        m.failures[runtime].append(f.describe())
        if fatal:
            m.dead.add(runtime)
        log(f"FAILED {m.label} [{SHORT[runtime]}]: {f.describe()}")

    def failure_report(self) -> str:
        """Each distinct failure once, with the metrics it hit."""
        seen: dict[tuple[str, str], list[str]] = {}
        for m in self.metrics.values():
            for rt in RUNTIMES:
                for why in m.failures[rt]:
                    seen.setdefault((rt, why), [])
                    if m.label not in seen[(rt, why)]:
                        seen[(rt, why)].append(m.label)
        out = []
        for (rt, why), labels in seen.items():
            out.append(f"FAILED [{SHORT[rt]}] in: {'; '.join(labels)}\n  {why}\n")
        return "\n".join(out)


def fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("ms",):
        return f"{v:.1f}"
    if unit in ("s",):
        return f"{v:.2f}"
    if unit in ("MiB", "MiB/s"):
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return f"{v:.2f}"


# How many `ctr` processes each sample of a metric waits for (a function of the density size):
# times the median `ctr --help` (the "ctr_startup" metric), what no runtime can take away.
CTR_PROCS = {
    "run_to_exit": lambda n: 1, "run_to_exit_p90": lambda n: 1, "create_start": lambda n: 1,
    "kill_delete": lambda n: 2, "exec": lambda n: 1, "exec_p90": lambda n: 1,
    "density_wall": lambda n: n, "density_remove": lambda n: 2 * n,
}


def ctr_floor(res: Results, m: Metric, density: int) -> str:
    """`ctr`'s start-up in one sample of `m`, in its unit, and that as a share of runc's value."""
    startup = res.metrics.get("ctr_startup")
    ms = startup.value(RUNC) if startup else None
    if m.key not in CTR_PROCS or ms is None:
        return ""
    floor = CTR_PROCS[m.key](density) * ms / (1000.0 if m.unit == "s" else 1.0)
    runc = m.value(RUNC)
    share = f" ({floor / runc:.2f})" if runc else ""
    return fmt(floor, m.unit) + share


def table_rows(res: Results, density: int = 0) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for m in res.metrics.values():
        cells = []
        for r in RUNTIMES:
            if not m.samples[r]:
                cells.append("FAILED" if m.failures[r] else "-")
            else:
                cells.append(fmt(m.value(r), m.unit) + ("*" if m.failures[r] else ""))
        ratio = m.ratio()
        target = ""
        if m.key in TARGETS:
            op, t = TARGETS[m.key]
            verdict = "-" if ratio is None else (
                "ok" if (ratio <= t if op == "<=" else ratio >= t) else "MISS")
            target = f"{op} {t} {verdict}"
        rows.append((f"{m.label} ({m.unit})", cells[0], cells[1],
                     "-" if ratio is None else f"{ratio:.2f}", target,
                     ctr_floor(res, m, density)))
    return rows


def print_table(res: Results, density: int = 0) -> None:
    head = ("metric", "runc", "pelagos", "ratio", "target", "ctr floor (of runc)")
    rows = table_rows(res, density)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    line = "  ".join("-" * w for w in widths)
    print(line)
    for i, row in enumerate([head, *rows]):
        print("  ".join(c.ljust(widths[j]) if j == 0 else c.rjust(widths[j])
                        for j, c in enumerate(row)))
        if i == 0:
            print(line)
    print(line)


def markdown_table(res: Results, density: int = 0) -> str:
    out = ["| metric | runc | pelagos | pelagos/runc | target | ctr start-up floor (of runc) |",
           "|---|---:|---:|---:|---|---:|"]
    for row in table_rows(res, density):
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# The measurements


class Bench:
    def __init__(self, cd: Containerd, args: argparse.Namespace, res: Results):
        self.cd = cd
        self.args = args
        self.res = res
        self.seq = 0

    def cid(self, what: str, runtime: str) -> str:
        self.seq += 1
        return f"{what}-{SHORT[runtime]}-{self.seq}"

    @staticmethod
    def order(rnd: int) -> tuple[str, str]:
        return RUNTIMES if rnd % 2 == 0 else RUNTIMES[::-1]

    def wait_shim_gone(self, pid: int | None, cid: str) -> None:
        if pid is None:
            return
        if not self.cd.reaper.wait_pids({pid}, 30):
            raise Failure(f"the shim {pid} of {cid} was still running 30s after the delete")

    # 1 + 8: run to exit, and the CPU time of the shim side per lifecycle -----------------------

    def run_to_exit(self) -> None:
        m = self.res.metric("run_to_exit", "run-to-exit, ctr run --rm /bin/true, median", "ms")
        p90 = self.res.metric("run_to_exit_p90", "run-to-exit p90", "ms", stat="p90")
        cpu = self.res.metric("cpu_lifecycle", "shim-side CPU per run-to-exit lifecycle",
                              "ms", stat="mean")
        inner = self.res.metric("run_to_exit_events",
                                "run-to-exit seen by containerd, /containers/create -> "
                                "/tasks/exit, median", "ms")
        procs = self.res.metric("reaped_per_lifecycle", "processes orphaned per lifecycle",
                                "count", stat="mean")
        ev = self.cd.events
        rounds = self.args.warmup + self.args.rounds
        for rnd in range(rounds):
            for rt in self.order(rnd):
                if m.gave_up(rt):
                    continue
                cid = self.cid("rte", rt)
                mark = self.cd.reaper.mark()
                ev_mark = ev.mark()
                child0 = self.cd.containerd_child_cpu()
                try:
                    r = self.cd.ctr_ok(self.cd.run_args(rt, cid, "--rm", ("/bin/true",)),
                                       what="ctr run --rm /bin/true failed")
                    reaps = self.cd.reaper.wait_new(mark, 30)
                    if not reaps:
                        raise Failure("no shim process exited within 30s of ctr run --rm")
                    created = ev.wait(ev_mark, "/containers/create", 10, id=cid)
                    exited = ev.wait(ev_mark, "/tasks/exit", 10, container_id=cid, id=cid)
                    if created is None or exited is None:
                        raise Failure(f"no /containers/create or /tasks/exit event for {cid}")
                except Failure as f:
                    for x in (m, p90, cpu, inner):
                        self.res.fail(x, rt, f)
                    self.cd.cleanup([cid])
                    continue
                if rnd < self.args.warmup:
                    continue
                ms = r.seconds * 1e3
                m.samples[rt].append(ms)
                p90.samples[rt].append(ms)
                inner.samples[rt].append((exited.t - created.t) / 1e6)
                start_cpu = self.cd.containerd_child_cpu() - child0
                cpu.samples[rt].append((sum(x.cpu for x in reaps) + start_cpu) * 1e3)
                procs.samples[rt].append(len(reaps))
        cpu.extra["how"] = ("rusage of the shim daemon and all it reaped (wait4 by a subreaper) "
                            "+ the start process (containerd's cutime+cstime, 10 ms ticks)")

    # 2: create+start and kill+delete ----------------------------------------------------------

    def create_delete(self) -> None:
        cs = self.res.metric("create_start", "create+start, ctr run -d, median", "ms")
        kd = self.res.metric("kill_delete", "kill+delete, ctr task rm -f + ctr c rm, median",
                             "ms")
        for rnd in range(self.args.rounds):
            for rt in self.order(rnd):
                if cs.gave_up(rt) or kd.gave_up(rt):
                    continue
                cid = self.cid("cd", rt)
                try:
                    cs_s = self.cd.run_detached(rt, cid)
                except Failure as f:
                    self.res.fail(cs, rt, f)

                    self.cd.cleanup([cid])
                    continue
                shim = self.cd.shim_of(cid, rt)
                try:
                    kd_s = self.cd.remove(cid)
                    self.wait_shim_gone(shim, cid)
                except Failure as f:
                    self.res.fail(kd, rt, f)
                    self.cd.cleanup([cid])
                    continue
                cs.samples[rt].append(cs_s * 1e3)
                kd.samples[rt].append(kd_s * 1e3)

    # 3: exec ----------------------------------------------------------------------------------

    def exec_latency(self) -> None:
        m = self.res.metric("exec", "exec, ctr task exec /bin/true, median", "ms")
        p90 = self.res.metric("exec_p90", "exec p90", "ms", stat="p90")
        inner = self.res.metric("exec_events", "exec seen by containerd, /tasks/exec-added -> "
                                "/tasks/exit, median", "ms")
        # What no runtime can take away: a runtime that took no time at all would still score
        # exec_outside(its own) / exec(runc) against the exec target.
        outside = self.res.metric("exec_outside", "exec outside that window (mostly ctr and containerd: "
                                  "exec minus seen by containerd), median", "ms")
        startup = self.res.metric("ctr_startup", "ctr start-up alone, ctr --help, median", "ms")
        ev = self.cd.events
        boxes = {}
        for rt in RUNTIMES:
            cid = self.cid("exec", rt)
            try:
                self.cd.run_detached(rt, cid)
                boxes[rt] = cid
            except Failure as f:
                for x in (m, p90, inner):
                    self.res.fail(x, rt, f, fatal=True)
                self.cd.cleanup([cid])
        for rnd in range(self.args.warmup + self.args.rounds):
            for rt in self.order(rnd):
                if rt not in boxes or m.gave_up(rt):
                    continue
                xid = f"e{rnd}"
                args = ["task", "exec", "--exec-id", xid, "--fifo-dir",
                        str(self.cd.fifo_dir), boxes[rt], "/bin/true"]
                mark = ev.mark()
                try:
                    r = self.cd.ctr_ok(args, what="ctr task exec /bin/true failed")
                    added = ev.wait(mark, "/tasks/exec-added", 10, container_id=boxes[rt],
                                    exec_id=xid)
                    exited = ev.wait(mark, "/tasks/exit", 10, container_id=boxes[rt], id=xid)
                    if added is None or exited is None:
                        raise Failure(f"no /tasks/exec-added or /tasks/exit event for {xid}")
                except Failure as f:
                    for x in (m, p90, inner):
                        self.res.fail(x, rt, f)
                    continue
                if rnd >= self.args.warmup:
                    seen = (exited.t - added.t) / 1e6
                    m.samples[rt].append(r.seconds * 1e3)
                    p90.samples[rt].append(r.seconds * 1e3)
                    inner.samples[rt].append(seen)
                    outside.samples[rt].append(r.seconds * 1e3 - seen)
                    help_run = self.cd.ctr(["--help"])
                    if help_run.rc == 0:
                        startup.samples[rt].append(help_run.seconds * 1e3)
        for rt, cid in boxes.items():
            shim = self.cd.shim_of(cid, rt)
            try:
                self.cd.remove(cid)
                self.wait_shim_gone(shim, cid)
            except Failure as f:
                self.res.notes.append(f"exec phase cleanup [{SHORT[rt]}]: {f.describe()}")
                self.cd.cleanup([cid])

    # -info: containerd 2.x introspection (CRI at start-up; 2.2+ at every task create of a
    # runtime that is not runc) --------------------------------------------------------------

    def info(self) -> None:
        m = self.res.metric("info", "shim -info (containerd 2.x introspection; runc's shim of "
                            "2.x runs runc features), median", "ms")
        runc_shim = Path(self.args.containerd_dir) / SHIM_BINARY[RUNC]
        if not os.access(runc_shim, os.X_OK):
            runc_shim = Path(shutil.which(SHIM_BINARY[RUNC]) or SHIM_BINARY[RUNC])
        binaries = {PELAGOS: self.args.shim, RUNC: str(runc_shim)}
        for rnd in range(self.args.warmup + self.args.rounds):
            for rt in self.order(rnd):
                if m.gave_up(rt):
                    continue
                cmd = [binaries[rt], "-info"]
                t0 = time.monotonic()
                p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True)
                took = time.monotonic() - t0
                if p.returncode != 0 or not p.stdout:
                    if rt == RUNC and b"not defined: -info" in p.stderr:
                        log(f"{runc_shim} has no -info (containerd 1.x): no runc column")
                        m.dead.add(rt)
                        continue
                    self.res.fail(m, rt, Failure("-info failed", cmd, p.returncode,
                                                 p.stderr.decode(errors="replace")),
                                  fatal=True)
                    continue
                if rnd >= self.args.warmup:
                    m.samples[rt].append(took * 1e3)

    # 4 + 7: memory with K containers, density -------------------------------------------------

    def measure_shim_side(self, rt: str) -> tuple[int, int, int, int]:
        """(Rss KiB, Pss KiB, held memfd KiB, shim-side processes) of runtime `rt`."""
        side, _ = self.cd.shim_side(rt)
        rss = pss = 0
        memfds: dict[tuple[int, int], int] = {}
        for pid in side:
            r, p = smaps_rollup(pid)
            rss += r
            pss += p
            memfds.update(held_memfds(pid))
        return rss, pss, sum(memfds.values()) // 1024, len(side)

    def start_many(self, rt: str, n: int, what: str, group: str | None) -> tuple[list[str], float]:
        cids = []
        t = time.perf_counter()
        try:
            for _ in range(n):
                cid = self.cid(what, rt)
                cids.append(cid)
                self.cd.run_detached(rt, cid, group)
        except Failure:
            try:
                self.remove_many(rt, cids)
            except Failure as f:
                log(f"cleanup: {f.describe()}")
            raise
        return cids, time.perf_counter() - t

    def remove_many(self, rt: str, cids: list[str]) -> float:
        shims = {p for p in (self.cd.shim_of(c, rt) for c in cids) if p}
        t = time.perf_counter()
        failed = None
        for cid in cids:
            try:
                self.cd.remove(cid)
            except Failure as f:
                failed = failed or f
                self.cd.cleanup([cid])
        took = time.perf_counter() - t
        gone = self.cd.reaper.wait_pids(shims, 30)
        if failed:
            raise failed
        if len(gone) != len(shims):
            raise Failure(f"shim processes {sorted(shims - set(gone))} still running 30s after "
                          "their containers were deleted")
        return took

    def memory(self) -> None:
        k = self.args.k
        metrics = {}
        for mode in ("single", "pod"):
            desc = (f"{k} containers, one shim each" if mode == "single"
                    else f"{k} containers in one group")
            metrics[mode] = (
                self.res.metric(f"rss_{mode}", f"shim RSS per container, {desc}", "MiB"),
                self.res.metric(f"pss_smaps_{mode}", f"shim PSS per container, {desc}", "MiB"),
                self.res.metric(f"memfd_{mode}", f"shim memfds held per container, {desc}",
                                "MiB"),
                self.res.metric(f"pss_{mode}", f"shim PSS + memfds per container, {desc}",
                                "MiB"),
                self.res.metric(f"procs_{mode}", f"shim-side processes per container, {desc}",
                                "count"),
            )
        for rnd in range(self.args.mem_rounds):
            for mode in ("single", "pod"):
                rss_m, smaps_m, memfd_m, pss_m, procs_m = metrics[mode]
                for rt in self.order(rnd):
                    if pss_m.gave_up(rt):
                        continue
                    group = f"pod-{SHORT[rt]}-{rnd}" if mode == "pod" else None
                    try:
                        cids, _ = self.start_many(rt, k, f"mem{mode[0]}", group)
                    except Failure as f:
                        for x in metrics[mode]:
                            self.res.fail(x, rt, f)
                        continue
                    rss, pss, memfd, nside = self.measure_shim_side(rt)
                    rss_m.samples[rt].append(rss / 1024 / k)
                    smaps_m.samples[rt].append(pss / 1024 / k)
                    memfd_m.samples[rt].append(memfd / 1024 / k)
                    pss_m.samples[rt].append((pss + memfd) / 1024 / k)
                    procs_m.samples[rt].append(nside / k)
                    try:
                        self.remove_many(rt, cids)
                    except Failure as f:
                        self.res.notes.append(f"memory ({mode}) cleanup [{SHORT[rt]}]: "
                                              f"{f.describe()}")

    def density(self) -> None:
        n = self.args.density
        wall = self.res.metric("density_wall", f"density: {n} x ctr run -d in sequence, wall",
                               "s")
        pss = self.res.metric("density_pss", f"density: total shim PSS + memfds with {n} running",
                              "MiB")
        rss = self.res.metric("density_rss", f"density: total shim RSS with {n} running", "MiB")
        rm = self.res.metric("density_remove", f"density: removing the {n}, wall", "s")
        for rnd in range(self.args.density_rounds):
            for rt in self.order(rnd):
                if wall.gave_up(rt):
                    continue
                try:
                    cids, took = self.start_many(rt, n, "dens", None)
                except Failure as f:
                    for x in (wall, pss, rss, rm):
                        self.res.fail(x, rt, f)
                    continue
                r_kib, p_kib, memfd_kib, _ = self.measure_shim_side(rt)
                wall.samples[rt].append(took)
                pss.samples[rt].append((p_kib + memfd_kib) / 1024)
                rss.samples[rt].append(r_kib / 1024)
                try:
                    rm.samples[rt].append(self.remove_many(rt, cids))
                except Failure as f:
                    self.res.fail(rm, rt, f)

    # 5: stdout throughput ---------------------------------------------------------------------

    def throughput(self) -> None:
        mib = self.args.stdout_mib
        tty_mib = self.args.tty_mib
        if mib > 0:
            fifo = self.res.metric("stdout_fifo",
                                   f"stdout throughput, {mib} MiB via fifos to a reader",
                                   "MiB/s", better="higher")
        if tty_mib > 0:
            tty = self.res.metric("stdout_tty", f"stdout throughput, {tty_mib} MiB via a tty",
                                  "MiB/s", better="higher")
        for rnd in range(self.args.io_rounds):
            for rt in self.order(rnd):
                if not fifo.gave_up(rt) and mib > 0:
                    try:
                        fifo.samples[rt].append(self.pump_fifo(rt, mib))
                    except Failure as f:
                        self.res.fail(fifo, rt, f)
            for rt in self.order(rnd):
                if not tty.gave_up(rt) and tty_mib > 0:
                    try:
                        rate, lost = self.pump_tty(rt, tty_mib)
                        tty.samples[rt].append(rate)
                        short = tty.extra.setdefault("bytes_lost_at_the_end", {})
                        short.setdefault(SHORT[rt], []).append(lost)
                    except Failure as f:
                        self.res.fail(tty, rt, f)

    def dd(self, mib: int) -> tuple[str, ...]:
        return ("dd", "if=/dev/zero", "bs=1048576", f"count={mib}")

    @staticmethod
    def io_timeout(mib: int) -> float:
        """Seconds after which a transfer counts as hung: 20 MiB/s is far below either shim."""
        return CTR_TIMEOUT + mib / 20

    def io_hung(self, p: subprocess.Popen, cmd: list[str], cid: str, total: int, mib: int):
        stuck = self.cd.snapshot()
        p.kill()
        p.wait()
        self.cd.cleanup([cid])
        raise Failure(f"stdout transfer hung after {total} of {mib * MIB} bytes", cmd,
                      detail=stuck)

    def pump_fifo(self, rt: str, mib: int) -> float:
        """MiB/s from the first to the last byte of `mib` MiB that the container writes."""
        cid = self.cid("out", rt)
        cmd = self.cd.ctr_cmd(self.cd.run_args(rt, cid, "--rm", self.dd(mib)))
        rd, wr = os.pipe()
        try:
            fcntl.fcntl(rd, fcntl.F_SETPIPE_SZ, MIB)
        except OSError:
            pass
        sink = os.open(os.devnull, os.O_WRONLY)
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=wr, stderr=subprocess.PIPE)
        os.close(wr)
        total, first, last = 0, None, None
        waiter = Deadline(self.io_timeout(mib), rd)
        try:
            while True:
                if not waiter.wait():
                    return self.io_hung(p, cmd, cid, total, mib)
                n = os.splice(rd, sink, MIB)
                if n == 0:
                    break
                last = time.perf_counter()
                if first is None:
                    first = last
                total += n
        finally:
            os.close(rd)
            os.close(sink)
        err = p.stderr.read().decode(errors="replace")
        rc = p.wait()
        if rc != 0 or total != mib * MIB:
            self.cd.cleanup([cid])
            raise Failure(f"stdout via fifos: got {total} of {mib * MIB} bytes", cmd, rc, err,
                          self.cd.shim_log_tail())
        return total / MIB / (last - first)

    def pump_tty(self, rt: str, mib: int) -> tuple[float, int]:
        """(MiB/s, bytes lost). `ctr run -t` may exit before it copied the last few KiB to its
        terminal, with either runtime: a short tail is counted, not failed."""
        cid = self.cid("tty", rt)
        # dd's summary would follow the data on the same terminal: silence it.
        script = " ".join(self.dd(mib)) + " 2>/dev/null"
        cmd = self.cd.ctr_cmd(self.cd.run_args(rt, cid, "--rm", ("sh", "-c", script), tty=True))
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        total, first, last = 0, None, None
        tail = b""
        waiter = Deadline(self.io_timeout(mib), master)
        try:
            while True:
                if not waiter.wait():
                    return self.io_hung(p, cmd, cid, total, mib)
                try:
                    chunk = os.read(master, MIB)
                except OSError as e:
                    if e.errno == errno.EIO:
                        break
                    raise
                if not chunk:
                    break
                last = time.perf_counter()
                if first is None:
                    first = last
                total += len(chunk)
                tail = (tail + chunk)[-4096:]
        finally:
            os.close(master)
        rc = p.wait()
        if rc != 0 or total < mib * MIB * 0.99 or total > mib * MIB:
            self.cd.cleanup([cid])
            raise Failure(f"stdout via a tty: got {total} of {mib * MIB} bytes", cmd, rc,
                          tail.decode(errors="replace"), self.cd.shim_log_tail())
        return total / MIB / (last - first), mib * MIB - total

    # 6: exit-event latency --------------------------------------------------------------------

    def exit_event(self) -> None:
        m = self.res.metric("exit_event", "exit event, SIGKILL -> /tasks/exit seen, median",
                            "ms")
        p90 = self.res.metric("exit_event_p90", "exit event p90", "ms", stat="p90")
        ev = self.cd.events
        for rnd in range(self.args.warmup + self.args.rounds):
            for rt in self.order(rnd):
                if m.gave_up(rt):
                    continue
                cid = self.cid("exit", rt)
                mark = ev.mark()
                try:
                    self.cd.run_detached(rt, cid)
                    started = ev.wait(mark, "/tasks/start", 30, container_id=cid)
                    if started is None or not started.body.get("pid"):
                        raise Failure(f"no /tasks/start event with a pid for {cid}")
                    shim = self.cd.shim_of(cid, rt)
                    mark = ev.mark()
                    t = time.perf_counter_ns()
                    os.kill(int(started.body["pid"]), signal.SIGKILL)
                    exited = ev.wait(mark, "/tasks/exit", 30, container_id=cid)
                    if exited is None:
                        raise Failure(f"no /tasks/exit event within 30s of SIGKILL to {cid}")
                    self.cd.remove(cid)
                    self.wait_shim_gone(shim, cid)
                except Failure as f:
                    self.res.fail(m, rt, f)
                    self.res.fail(p90, rt, f)
                    self.cd.cleanup([cid])
                    continue
                if rnd >= self.args.warmup:
                    ms = (exited.t - t) / 1e6
                    m.samples[rt].append(ms)
                    p90.samples[rt].append(ms)


# ----------------------------------------------------------------------------------------------
# --profile: where the CPU goes, per process, per operation


PERF_HZ = 2000


def process_group(comm: str, shim_comm: str) -> str:
    """Buckets perf's comm names: whose CPU it is."""
    if comm == "ctr":
        return "ctr"
    if comm == "containerd":
        return "containerd"
    if comm in ("true", "sleep"):
        return "container process"
    if comm.startswith("python"):
        return "bench (python)"
    if comm.startswith("runc") or comm == "exe":
        return "runc (+ runc init)"
    if comm == "pelagos-init" or comm.startswith("memfd:pelagos"):
        return "pelagos setup helper"
    shim_threads = ("containerd-shim", "client_handler", "listener_loop", "events", "reaper",
                    shim_comm)
    if comm in shim_threads or comm.startswith("pelagos"):
        return "shim (start + daemon)"
    return "other"


class Profiler:
    """perf record -a around N operations per runtime; strace -c of one pelagos daemon."""

    def __init__(self, cd: Containerd, args: argparse.Namespace):
        self.cd = cd
        self.args = args
        self.dir = Path(args.profile)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = args.rounds
        self.shim_comm = os.path.basename(args.shim)[:15]
        self.seq = 0

    def record(self, name: str, op) -> Path:
        data = self.dir / f"{name}.data"
        p = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-F", str(PERF_HZ),
                              "-o", str(data)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # perf prints nothing when ready: give it the time to open its events on every CPU.
        time.sleep(1)
        try:
            for i in range(self.n):
                op(i)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait()
        return data

    def cpu_by_group(self, data: Path) -> tuple[dict[str, float], set[int]]:
        """CPU ms per operation of the processes descended from this bench, by group.

        The machine is shared: only samples of processes that the bench, its ctr calls, its
        containerd, the shims and the containers forked count. perf's FORK records (also
        synthesized for processes alive at the start) give the tree.
        """
        out = subprocess.run(["perf", "script", "-i", str(data), "--show-task-events",
                              "-F", "comm,pid,tid", "--hide-call-graph"],
                             capture_output=True, text=True, errors="replace").stdout
        parent: dict[int, int] = {}
        samples: dict[tuple[int, str], int] = {}
        fork = re.compile(r"PERF_RECORD_FORK\((\d+):\d+\):\((\d+):\d+\)")
        sample = re.compile(r"^\s*(.*?)\s+(\d+)/\d+\s*$")
        for line in out.splitlines():
            if "PERF_RECORD_" in line:
                m = fork.search(line)
                if m and m.group(1) != m.group(2):
                    parent[int(m.group(1))] = int(m.group(2))
                continue
            m = sample.match(line)
            if m:
                key = (int(m.group(2)), m.group(1))
                samples[key] = samples.get(key, 0) + 1
        root = os.getpid()
        ours: dict[int, bool] = {}

        def descends(pid: int) -> bool:
            chain = []
            while pid not in ours and pid > 1 and pid != root and len(chain) < 64:
                chain.append(pid)
                pid = parent.get(pid, 0)
            verdict = pid == root or ours.get(pid, False)
            for p in chain:
                ours[p] = verdict
            return verdict

        groups: dict[str, float] = {}
        shim_pids = set()
        for (pid, comm), n in samples.items():
            if pid == 0 or not descends(pid):
                continue
            g = process_group(comm, self.shim_comm)
            groups[g] = groups.get(g, 0.0) + n * 1000 / PERF_HZ / self.n
            if g in ("shim (start + daemon)", "pelagos setup helper"):
                shim_pids.add(pid)
        return groups, shim_pids

    def symbols(self, data: Path, pids: set[int], dest: Path) -> None:
        """Where the pelagos shim and helper spend CPU, callers included (`--children`)."""
        if not pids:
            return
        out = subprocess.run(["perf", "report", "-i", str(data), "--children", "--sort", "sym",
                              "-g", "none", "-q", "--stdio", "--percentage", "relative",
                              "--pid", ",".join(map(str, sorted(pids)))],
                             capture_output=True, text=True).stdout
        dest.write_text(out)

    def lifecycle(self, rt: str, i: int, group: str | None = None) -> None:
        self.seq += 1
        mark = self.cd.reaper.mark()
        self.cd.ctr_ok(self.cd.run_args(rt, f"prof-{SHORT[rt]}-{self.seq}", "--rm",
                                        ("/bin/true",), group))
        if group is None:
            self.cd.reaper.wait_new(mark, 30)

    def run(self) -> None:
        table: dict[str, dict[str, dict[str, float]]] = {}
        for rt in RUNTIMES:
            short = SHORT[rt]
            for i in range(2):
                self.lifecycle(rt, i)
            log(f"profile: {self.n} run-to-exit lifecycles of {short}")
            data = self.record(f"run-{short}", lambda i, rt=rt: self.lifecycle(rt, i))
            groups, pids = self.cpu_by_group(data)
            table.setdefault("ctr run --rm /bin/true", {})[short] = groups
            if rt == PELAGOS:
                self.symbols(data, pids, self.dir / "pelagos-run-symbols.txt")
            box = f"prof-box-{short}"
            self.cd.run_detached(rt, box)

            def exec_once(i: int, box=box) -> None:
                self.cd.ctr_ok(["task", "exec", "--exec-id", f"p{i}", "--fifo-dir",
                                str(self.cd.fifo_dir), box, "/bin/true"])

            exec_once(-1)
            log(f"profile: {self.n} execs into a {short} container")
            data = self.record(f"exec-{short}", exec_once)
            groups, pids = self.cpu_by_group(data)
            table.setdefault("ctr task exec /bin/true", {})[short] = groups
            if rt == PELAGOS:
                self.symbols(data, pids, self.dir / "pelagos-exec-symbols.txt")
                self.strace_daemon(box, exec_once, "strace-pelagos-exec.txt")
                group = "prof-pod"
                self.cd.run_detached(rt, "prof-anchor", group)
                self.strace_daemon("prof-anchor",
                                   lambda i: self.lifecycle(rt, i, group),
                                   "strace-pelagos-lifecycle-in-pod.txt")
                self.cd.remove("prof-anchor")
            self.cd.remove(box)
        text = self.format(table)
        (self.dir / "cpu-by-process.txt").write_text(text)
        print(text)
        log(f"profile written to {self.dir}")

    def strace_daemon(self, cid: str, op, name: str) -> None:
        """strace -f -c of the daemon serving `cid` (and its helpers) across N operations."""
        pid = self.cd.shim_of(cid, PELAGOS)
        if pid is None or not shutil.which("strace"):
            return
        p = subprocess.Popen(["strace", "-f", "-c", "-S", "calls", "-o", str(self.dir / name),
                              "-p", str(pid)], stderr=subprocess.PIPE)
        p.stderr.readline()  # "strace: Process N attached"
        try:
            for i in range(self.n):
                op(1000 + i)
        finally:
            p.send_signal(signal.SIGINT)
            p.wait()

    def format(self, table) -> str:
        lines = [f"CPU ms per operation by process group (perf record -a, {self.n} operations "
                 f"per runtime, {PERF_HZ} Hz)", ""]
        for op, by_rt in table.items():
            lines.append(op)
            groups = sorted({g for v in by_rt.values() for g in v})
            lines.append(f"  {'':52} {'runc':>8} {'pelagos':>8}")
            for g in groups:
                row = [by_rt.get(SHORT[r], {}).get(g, 0.0) for r in RUNTIMES]
                lines.append(f"  {g:52} {row[0]:8.1f} {row[1]:8.1f}")
            lines.append("")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------


def machine_info(cd: Containerd, args: argparse.Namespace) -> dict:
    def first(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    cpu = "?"
    for line in read_text("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next((ln.split()[1] for ln in read_text("/proc/meminfo").splitlines()
                if ln.startswith("MemTotal:")), "0")
    repo = Path(__file__).resolve().parent.parent
    commit = first(["git", "-C", str(repo), "describe", "--always", "--dirty"])
    cgroup = ("v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists()
              else "hybrid" if Path("/sys/fs/cgroup/unified").is_dir() else "v1")
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kernel": platform.release(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(mem) / 1024 / 1024, 1),
        "cgroups": cgroup,
        "containerd": first([str(cd.bin_dir / "containerd"), "--version"]),
        "ctr": cd.ctr_bin,
        "runc": first(["runc", "--version"]),
        "pelagos_commit": commit,
        "shim": str(args.shim),
        "python": platform.python_version(),
        "loadavg_at_start": read_text("/proc/loadavg").split()[:3],
    }


PHASES = ("run", "create", "exec", "memory", "io", "exit", "density", "info")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    repo = Path(__file__).resolve().parent.parent
    p.add_argument("--shim", default=str(repo / "target/release/containerd-shim-pelagos-v2"),
                   help="the pelagos shim binary (scripts/bench.sh passes the static release "
                        "build of scripts/build-release.sh)")
    p.add_argument("--containerd-dir", default=os.path.dirname(shutil.which("containerd") or
                                                               "/usr/bin/containerd"),
                   help="directory holding containerd and ctr")
    p.add_argument("--rounds", type=int, default=30,
                   help="measured rounds per runtime of the latency metrics")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    p.add_argument("--k", type=int, default=10, help="running containers for the memory metric")
    p.add_argument("--mem-rounds", type=int, default=2)
    p.add_argument("--density", type=int, default=100, help="containers of the density run")
    p.add_argument("--density-rounds", type=int, default=1)
    p.add_argument("--stdout-mib", type=int, default=1024, help="0 skips the fifo throughput")
    p.add_argument("--tty-mib", type=int, default=256,
                   help="MiB through the tty (ptys are slow here: ~50 MiB/s); 0 skips it")
    p.add_argument("--io-rounds", type=int, default=3)
    p.add_argument("--full", action="store_true",
                   help="more rounds everywhere (about three times as long)")
    p.add_argument("--only", default=",".join(PHASES),
                   help=f"comma-separated phases out of {','.join(PHASES)}")
    p.add_argument("--json", default=str(repo / "bench/results.json"))
    p.add_argument("--markdown", default="", help="also write the table as markdown here")
    p.add_argument("--keep-logs", default="", help="copy containerd's log (with the shims' "
                   "logs) here before tearing down")
    p.add_argument("--debug", action="store_true", help="containerd and shims log at debug")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if a pelagos round failed or something was left behind (for CI "
                   "smoke runs; runc's failed rounds are reported, not fatal)")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="instead of the table: perf record -a around --rounds lifecycles and "
                   "execs per runtime, CPU per process group, pelagos symbols (build the shim "
                   "with symbols for those), strace -c of a pelagos daemon; files go to DIR")
    a = p.parse_args(argv)
    if a.full:
        a.rounds *= 3
        a.mem_rounds *= 2
        a.io_rounds *= 2
        a.density_rounds *= 2
    a.only = [x for x in a.only.split(",") if x]
    unknown = set(a.only) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}; known: {','.join(PHASES)}")
    return a


def main(argv: list[str]) -> int:
    if argv[:1] == ["_reaper"]:
        return reaper_main(argv)
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.py must run as root", file=sys.stderr)
        return 2
    args.shim = str(Path(args.shim).resolve())
    if not os.access(args.shim, os.X_OK):
        print(f"{args.shim} is missing: build it (cargo build --release -p "
              "containerd-shim-pelagos-v2) or pass --shim", file=sys.stderr)
        return 2
    if not os.access(Path(args.containerd_dir) / "containerd", os.X_OK):
        print(f"no containerd in {args.containerd_dir} (--containerd-dir)", file=sys.stderr)
        return 2
    res = Results()
    info: dict = {}
    cd = Containerd(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        cd.start()
        if args.profile:
            Profiler(cd, args).run()
            return 0
        info = machine_info(cd, args)
        bench = Bench(cd, args, res)
        phases = {
            "run": bench.run_to_exit,
            "create": bench.create_delete,
            "exec": bench.exec_latency,
            "exit": bench.exit_event,
            "io": bench.throughput,
            "memory": bench.memory,
            "density": bench.density,
            "info": bench.info,
        }
        for name in ("run", "create", "exec", "exit", "io", "memory", "density", "info"):
            if name in args.only:
                log(f"phase {name}")
                phases[name]()
        left = cd.leftovers()
        for x in left:
            res.notes.append(f"left behind after every container was deleted: {x}")
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        log("tearing down")
        cd.stop()
    elapsed = time.monotonic() - started
    print_table(res, args.density)
    for note in res.notes:
        print(f"note: {note}")
    report = res.failure_report()
    if report:
        print("* some rounds failed; the value is of the rounds that worked\n")
        print(report)
    info["loadavg_at_end"] = read_text("/proc/loadavg").split()[:3]
    doc = {
        "machine": info,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "markdown")},
        "elapsed_s": round(elapsed, 1),
        "metrics": {k: m.to_json() for k, m in res.metrics.items()},
        "notes": res.notes,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    log(f"wrote {args.json} ({elapsed:.0f}s)")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(res, args.density))
    # runc's rounds are the control: ctr itself loses a tty's tail now and then with either
    # shim (seen with runc's too), which is no failure of the shim under test.
    failed = any(m.failures[PELAGOS] for m in res.metrics.values())
    return 1 if args.strict and (failed or res.notes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
