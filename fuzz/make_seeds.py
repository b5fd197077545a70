#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/ (committed; rerun after changing this)."""
import copy
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- spec_plan: config.json as tests/common/bundle.rs default_config writes it, and variants.
CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
BASE = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS, "ambient": CAPS},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "pelagos",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                       {"type": "mount"}],
        "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


def spec(**linux):
    s = copy.deepcopy(BASE)
    s["linux"].update(linux)
    return s


put("spec_plan", "default.json", json.dumps(BASE, indent=1))
put("spec_plan", "resources.json", json.dumps(spec(
    cgroupsPath="/pelagos/fuzz",
    resources={
        "devices": [{"allow": False, "access": "rwm"},
                    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}],
        "memory": {"limit": 104857600, "reservation": 52428800, "swap": 209715200,
                   "swappiness": 10, "disableOOMKiller": False},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0-1", "mems": "0",
                "idle": 0, "burst": 1000},
        "pids": {"limit": 64},
        "blockIO": {"weight": 500, "leafWeight": 300,
                    "weightDevice": [{"major": 8, "minor": 0, "weight": 600}],
                    "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                    "throttleWriteIopsDevice": [{"major": 8, "minor": 0, "rate": 0}]},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 2097152}],
        "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 5}]},
    })))
put("spec_plan", "unified.json", json.dumps(spec(
    cgroupsPath="system.slice:pelagos:fuzz",
    resources={"unified": {"memory.max": "max", "memory.oom.group": "1"},
               "memory": {"limit": -1}})))
put("spec_plan", "userns.json", json.dumps(spec(
    namespaces=BASE["linux"]["namespaces"] + [{"type": "user"}, {"type": "cgroup"},
                                              {"type": "time"}],
    uidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
    gidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
    timeOffsets={"monotonic": {"secs": 10, "nanosecs": 0}},
    sysctl={"net.ipv4.ip_forward": "1", "kernel.shm_rmid_forced": "1"},
    rootfsPropagation="rslave")))
put("spec_plan", "join.json", json.dumps(spec(
    namespaces=[{"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/x"}],
    devices=[{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438,
              "uid": 0, "gid": 0}])))
s = spec(seccomp={
    "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "flags": ["SECCOMP_FILTER_FLAG_LOG"],
    "syscalls": [
        {"names": ["read", "write", "exit_group", "futex"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
        {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["ptrace"], "action": "SCMP_ACT_KILL_PROCESS"},
    ]})
s["process"]["oomScoreAdj"] = 100
put("spec_plan", "seccomp.json", json.dumps(s))
s = copy.deepcopy(BASE)
s["mounts"].append({"destination": "/data", "type": "bind", "source": "/tmp",
                    "options": ["rbind", "ro", "rprivate", "nosuid"]})
s["mounts"].append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                    "options": ["tmpcopyup", "rro", "mode=755"]})
s["hooks"] = {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 5}]}
s["process"]["rlimits"].append({"type": "RLIMIT_CORE", "hard": 0, "soft": 0})
put("spec_plan", "mounts.json", json.dumps(s))

# ---- start_input: protobuf by hand (varint tags, length-delimited fields).


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, data):
    if isinstance(data, str):
        data = data.encode()
    return varint(num << 3 | 2) + varint(len(data)) + data


def vfield(num, n):
    return varint(num << 3) + varint(n)


def any_(type_url, value):
    return field(1, type_url) + field(2, value)


RUNC = vfield(1, 1) + field(3, "/pelagos-shims") + vfield(4, 1000) + vfield(5, 1000)
TOML = b'SystemdCgroup = false\nShimCgroup = "/shim"  # comment\nLogLevel = \'debug\'\nIoUid = 1\n'
CRI = field(1, "io.containerd.pelagos.v2.options") + field(3, TOML)
put("start_input", "empty", b"")
put("start_input", "legacy_runc", any_("containerd.runc.v1.Options", RUNC))
put("start_input", "legacy_cri", any_("runtimeoptions.v1.Options", CRI))
put("start_input", "bootstrap", field(1, "fuzz") + field(2, "default") + vfield(3, 4)
    + field(4, "v2.3.0") + field(5, "/run/containerd/containerd.sock.ttrpc")
    + field(8, field(1, any_("type.googleapis.com/runtimeoptions.v1.Options", CRI))))
put("start_input", "selector_toml", b"\x02" + TOML)
put("start_input", "selector_runc", b"\x00" + RUNC)

# ---- helper_protocol: length-prefixed JSON frames (first byte: 0 helper side, 1 runtime side).


def frame(obj):
    body = json.dumps(obj).encode()
    return len(body).to_bytes(4, "little") + body


plan = {"Plan": {
    "process": BASE["process"], "preserve_fds": 0, "terminal": False, "console": None,
    "start_fifo": 5, "seccomp": None, "join": [], "join_pidfd": None, "unshare": 0,
    "userns": "Host", "fork": False, "await_cgroup": True,
    "init": {"spec": BASE, "rootfs": "/run/x/rootfs", "no_pivot": False,
             "hooks_request": False}}}
put("helper_protocol", "create", b"\x00" + frame(plan) + frame("CgroupJoined")
    + frame({"Start": {"state": "{}"}}))
put("helper_protocol", "hooks", b"\x00" + frame("MapsWritten") + frame({"HooksDone": {"state": "{}"}}))
put("helper_protocol", "answers", b"\x01" + frame("MapRequest") + frame({"Forked": {"pid": 7}})
    + frame("Ready") + frame({"Error": {"step": "mount", "message": "x"}}))
put("helper_protocol", "child_failure", b"\x01" + b"\xff\xff\xff\xff" + (3).to_bytes(4, "little")
    + (1).to_bytes(4, "little"))

# ---- host_text: selector byte, then the text.
MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "30 22 0:26 / /sys/fs/cgroup/memory rw,nosuid shared:9 - cgroup cgroup rw,memory\n"
    "31 22 0:27 / /sys/fs/cgroup/unified rw shared:10 - cgroup2 cgroup2 rw,nsdelegate\n"
    "40 22 0:50 / /run/containerd/x/rootfs rw - overlay overlay rw,lowerdir=/a/1:/a/2\n"
    "41 40 0:51 / /run/containerd/x/rootfs/with\\040space rw master:3 - tmpfs tmpfs rw\n"
)
put("host_text", "mountinfo", b"\x00" + MOUNTINFO.encode())
put("host_text", "unescape", b"\x01" + b"lowerdir=/var/lib/l/1/fs:/var/lib/l/2/fs,upperdir=/u,rw,memory,name=systemd\\134x")
put("host_text", "proc_cgroup", b"\x02" + b"12:memory:/a\n11:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\n")
put("host_text", "proc_stat", b"\x03" + b"42 (sh (x) y) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n")
put("host_text", "cgroup_path", b"\x04" + b"system.slice:cri-containerd:abc\nabc")
put("host_text", "hierarchies", b"\x05" + MOUNTINFO.encode()
    + b"\n#subsys_name hierarchy num_cgroups enabled\nmemory 3 1 1\ncpu 2 1 1\n")
put("host_text", "options", b"\x06" + b"rbind,ro,nosuid,size=10k,rprivate,CAP_SYS_ADMIN,idmap")
put("host_text", "argv", b"\x07" + b"-namespace\0k8s.io\0-id\0abc\0-address\0/run/c.sock\0-debug\0start")
put("host_text", "stdio_uris", b"\x07" + b"binary:///usr/bin/logger?id=1&env.X=a%20b+c#frag\0fifo:///run/x/stderr")
put("host_text", "stdio_file", b"\x0ffile://host/var/log/c.log\0/run/containerd/fifo/x-stderr")
