//! `linux.resources`: checks values before anything is created, then routes each resource to
//! the hierarchy that has its controller (v1 first on legacy and hybrid hosts, v2 otherwise).

use oci_spec::runtime::{
    LinuxDevice, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxResources,
};

use super::{v1, v2, Cgroup, CgroupError, Mode, Route};

fn invalid(resource: &str, reason: String) -> CgroupError {
    CgroupError::InvalidResource {
        resource: resource.into(),
        reason,
    }
}

/// Rejects values no kernel would accept, naming the resource; run before any mkdir so bad
/// input leaves nothing behind.
pub(crate) fn validate(r: &LinuxResources, mode: Mode) -> Result<(), CgroupError> {
    if let Some(m) = r.memory() {
        for (name, v) in [
            ("memory.limit", m.limit()),
            ("memory.reservation", m.reservation()),
            ("memory.swap", m.swap()),
        ] {
            if let Some(v) = v.filter(|v| *v < -1) {
                return Err(invalid(
                    name,
                    format!("{v} (must be -1 for unlimited or a byte count)"),
                ));
            }
        }
        if let (Some(l), Some(s)) = (m.limit(), m.swap()) {
            if l > 0 && s > 0 && s < l {
                return Err(invalid(
                    "memory.swap",
                    format!("memory+swap limit {s} is below the memory limit {l}"),
                ));
            }
        }
        if let Some(s) = m.swappiness().filter(|s| *s > 100) {
            return Err(invalid(
                "memory.swappiness",
                format!("{s} (range is 0-100)"),
            ));
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(s) = c.shares().filter(|s| *s != 0 && !(2..=262_144).contains(s)) {
            return Err(invalid("cpu.shares", format!("{s} (range is 2-262144)")));
        }
        if let Some(q) = c.quota().filter(|q| *q < -1 || (*q > 0 && *q < 1000)) {
            return Err(invalid(
                "cpu.quota",
                format!("{q} (must be -1 or at least 1000 microseconds)"),
            ));
        }
        if let Some(p) = c
            .period()
            .filter(|p| *p != 0 && !(1000..=1_000_000).contains(p))
        {
            return Err(invalid(
                "cpu.period",
                format!("{p} (range is 1000-1000000 microseconds)"),
            ));
        }
        if let Some(rt) = c.realtime_runtime().filter(|r| *r < -1) {
            return Err(invalid("cpu.realtimeRuntime", format!("{rt}")));
        }
        if let Some(i) = c.idle().filter(|i| *i != 0 && *i != 1) {
            return Err(invalid("cpu.idle", format!("{i} (must be 0 or 1)")));
        }
        for (name, v) in [("cpu.cpus", c.cpus()), ("cpu.mems", c.mems())] {
            if let Some(v) = v.as_deref() {
                check_cpu_list(name, v)?;
            }
        }
    }
    if let Some(b) = r.block_io() {
        let weight_ok = |w: u16| w == 0 || (10..=1000).contains(&w);
        for (name, w) in [
            ("blockIO.weight", b.weight()),
            ("blockIO.leafWeight", b.leaf_weight()),
        ] {
            if let Some(w) = w.filter(|w| !weight_ok(*w)) {
                return Err(invalid(name, format!("{w} (range is 10-1000)")));
            }
        }
        for d in b.weight_device().iter().flatten() {
            for w in [d.weight(), d.leaf_weight()].into_iter().flatten() {
                if !weight_ok(w) {
                    return Err(invalid(
                        "blockIO.weightDevice",
                        format!("{w} for {}:{} (range is 10-1000)", d.major(), d.minor()),
                    ));
                }
            }
        }
    }
    for l in r.hugepage_limits().iter().flatten() {
        if !valid_page_size(l.page_size()) {
            return Err(invalid(
                "hugepageLimits.pageSize",
                format!("{:?} (expected e.g. \"2MB\")", l.page_size()),
            ));
        }
    }
    for d in r.devices().iter().flatten() {
        let access = d.access().as_deref().unwrap_or("");
        if !access.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
            return Err(invalid(
                "devices.access",
                format!("{access:?} (only r, w and m)"),
            ));
        }
        if matches!(d.typ(), Some(LinuxDeviceType::P) | Some(LinuxDeviceType::U)) {
            return Err(invalid(
                "devices.type",
                format!("{:?} (the device cgroup knows a, b and c)", d.typ()),
            ));
        }
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<&String> = u.keys().collect();
        keys.sort();
        for key in keys {
            if mode != Mode::Unified {
                return Err(CgroupError::Unsupported {
                    resource: format!("unified[{key}]"),
                    reason: format!(
                        "the unified map needs a cgroup v2 host, this host is {}",
                        mode.name()
                    ),
                });
            }
            if key.is_empty() || key.contains('/') || key.starts_with('.') {
                return Err(invalid(
                    &format!("unified[{key}]"),
                    "not a cgroup file name".into(),
                ));
            }
        }
    }
    Ok(())
}

fn check_cpu_list(name: &str, v: &str) -> Result<(), CgroupError> {
    let ok = v.split(',').all(|part| {
        let part = part.trim();
        part.is_empty()
            || part
                .split_once('-')
                .map(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok())
                .unwrap_or_else(|| part.parse::<u32>().is_ok())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            name,
            format!("{v:?} (expected a list like \"0-2,4\")"),
        ))
    }
}

fn valid_page_size(s: &str) -> bool {
    let Some(num) = s
        .strip_suffix("KB")
        .or_else(|| s.strip_suffix("MB"))
        .or_else(|| s.strip_suffix("GB"))
    else {
        return false;
    };
    !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit())
}

fn rule(
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut b = LinuxDeviceCgroupBuilder::default()
        .allow(true)
        .typ(typ)
        .access(access);
    if let Some(m) = major {
        b = b.major(m);
    }
    if let Some(m) = minor {
        b = b.minor(m);
    }
    b.build()
        .expect("every field of a device rule has a default")
}

/// The devices every container may use, appended after the spec's rules as runc does
/// (libcontainer/specconv AllowedDevices): mknod of anything, the standard character devices,
/// ptys and /dev/net/tun.
pub fn default_device_rules() -> Vec<LinuxDeviceCgroup> {
    use LinuxDeviceType::{B, C};
    vec![
        rule(C, None, None, "m"),
        rule(B, None, None, "m"),
        rule(C, Some(1), Some(3), "rwm"),    // null
        rule(C, Some(1), Some(8), "rwm"),    // random
        rule(C, Some(1), Some(7), "rwm"),    // full
        rule(C, Some(5), Some(0), "rwm"),    // tty
        rule(C, Some(1), Some(5), "rwm"),    // zero
        rule(C, Some(1), Some(9), "rwm"),    // urandom
        rule(C, Some(136), None, "rwm"),     // pts
        rule(C, Some(5), Some(2), "rwm"),    // ptmx
        rule(C, Some(10), Some(200), "rwm"), // net/tun
    ]
}

/// Allow rules for the devices `linux.devices` creates in the container: runc lets the
/// container use every device it was given.
pub fn device_allow_rules(devices: &[LinuxDevice]) -> Vec<LinuxDeviceCgroup> {
    devices
        .iter()
        .filter(|d| {
            matches!(
                d.typ(),
                LinuxDeviceType::B | LinuxDeviceType::C | LinuxDeviceType::U
            )
        })
        .map(|d| {
            let typ = match d.typ() {
                LinuxDeviceType::B => LinuxDeviceType::B,
                _ => LinuxDeviceType::C,
            };
            rule(typ, Some(d.major()), Some(d.minor()), "rwm")
        })
        .collect()
}

/// `linux.resources` with allow rules for `linux.devices` appended: what the runtime should pass
/// to [`Cgroup::create`] so the devices it creates are usable.
pub fn spec_resources(linux: &oci_spec::runtime::Linux) -> LinuxResources {
    let mut r = linux.resources().clone().unwrap_or_default();
    let extra = device_allow_rules(linux.devices().as_deref().unwrap_or(&[]));
    if !extra.is_empty() {
        let mut devs = r.devices().clone().unwrap_or_default();
        devs.extend(extra);
        r.set_devices(Some(devs));
    }
    r
}

/// Whether `r` sets a resource whose controller the host has only in its cgroup2 mount (on
/// hybrid hosts, e.g. hugetlb when it is not mounted as a v1 hierarchy).
pub(crate) fn wants_v2_only_controller(r: &LinuxResources, h: &super::fs::Hierarchies) -> bool {
    let v2_only = |v1: &str, v2: &str| {
        h.v1_mount(v1).is_none() && h.unified_controllers.iter().any(|c| c == v2)
    };
    let cpu = r.cpu().as_ref();
    [
        (
            "hugetlb",
            "hugetlb",
            r.hugepage_limits().as_ref().is_some_and(|l| !l.is_empty()),
        ),
        ("memory", "memory", r.memory().is_some()),
        ("pids", "pids", r.pids().is_some()),
        ("cpu", "cpu", cpu.is_some()),
        (
            "cpuset",
            "cpuset",
            cpu.is_some_and(|c| c.cpus().is_some() || c.mems().is_some()),
        ),
        ("blkio", "io", r.block_io().is_some()),
    ]
    .into_iter()
    .any(|(v1, v2, set)| set && v2_only(v1, v2))
}

fn missing(resource: &str, controller: &str) -> CgroupError {
    CgroupError::Unsupported {
        resource: resource.into(),
        reason: format!("the {controller} controller is not available on this host"),
    }
}

/// What [`apply`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// A new cgroup: device rules too.
    Create,
    /// New values for a live cgroup; device rules are the create's (see `Cgroup::update`).
    Update,
    /// A create on plain-file fixture directories (fuzzing): device rules are checked and, for
    /// cgroup v2, compiled, but no program is attached.
    Fixture,
}

/// Writes every resource into its controller.
pub(crate) fn apply(cg: &Cgroup, r: &LinuxResources, pass: Pass) -> Result<(), CgroupError> {
    if pass != Pass::Update {
        apply_devices(cg, r.devices().as_deref().unwrap_or(&[]), pass)?;
    }
    if let Some(m) = r.memory() {
        let set = m.limit().is_some_and(|v| v != 0)
            || m.reservation().is_some_and(|v| v != 0)
            || m.swap().is_some_and(|v| v != 0)
            || m.swappiness().is_some()
            || m.disable_oom_killer() == Some(true);
        match cg.route("memory") {
            Some(Route::V1(d)) => v1::memory(d, m)?,
            Some(Route::V2(d)) => v2::memory(d, m)?,
            None if set => return Err(missing("memory", "memory")),
            None => {}
        }
    }
    if let Some(c) = r.cpu() {
        let cpu_set = c.shares().is_some_and(|v| v != 0)
            || c.quota().is_some_and(|v| v != 0)
            || c.period().is_some_and(|v| v != 0)
            || c.burst().is_some()
            || c.idle().is_some()
            || c.realtime_runtime().is_some_and(|v| v != 0)
            || c.realtime_period().is_some_and(|v| v != 0);
        match cg.route("cpu") {
            Some(Route::V1(d)) => v1::cpu(d, c)?,
            Some(Route::V2(d)) => v2::cpu(d, c)?,
            None if cpu_set => return Err(missing("cpu", "cpu")),
            None => {}
        }
        let cpuset_set = c.cpus().as_deref().is_some_and(|s| !s.is_empty())
            || c.mems().as_deref().is_some_and(|s| !s.is_empty());
        match cg.route("cpuset") {
            // The file names are the same in both versions.
            Some(Route::V1(d)) | Some(Route::V2(d)) => v1::cpuset(d, c)?,
            None if cpuset_set => return Err(missing("cpu.cpus", "cpuset")),
            None => {}
        }
    }
    if let Some(p) = r.pids() {
        match cg.route("pids") {
            Some(Route::V1(d)) | Some(Route::V2(d)) => v1::pids(d, p.limit())?,
            None if p.limit() != 0 => return Err(missing("pids.limit", "pids")),
            None => {}
        }
    }
    if let Some(b) = r.block_io() {
        let set = b.weight().is_some_and(|w| w != 0)
            || b.leaf_weight().is_some_and(|w| w != 0)
            || [
                b.weight_device().as_ref().map(Vec::len),
                b.throttle_read_bps_device().as_ref().map(Vec::len),
                b.throttle_write_bps_device().as_ref().map(Vec::len),
                b.throttle_read_iops_device().as_ref().map(Vec::len),
                b.throttle_write_iops_device().as_ref().map(Vec::len),
            ]
            .into_iter()
            .flatten()
            .any(|n| n > 0);
        let route = match cg.route("blkio") {
            Some(r) => Some(r),
            None => cg.route("io"),
        };
        match route {
            Some(Route::V1(d)) => v1::blkio(d, b)?,
            Some(Route::V2(d)) => v2::io(d, b)?,
            None if set => return Err(missing("blockIO", "blkio/io")),
            None => {}
        }
    }
    if let Some(h) = r.hugepage_limits().as_deref().filter(|h| !h.is_empty()) {
        match cg.route("hugetlb") {
            Some(Route::V1(d)) => v1::hugetlb(d, h)?,
            Some(Route::V2(d)) => v2::hugetlb(d, h)?,
            None => return Err(missing("hugepageLimits", "hugetlb")),
        }
    }
    if let Some(n) = r.network().as_ref().filter(|_| cg.mode() == Mode::Unified) {
        // cgroup v2 has no net_cls / net_prio; runc ignores them there (network policy is for
        // eBPF socket programs).
        if n.class_id().is_some() || n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            log::warn!(
                "network.classID and network.priorities have no cgroup v2 equivalent; ignored"
            );
        }
    } else if let Some(n) = r.network() {
        if n.class_id().is_some() {
            match cg.route("net_cls") {
                Some(Route::V1(d)) => v1::net_cls(d, n)?,
                _ => return Err(missing("network.classID", "net_cls")),
            }
        }
        if n.priorities().as_ref().is_some_and(|p| !p.is_empty()) {
            match cg.route("net_prio") {
                Some(Route::V1(d)) => v1::net_prio(d, n)?,
                _ => return Err(missing("network.priorities", "net_prio")),
            }
        }
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        log::warn!("rdma limits are not supported by pelagos; ignored");
    }
    if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
        match cg.unified_dir() {
            Some(d) if cg.mode() == Mode::Unified => v2::unified(d, u)?,
            _ => {
                return Err(CgroupError::Unsupported {
                    resource: "unified".into(),
                    reason: format!("this host is {}, not cgroup v2", cg.mode().name()),
                })
            }
        }
    }
    Ok(())
}

fn apply_devices(
    cg: &Cgroup,
    spec_rules: &[LinuxDeviceCgroup],
    pass: Pass,
) -> Result<(), CgroupError> {
    let mut rules = spec_rules.to_vec();
    rules.extend(default_device_rules());
    match (cg.route("devices"), cg.unified_dir()) {
        (Some(Route::V1(d)), _) => v1::devices(d, &rules),
        // No v1 devices controller (pure cgroup v2, or a hybrid host without it): the kernel
        // checks device access with the cgroup's eBPF programs.
        (_, Some(_)) if pass == Pass::Fixture => {
            super::devfilter::Emulated::from_rules(&rules).map(|e| drop(e.program()))
        }
        (_, Some(dir)) => super::devfilter::install(dir, &rules, cg.systemd_unit().is_some()),
        (_, None) => {
            log::warn!(
                "no devices controller and no cgroup2 mount: device rules of {} not enforced",
                cg.path()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxDeviceBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder,
    };

    fn mem(limit: i64, swap: Option<i64>) -> LinuxResources {
        let mut m = LinuxMemoryBuilder::default().limit(limit);
        if let Some(s) = swap {
            m = m.swap(s);
        }
        LinuxResourcesBuilder::default()
            .memory(m.build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn memory_values_checked() {
        assert!(validate(&mem(64 << 20, None), Mode::Hybrid).is_ok());
        assert!(validate(&mem(-1, None), Mode::Hybrid).is_ok());
        let e = validate(&mem(-5, None), Mode::Hybrid).unwrap_err();
        assert!(e.to_string().contains("memory.limit"), "{e}");
        let e = validate(&mem(100 << 20, Some(50 << 20)), Mode::Unified).unwrap_err();
        assert!(e.to_string().contains("memory.swap"), "{e}");
    }

    #[test]
    fn cpu_values_checked() {
        let r = |c| LinuxResourcesBuilder::default().cpu(c).build().unwrap();
        let ok = LinuxCpuBuilder::default()
            .shares(1024u64)
            .quota(50_000i64)
            .period(100_000u64)
            .cpus("0-1,3")
            .build()
            .unwrap();
        assert!(validate(&r(ok), Mode::Legacy).is_ok());
        let bad = LinuxCpuBuilder::default().shares(1u64).build().unwrap();
        assert!(validate(&r(bad), Mode::Legacy)
            .unwrap_err()
            .to_string()
            .contains("cpu.shares"));
        let bad = LinuxCpuBuilder::default().cpus("0-x").build().unwrap();
        assert!(validate(&r(bad), Mode::Legacy)
            .unwrap_err()
            .to_string()
            .contains("cpu.cpus"));
    }

    #[test]
    fn unified_needs_v2() {
        let r = LinuxResourcesBuilder::default()
            .unified(
                [("memory.high".to_string(), "1M".to_string())]
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()
            .unwrap();
        let e = validate(&r, Mode::Hybrid).unwrap_err();
        assert!(e.to_string().contains("memory.high"), "{e}");
        assert!(validate(&r, Mode::Unified).is_ok());
    }

    #[test]
    fn device_rules_render_like_the_kernel_expects() {
        let all = LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap();
        assert_eq!(v1::device_rule_string(&all), "a *:* rwm");
        let d = default_device_rules();
        assert!(d.iter().any(|r| v1::device_rule_string(r) == "c 1:3 rwm"));
        assert!(d.iter().any(|r| v1::device_rule_string(r) == "c 136:* rwm"));
        let fuse = LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .build()
            .unwrap();
        let rules = device_allow_rules(&[fuse]);
        assert_eq!(v1::device_rule_string(&rules[0]), "c 10:229 rwm");
    }

    #[test]
    fn page_sizes() {
        assert!(valid_page_size("2MB"));
        assert!(valid_page_size("1GB"));
        assert!(!valid_page_size("2M"));
        assert!(!valid_page_size("MB"));
    }
}
