//! Fuzz targets for pelagos: each takes arbitrary bytes and must never panic. They are driven
//! by cargo-fuzz (`fuzz_targets/`, nightly) or by the stable runner (`src/bin/stable_fuzz.rs`);
//! see scripts/fuzz.sh.
//!
//! - [`spec_plan`]: config.json bytes through every translation done before the system is
//!   touched (spec validation, namespace plan, capabilities, mounts, devices, sysctls, id maps,
//!   seccomp compile, cgroup paths and resources), and the runtime → helper plan round trip.
//! - [`start_input`]: the shim's `start` stdin (BootstrapParams or a legacy options `Any`) and
//!   the runtime options of Create (runc Options, CRI runtimeoptions with a TOML body).
//! - [`helper_protocol`]: the frames the setup helper reads from the runtime, over a real socket.
//! - [`host_text`]: parsers of kernel and containerd text (mountinfo, /proc/<pid>/cgroup,
//!   /proc/<pid>/stat, cgroup paths, mount option words, shim argv).

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{CodedInputStream, Message};
use pelagos::cgroups::Mode;
use pelagos::oci_spec::runtime::Spec;
use pelagos::test_support::protocol::{Channel, FromHelper, InitPlan, Plan, ToHelper};

// The shim is a binary crate; its pure decoding modules are compiled in here as they are.
#[allow(dead_code)]
#[path = "../../shim/src/options.rs"]
mod options;

#[allow(dead_code)]
#[path = "../../shim/src/mount.rs"]
mod mount;

#[allow(dead_code)]
#[path = "../../shim/src/args.rs"]
mod args;

// Not under test: the module's own tests need the whole shim.
#[cfg(not(test))]
#[allow(dead_code, unused_imports)]
#[path = "../../shim/src/io/mod.rs"]
mod io;

/// Largest input fed to the socket-based target: the whole input is written before it is read,
/// so it must fit the socket buffer.
const MAX_SOCKET_INPUT: usize = 128 << 10;

/// Plain-file stand-ins for one v1 and one v2 cgroup directory, created once per process under
/// `$TMPDIR` (scripts/fuzz.sh points it at a directory it removes).
struct Fixture {
    v1: PathBuf,
    v2: PathBuf,
}

const V1_FILES: &[&str] = &[
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.soft_limit_in_bytes",
    "memory.swappiness",
    "memory.oom_control",
    "memory.usage_in_bytes",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.cfs_burst_us",
    "cpu.rt_period_us",
    "cpu.rt_runtime_us",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "pids.max",
    "blkio.weight",
    "blkio.leaf_weight",
    "blkio.weight_device",
    "blkio.leaf_weight_device",
    "blkio.throttle.read_bps_device",
    "blkio.throttle.write_bps_device",
    "blkio.throttle.read_iops_device",
    "blkio.throttle.write_iops_device",
    "hugetlb.2MB.limit_in_bytes",
    "devices.allow",
    "devices.deny",
    "net_cls.classid",
    "net_prio.ifpriomap",
];

const V2_FILES: &[&str] = &[
    "memory.max",
    "memory.swap.max",
    "memory.low",
    "memory.current",
    "memory.oom.group",
    "cpu.weight",
    "cpu.max",
    "cpu.max.burst",
    "cpu.idle",
    "cpuset.cpus",
    "cpuset.mems",
    "io.weight",
    "io.max",
    "hugetlb.2MB.max",
    "pids.max",
];

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = fixture_root();
        let (v1, v2) = (root.join("v1"), root.join("v2"));
        for (dir, files) in [(&v1, V1_FILES), (&v2, V2_FILES)] {
            std::fs::create_dir_all(dir).expect("create the cgroup fixture");
            for f in files {
                std::fs::write(dir.join(f), "0\n").expect("create a cgroup fixture file");
            }
        }
        Fixture { v1, v2 }
    })
}

/// Removes this process's cgroup fixture (the stable runner calls it before exiting).
pub fn cleanup() {
    let _ = std::fs::remove_dir_all(fixture_root());
}

fn fixture_root() -> PathBuf {
    std::env::temp_dir().join(format!("pelagos-fuzz-{}", std::process::id()))
}

/// config.json → everything pelagos derives from it before touching the system.
pub fn spec_plan(data: &[u8]) {
    let Ok(spec) = pelagos::spec::parse(data, Path::new("config.json")) else {
        return;
    };
    let ns = pelagos::spec::validate(&spec);
    // Each piece is also checked on its own, so input that fails an early check of
    // `validate` still reaches the later ones.
    let _ = pelagos::user::validate(&spec);
    if let Some(p) = spec.process() {
        let _ = pelagos::spec::validate_process(p, "process");
        if let Some(c) = p.capabilities() {
            let _ = pelagos::caps::validate(c);
        }
    }
    for m in spec.mounts().iter().flatten() {
        let words = m.options().clone().unwrap_or_default();
        if let Ok(o) = pelagos::rootfs::options::parse(&words) {
            let _ = (o.data_string(), o.bind_remount_flags(), format!("{o:?}"));
            let _ = (o.is_bind(), o.is_recursive_bind());
        }
        for w in &words {
            let _ = pelagos::rootfs::options::parse_propagation(w);
        }
        let _ = pelagos::rootfs::resolve::clean_relative(m.destination());
    }
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .and_then(|s| pelagos::seccomp::compile_uncached(s).ok());
    if let Some(linux) = spec.linux() {
        let path = linux.cgroups_path().as_ref().and_then(|p| p.to_str());
        let _ = pelagos::cgroups::resolve_path(path, "fuzz");
        let resources = pelagos::cgroups::spec_resources(linux);
        let f = fixture();
        for mode in [Mode::Legacy, Mode::Hybrid, Mode::Unified] {
            let _ = pelagos::cgroups::fuzz_translate(&resources, mode, &f.v1, &f.v2);
        }
        for maps in [linux.uid_mappings(), linux.gid_mappings()] {
            let _ = pelagos::namespaces::format_id_map(maps.as_deref().unwrap_or_default());
        }
        for key in linux.sysctl().iter().flat_map(|s| s.keys()) {
            let _ = pelagos::user::sysctl_path(key);
        }
    }
    if let Ok(ns) = ns {
        plan_round_trip(&spec, &ns, seccomp);
    }
}

/// The plan the runtime sends for a valid spec must decode in the helper to the same thing.
fn plan_round_trip(
    spec: &Spec,
    ns: &pelagos::namespaces::NsPlan,
    seccomp: Option<pelagos::seccomp::CompiledFilter>,
) {
    let plan = ToHelper::Plan(Box::new(Plan {
        process: spec.process().clone().expect("validated"),
        preserve_fds: 0,
        terminal: false,
        console: None,
        start_fifo: Some(5),
        seccomp,
        join: Vec::new(),
        join_pidfd: None,
        unshare: ns.unshare,
        userns: ns.userns,
        fork: ns.fork,
        await_cgroup: false,
        join_cgroup: Vec::new(),
        init: Some(InitPlan {
            spec: spec.clone(),
            rootfs: PathBuf::from("/rootfs"),
            no_pivot: false,
            hooks_request: false,
            trees: Vec::new(),
        }),
        log_level: 0,
    }));
    let bytes = serde_json::to_vec(&plan).expect("a plan serializes");
    let got = match serde_json::from_slice::<ToHelper>(&bytes) {
        Ok(ToHelper::Plan(p)) => p,
        Ok(other) => panic!("the plan decoded as {other:?}"),
        Err(e) => panic!("the helper cannot decode the plan of a valid spec: {e}"),
    };
    let ToHelper::Plan(sent) = plan else {
        unreachable!()
    };
    // Compared as values: capability sets serialize in hash order.
    let init = got.init.as_ref().expect("sent");
    if init.spec != *spec {
        let a = serde_json::to_value(spec).expect("serializes");
        let b = serde_json::to_value(&init.spec).expect("serializes");
        let at = first_difference(&a, &b, String::new()).unwrap_or_default();
        panic!("the spec changed on its way to the helper at {at}");
    }
    assert_eq!(got.process, sent.process, "the process changed on its way");
    assert_eq!(
        got.seccomp, sent.seccomp,
        "the seccomp filter changed on its way"
    );
    assert_eq!(
        (got.unshare, got.userns, got.fork, got.start_fifo),
        (sent.unshare, sent.userns, sent.fork, sent.start_fifo)
    );
}

/// Where two JSON values first differ, as a path with the two values.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value::{Array, Object};
    match (a, b) {
        (Object(x), Object(y)) => x
            .iter()
            .find_map(|(k, v)| match y.get(k) {
                Some(w) => first_difference(v, w, format!("{at}.{k}")),
                None => Some(format!("{at}.{k}: {v} vs missing")),
            })
            .or_else(|| {
                y.keys()
                    .find(|k| !x.contains_key(*k))
                    .map(|k| format!("{at}.{k}: missing vs {}", y[k]))
            }),
        (Array(x), Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ => (a != b).then(|| format!("{at}: {a} vs {b}")),
    }
}

/// Which CRI runtime options carry a `config_path` and no body: `decode` would read that file,
/// which is trusted configuration, not fuzz input (it could name a fifo or /dev/zero).
fn reads_config_file(any: &Any) -> bool {
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return false;
    }
    let mut is = CodedInputStream::from_bytes(&any.value);
    let (mut path, mut body) = (false, false);
    loop {
        match is.read_raw_tag_or_eof() {
            Ok(Some(18)) => match is.read_string() {
                Ok(s) => path = !s.is_empty(),
                Err(_) => return false,
            },
            Ok(Some(26)) => match is.read_bytes() {
                Ok(b) => body = !b.is_empty(),
                Err(_) => return false,
            },
            Ok(Some(tag)) => {
                let wt = containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)
                    .unwrap_or(containerd_shim_protos::protobuf::rt::WireType::Varint);
                if is.skip_field(wt).is_err() {
                    return false;
                }
            }
            Ok(None) => return path && !body,
            Err(_) => return false,
        }
    }
}

fn decode_options(any: Option<&Any>) {
    if any.is_some_and(reads_config_file) {
        return;
    }
    let _ = options::decode(any);
}

/// The shim's `start` stdin and Create's runtime options.
pub fn start_input(data: &[u8]) {
    // As containerd sends it, with this instance's id and namespace, and with the ones the
    // bytes name (so the BootstrapParams path is taken whenever they parse as one).
    let input = options::detect_start_input(data, "fuzz", "default");
    decode_options(options::runtime_options(&input));
    if let Ok(p) = containerd_shim_protos::bootstrap_api::BootstrapParams::parse_from_bytes(data) {
        let input = options::detect_start_input(data, &p.instance_id, &p.namespace);
        decode_options(options::runtime_options(&input));
    }
    // The bytes as the value of each options type, and as a CRI TOML body.
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let type_url = match selector % 4 {
        0 => "containerd.runc.v1.Options",
        1 => "io.containerd.runc.v1.options",
        2 => "runtimeoptions.v1.Options",
        _ => "type.googleapis.com/example.Unknown",
    };
    let any = Any {
        type_url: type_url.into(),
        value: rest.to_vec(),
        ..Default::default()
    };
    decode_options(Some(&any));
    let mut body = vec![26u8];
    let mut len = rest.len();
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            body.push(b);
            break;
        }
        body.push(b | 0x80);
    }
    body.extend_from_slice(rest);
    let toml = Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value: body,
        ..Default::default()
    };
    decode_options(Some(&toml));
}

fn socketpair() -> (OwnedFd, OwnedFd) {
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair")
}

/// The frames the setup helper reads (and, with the first byte odd, the runtime's reads of
/// the helper's answers), through a real socket as in the core's helper.
pub fn helper_protocol(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let rest = &rest[..rest.len().min(MAX_SOCKET_INPUT)];
    let (ours, theirs) = socketpair();
    let mut w = std::fs::File::from(theirs);
    if w.write_all(rest).is_err() {
        return;
    }
    drop(w);
    let mut chan = Channel::new(ours);
    // Every frame a message can hold is at least 4 bytes, so this bounds the loop.
    for _ in 0..=rest.len() / 4 {
        let more = if selector & 1 == 0 {
            matches!(chan.recv::<ToHelper>(), Ok(Some(_)))
        } else {
            matches!(chan.recv::<FromHelper>(), Ok(Some(_)))
        };
        if !more {
            break;
        }
    }
    let _ = chan.take_fd();
}

/// Parsers of kernel and containerd text, picked by the first byte.
pub fn host_text(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 8 {
        0 => {
            let mounts = pelagos::rootfs::mountinfo::parse(&text);
            for m in &mounts {
                let _ = m.is_shared();
            }
            let _ = pelagos::rootfs::mountinfo::containing_mount(&mounts, Path::new("/a/b/c"));
            let _ = mount::mounts_under(&text, Path::new("/run/containerd/x/rootfs"));
        }
        1 => {
            let _ = pelagos::rootfs::mountinfo::unescape(&text);
            let _ = pelagos::rootfs::v1_subsystems(&text);
            let _ = mount::compact_lowerdirs(&text);
        }
        2 => {
            let _ = pelagos::rootfs::parse_proc_cgroup(&text);
        }
        3 => {
            let _ = pelagos::test_support::parse_proc_stat(&text);
        }
        4 => {
            let (a, b) = text.split_once('\n').unwrap_or((&text, ""));
            let _ = pelagos::cgroups::resolve_path(Some(a), b);
            let _ = pelagos::container::validate_id(a);
        }
        5 => {
            let (mountinfo, subsystems) = text.split_once("\n\n").unwrap_or((&text, ""));
            let _ = pelagos::cgroups::fuzz_parse_hierarchies(mountinfo, subsystems);
        }
        6 => {
            let words: Vec<String> = text.split(',').map(str::to_string).collect();
            let _ = mount::parse_options(&words);
            let _ = pelagos::rootfs::options::parse(&words);
            for w in &words {
                let _ = pelagos::caps::parse_name(w);
            }
        }
        _ => {
            let _ = args::parse(text.split('\0'));
            #[cfg(not(test))]
            {
                let (stdout, stderr) = text.split_once('\0').unwrap_or((&text, ""));
                let _ = io::parse_stdio(stdout, stderr);
            }
        }
    }
}

/// A fuzz target: any bytes, no panic.
pub type Target = fn(&[u8]);

/// The targets by name, for the stable runner.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec_plan", spec_plan),
    ("start_input", start_input),
    ("helper_protocol", helper_protocol),
    ("host_text", host_text),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(target: &str, name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Seeds that fail the first parse would only exercise the parser's error paths.
    #[test]
    fn spec_seeds_are_valid_configs() {
        for name in [
            "default.json",
            "resources.json",
            "unified.json",
            "userns.json",
            "join.json",
            "seccomp.json",
            "mounts.json",
        ] {
            let spec = pelagos::spec::parse(&seed("spec_plan", name), Path::new(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if name != "join.json" {
                pelagos::spec::validate(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            spec_plan(&seed("spec_plan", name));
        }
        let spec =
            pelagos::spec::parse(&seed("spec_plan", "resources.json"), Path::new("r")).unwrap();
        let r = pelagos::cgroups::spec_resources(spec.linux().as_ref().unwrap());
        let f = fixture();
        assert_eq!(
            pelagos::cgroups::fuzz_translate(&r, Mode::Legacy, &f.v1, &f.v2).unwrap(),
            0,
            "every resource of the seed has its fixture file"
        );
        assert_eq!(
            std::fs::read_to_string(f.v2.join("cpu.weight")).unwrap(),
            "20"
        );
        // The only test that creates the fixture, so it can remove it.
        assert!(f.v2.starts_with(fixture_root()));
        cleanup();
        assert!(!fixture_root().exists());
    }

    #[test]
    fn start_seeds_decode_to_options() {
        let runc = options::detect_start_input(&seed("start_input", "legacy_runc"), "x", "y");
        let o = options::decode(options::runtime_options(&runc)).unwrap();
        assert!(o.no_pivot_root && o.io_uid == 1000);
        let boot =
            options::detect_start_input(&seed("start_input", "bootstrap"), "fuzz", "default");
        assert!(matches!(boot, options::StartInput::Bootstrap(_)));
        let o = options::decode(options::runtime_options(&boot)).unwrap();
        assert_eq!(o.shim_cgroup, "/shim");
        assert_eq!(o.log_level, Some(log::LevelFilter::Debug));
    }

    #[test]
    fn protocol_seed_carries_a_plan() {
        let data = seed("helper_protocol", "create");
        let (ours, theirs) = socketpair();
        std::fs::File::from(theirs).write_all(&data[1..]).unwrap();
        let mut chan = Channel::new(ours);
        let first = chan.recv::<ToHelper>().unwrap();
        assert!(matches!(
            first,
            Some(pelagos::test_support::protocol::Frame::Msg(ToHelper::Plan(_)))
        ));
    }

    #[test]
    fn config_path_without_body_is_not_read() {
        let any = |value: Vec<u8>| Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert!(reads_config_file(&any(b"\x12\x09/dev/zero".to_vec())));
        assert!(!reads_config_file(&any(
            b"\x12\x09/dev/zero\x1a\x01x".to_vec()
        )));
        assert!(!reads_config_file(&any(b"\x12\x7f".to_vec())));
    }
}
