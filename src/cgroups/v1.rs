//! cgroup v1 controller files: one function per controller, each writing into that
//! controller's directory of the container's cgroup.

use std::path::Path;

use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxDeviceCgroup, LinuxHugepageLimit, LinuxMemory, LinuxNetwork,
};

use super::fs::{read, write};
use super::CgroupError;

pub(crate) fn memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().unwrap_or(0);
    let mut swap = m.swap().unwrap_or(0);
    let has_memsw = dir.join("memory.memsw.limit_in_bytes").exists();
    // As runc: an unlimited memory request with no swap value lifts the swap limit too, or
    // the old memsw limit would still cap the container.
    if limit == -1 && swap == 0 && has_memsw {
        swap = -1;
    }
    if swap != 0 && !has_memsw {
        return Err(CgroupError::Unsupported {
            resource: "memory.swap".into(),
            reason: "swap accounting is off on this host (no memory.memsw.limit_in_bytes; \
                     boot with swapaccount=1)"
                .into(),
        });
    }
    if limit != 0 && swap != 0 {
        // The kernel requires memory.limit <= memsw.limit at every step, so the order of the
        // two writes depends on whether the limits grow or shrink.
        let cur: u64 = read(dir, "memory.limit_in_bytes")?
            .trim()
            .parse()
            .unwrap_or(u64::MAX);
        if swap == -1 || cur < swap as u64 {
            set_memsw(dir, swap)?;
            set_memory(dir, limit)?;
        } else {
            set_memory(dir, limit)?;
            set_memsw(dir, swap)?;
        }
    } else {
        if limit != 0 {
            set_memory(dir, limit)?;
        }
        if swap != 0 {
            set_memsw(dir, swap)?;
        }
    }
    if let Some(r) = m.reservation().filter(|r| *r != 0) {
        write(dir, "memory.soft_limit_in_bytes", &r.to_string())?;
    }
    if let Some(s) = m.swappiness() {
        write(dir, "memory.swappiness", &s.to_string())?;
    }
    if m.disable_oom_killer() == Some(true) {
        write(dir, "memory.oom_control", "1")?;
    }
    if m.kernel().is_some() || m.kernel_tcp().is_some() {
        log::debug!("memory.kernel and memory.kernelTCP are ignored (deprecated by the kernel)");
    }
    Ok(())
}

fn set_memory(dir: &Path, limit: i64) -> Result<(), CgroupError> {
    write(dir, "memory.limit_in_bytes", &limit.to_string()).map_err(|e| match e {
        CgroupError::Write { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
            let usage = read(dir, "memory.usage_in_bytes").unwrap_or_default();
            CgroupError::InvalidResource {
                resource: "memory.limit".into(),
                reason: format!(
                    "{limit} is below the cgroup's current usage {}",
                    usage.trim()
                ),
            }
        }
        e => e,
    })
}

fn set_memsw(dir: &Path, swap: i64) -> Result<(), CgroupError> {
    write(dir, "memory.memsw.limit_in_bytes", &swap.to_string())
}

pub(crate) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(shares) = c.shares().filter(|s| *s != 0) {
        write(dir, "cpu.shares", &shares.to_string())?;
        // The kernel clamps silently; runc reports the clamp as an error, so do we.
        let got: u64 = read(dir, "cpu.shares")?.trim().parse().unwrap_or(shares);
        if got != shares {
            return Err(CgroupError::InvalidResource {
                resource: "cpu.shares".into(),
                reason: format!("{shares} is out of the kernel's range (it kept {got})"),
            });
        }
    }
    let period = c.period().filter(|p| *p != 0);
    let quota = c.quota().filter(|q| *q != 0);
    if let Some(p) = period {
        if let Err(e) = write(dir, "cpu.cfs_period_us", &p.to_string()) {
            // A shorter period can be refused while the old quota exceeds it: set the quota
            // first, then retry.
            match quota {
                Some(q) => {
                    write(dir, "cpu.cfs_quota_us", &q.to_string())?;
                    write(dir, "cpu.cfs_period_us", &p.to_string())?;
                }
                None => return Err(e),
            }
        }
    }
    if let Some(q) = quota {
        write(dir, "cpu.cfs_quota_us", &q.to_string())?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.cfs_burst_us", &b.to_string())?;
    }
    if let Some(p) = c.realtime_period().filter(|p| *p != 0) {
        write(dir, "cpu.rt_period_us", &p.to_string())?;
    }
    if let Some(r) = c.realtime_runtime().filter(|r| *r != 0) {
        write(dir, "cpu.rt_runtime_us", &r.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

pub(crate) fn cpuset(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.cpus", cpus)?;
    }
    if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
        write(dir, "cpuset.mems", mems)?;
    }
    Ok(())
}

/// A new v1 cpuset cgroup starts with empty cpus and mems, and a task cannot join it until
/// both are set: copy them from the parent.
pub(crate) fn cpuset_inherit(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for file in ["cpuset.cpus", "cpuset.mems"] {
        if read(dir, file)?.trim().is_empty() {
            let v = read(parent, file)?;
            write(dir, file, v.trim())?;
        }
    }
    Ok(())
}

pub(crate) fn pids(dir: &Path, limit: i64) -> Result<(), CgroupError> {
    if limit == 0 {
        return Ok(());
    }
    let v = if limit > 0 {
        limit.to_string()
    } else {
        "max".into()
    };
    write(dir, "pids.max", &v)
}

pub(crate) fn blkio(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // CFQ is gone from current kernels; BFQ exposes the same weights under blkio.bfq.*.
    let (weight_file, weight_dev_file) = if dir.join("blkio.weight").exists() {
        ("blkio.weight", "blkio.weight_device")
    } else {
        ("blkio.bfq.weight", "blkio.bfq.weight_device")
    };
    let weights_missing = |what: &str| CgroupError::Unsupported {
        resource: format!("blockIO.{what}"),
        reason: "no io scheduler with weights (neither blkio.weight nor blkio.bfq.weight exists)"
            .into(),
    };
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        if !dir.join(weight_file).exists() {
            return Err(weights_missing("weight"));
        }
        write(dir, weight_file, &w.to_string())?;
    }
    if let Some(w) = b.leaf_weight().filter(|w| *w != 0) {
        write(dir, "blkio.leaf_weight", &w.to_string())?;
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            if !dir.join(weight_dev_file).exists() {
                return Err(weights_missing("weightDevice"));
            }
            write(
                dir,
                weight_dev_file,
                &format!("{}:{} {w}", d.major(), d.minor()),
            )?;
        }
        if let Some(w) = d.leaf_weight() {
            write(
                dir,
                "blkio.leaf_weight_device",
                &format!("{}:{} {w}", d.major(), d.minor()),
            )?;
        }
    }
    let throttles = [
        (
            "blkio.throttle.read_bps_device",
            b.throttle_read_bps_device(),
        ),
        (
            "blkio.throttle.write_bps_device",
            b.throttle_write_bps_device(),
        ),
        (
            "blkio.throttle.read_iops_device",
            b.throttle_read_iops_device(),
        ),
        (
            "blkio.throttle.write_iops_device",
            b.throttle_write_iops_device(),
        ),
    ];
    for (file, devs) in throttles {
        for d in devs.iter().flatten() {
            write(
                dir,
                file,
                &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
            )?;
        }
    }
    Ok(())
}

pub(crate) fn hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for l in limits {
        let size = l.page_size();
        let file = format!("hugetlb.{size}.limit_in_bytes");
        if !dir.join(&file).exists() {
            return Err(CgroupError::Unsupported {
                resource: format!("hugepageLimits[{size}]"),
                reason: format!("page size {size} is not offered by this host"),
            });
        }
        write(dir, &file, &l.limit().to_string())?;
        let rsvd = format!("hugetlb.{size}.rsvd.limit_in_bytes");
        if dir.join(&rsvd).exists() {
            write(dir, &rsvd, &l.limit().to_string())?;
        }
    }
    Ok(())
}

/// Applies device rules the way runc does on v1: start from deny-all, then each rule in order.
pub(crate) fn devices(dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<(), CgroupError> {
    write(dir, "devices.deny", "a")?;
    for r in rules {
        let file = if r.allow() {
            "devices.allow"
        } else {
            "devices.deny"
        };
        write(dir, file, &device_rule_string(r))?;
    }
    Ok(())
}

/// `type major:minor access` as devices.allow/deny take it; absent or negative numbers are `*`.
pub(crate) fn device_rule_string(r: &LinuxDeviceCgroup) -> String {
    let num = |n: Option<i64>| match n {
        Some(n) if n >= 0 => n.to_string(),
        _ => "*".into(),
    };
    let access = r
        .access()
        .as_deref()
        .filter(|a| !a.is_empty())
        .unwrap_or("rwm");
    format!(
        "{} {}:{} {access}",
        r.typ().unwrap_or_default().as_str(),
        num(r.major()),
        num(r.minor())
    )
}

pub(crate) fn net_cls(dir: &Path, n: &LinuxNetwork) -> Result<(), CgroupError> {
    if let Some(id) = n.class_id() {
        write(dir, "net_cls.classid", &id.to_string())?;
    }
    Ok(())
}

pub(crate) fn net_prio(dir: &Path, n: &LinuxNetwork) -> Result<(), CgroupError> {
    for p in n.priorities().iter().flatten() {
        write(
            dir,
            "net_prio.ifpriomap",
            &format!("{} {}", p.name(), p.priority()),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::fixture::Fixture;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
        LinuxHugepageLimitBuilder, LinuxInterfacePriorityBuilder, LinuxMemoryBuilder,
        LinuxNetworkBuilder, LinuxThrottleDeviceBuilder, LinuxWeightDeviceBuilder,
    };

    fn memory_of(limit: i64, swap: Option<i64>) -> LinuxMemory {
        let mut b = LinuxMemoryBuilder::default().limit(limit);
        if let Some(s) = swap {
            b = b.swap(s);
        }
        b.build().unwrap()
    }

    const MEMORY_FILES: [&str; 5] = [
        "memory.limit_in_bytes",
        "memory.memsw.limit_in_bytes",
        "memory.soft_limit_in_bytes",
        "memory.swappiness",
        "memory.oom_control",
    ];

    #[test]
    fn memory_and_swap_are_written_in_the_order_the_kernel_accepts() {
        // Growing: memsw first, or the kernel refuses memory.limit > memsw.limit.
        let f = Fixture::new("grow", &[("memory.limit_in_bytes", "100\n")]);
        std::fs::write(f.0.join("memory.memsw.limit_in_bytes"), "200\n").unwrap();
        memory(&f.0, &memory_of(1000, Some(2000))).unwrap();
        assert_eq!(
            f.writes(),
            [
                "memory.memsw.limit_in_bytes=2000",
                "memory.limit_in_bytes=1000"
            ]
        );
        // Shrinking: memory first.
        let f = Fixture::new("shrink", &[("memory.limit_in_bytes", "5000\n")]);
        std::fs::write(f.0.join("memory.memsw.limit_in_bytes"), "9000\n").unwrap();
        memory(&f.0, &memory_of(1000, Some(2000))).unwrap();
        assert_eq!(
            f.writes(),
            [
                "memory.limit_in_bytes=1000",
                "memory.memsw.limit_in_bytes=2000"
            ]
        );
    }

    #[test]
    fn unlimited_memory_lifts_the_swap_limit_too() {
        let f = Fixture::empty("unlimited", &MEMORY_FILES);
        std::fs::write(f.0.join("memory.limit_in_bytes"), "100").unwrap();
        memory(&f.0, &memory_of(-1, None)).unwrap();
        assert_eq!(f.get("memory.limit_in_bytes"), "-1");
        assert_eq!(f.get("memory.memsw.limit_in_bytes"), "-1");
    }

    #[test]
    fn memory_knobs_land_in_their_files() {
        let f = Fixture::empty("knobs", &MEMORY_FILES);
        let m = LinuxMemoryBuilder::default()
            .limit(4096i64)
            .reservation(1024i64)
            .swappiness(10u64)
            .disable_oom_killer(true)
            .build()
            .unwrap();
        memory(&f.0, &m).unwrap();
        assert_eq!(f.get("memory.limit_in_bytes"), "4096");
        assert_eq!(f.get("memory.soft_limit_in_bytes"), "1024");
        assert_eq!(f.get("memory.swappiness"), "10");
        assert_eq!(f.get("memory.oom_control"), "1");
        assert_eq!(f.get("memory.memsw.limit_in_bytes"), "");
    }

    #[test]
    fn swap_without_swap_accounting_is_named() {
        let f = Fixture::empty("noswap", &["memory.limit_in_bytes"]);
        let e = memory(&f.0, &memory_of(100, Some(300))).unwrap_err();
        assert!(e.to_string().contains("swapaccount=1"), "{e}");
        assert!(f.writes().is_empty(), "{:?}", f.writes());
    }

    #[test]
    fn cpu_files() {
        let f = Fixture::empty(
            "cpu",
            &[
                "cpu.shares",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "cpu.idle",
            ],
        );
        let c = LinuxCpuBuilder::default()
            .shares(512u64)
            .quota(50_000i64)
            .period(100_000u64)
            .idle(1i64)
            .build()
            .unwrap();
        cpu(&f.0, &c).unwrap();
        assert_eq!(f.get("cpu.shares"), "512");
        assert_eq!(f.get("cpu.cfs_period_us"), "100000");
        assert_eq!(f.get("cpu.cfs_quota_us"), "50000");
        assert_eq!(f.get("cpu.idle"), "1");
        // Zero means "not set" in the spec's v1 fields: nothing is written.
        let f = Fixture::empty("cpu0", &["cpu.shares"]);
        let zero = LinuxCpuBuilder::default().shares(0u64).build().unwrap();
        cpu(&f.0, &zero).unwrap();
        assert!(f.writes().is_empty(), "{:?}", f.writes());
    }

    #[test]
    fn a_refused_period_is_retried_after_the_quota() {
        // No cpu.cfs_period_us yet: the first write fails, as a kernel refusing a period
        // shorter than the current quota would; the quota goes first, then the period.
        let f = Fixture::empty("period", &["cpu.cfs_quota_us"]);
        let c = LinuxCpuBuilder::default()
            .quota(10_000i64)
            .period(20_000u64)
            .build()
            .unwrap();
        let e = cpu(&f.0, &c).unwrap_err();
        assert!(e.to_string().contains("cpu.cfs_period_us"), "{e}");
        assert_eq!(f.writes(), ["cpu.cfs_quota_us=10000"]);
    }

    #[test]
    fn cpuset_inherits_the_parents_cpus_and_mems() {
        let parent = Fixture::new(
            "cpuset",
            &[("cpuset.cpus", "0-1\n"), ("cpuset.mems", "0\n")],
        );
        let child = parent.0.join("child");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(child.join("cpuset.cpus"), "\n").unwrap();
        std::fs::write(child.join("cpuset.mems"), "0\n").unwrap();
        cpuset_inherit(&child).unwrap();
        assert_eq!(
            std::fs::read_to_string(child.join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        assert_eq!(parent.writes(), ["cpuset.cpus=0-1"]);
        let c = LinuxCpuBuilder::default()
            .cpus("1")
            .mems("")
            .build()
            .unwrap();
        cpuset(&child, &c).unwrap();
        assert_eq!(
            std::fs::read_to_string(child.join("cpuset.cpus")).unwrap(),
            "1"
        );
        assert_eq!(
            std::fs::read_to_string(child.join("cpuset.mems")).unwrap(),
            "0\n"
        );
    }

    #[test]
    fn pids_limit() {
        let f = Fixture::empty("pids", &["pids.max"]);
        pids(&f.0, 0).unwrap();
        assert!(f.writes().is_empty());
        pids(&f.0, 42).unwrap();
        assert_eq!(f.get("pids.max"), "42");
        pids(&f.0, -1).unwrap();
        assert_eq!(f.get("pids.max"), "max");
    }

    fn throttle(rate: u64) -> Vec<oci_spec::runtime::LinuxThrottleDevice> {
        vec![LinuxThrottleDeviceBuilder::default()
            .major(8)
            .minor(16)
            .rate(rate)
            .build()
            .unwrap()]
    }

    #[test]
    fn blkio_weights_fall_back_to_bfq_and_throttles_are_per_device() {
        let f = Fixture::empty(
            "bfq",
            &[
                "blkio.bfq.weight",
                "blkio.bfq.weight_device",
                "blkio.throttle.read_bps_device",
                "blkio.throttle.write_iops_device",
            ],
        );
        let b = LinuxBlockIoBuilder::default()
            .weight(300u16)
            .weight_device(vec![LinuxWeightDeviceBuilder::default()
                .major(8)
                .minor(0)
                .weight(700u16)
                .build()
                .unwrap()])
            .throttle_read_bps_device(throttle(1_048_576))
            .throttle_write_iops_device(throttle(100))
            .build()
            .unwrap();
        blkio(&f.0, &b).unwrap();
        assert_eq!(f.get("blkio.bfq.weight"), "300");
        assert_eq!(f.get("blkio.bfq.weight_device"), "8:0 700");
        assert_eq!(f.get("blkio.throttle.read_bps_device"), "8:16 1048576");
        assert_eq!(f.get("blkio.throttle.write_iops_device"), "8:16 100");
    }

    #[test]
    fn blkio_weight_without_a_weighted_scheduler_is_named() {
        let f = Fixture::empty("noweight", &["blkio.throttle.read_bps_device"]);
        let b = LinuxBlockIoBuilder::default()
            .weight(300u16)
            .build()
            .unwrap();
        let e = blkio(&f.0, &b).unwrap_err();
        assert!(e.to_string().contains("blockIO.weight"), "{e}");
        assert!(e.to_string().contains("blkio.bfq.weight"), "{e}");
    }

    #[test]
    fn hugetlb_limits_and_reservations() {
        let f = Fixture::empty(
            "hugetlb",
            &[
                "hugetlb.2MB.limit_in_bytes",
                "hugetlb.2MB.rsvd.limit_in_bytes",
                "hugetlb.1GB.limit_in_bytes",
            ],
        );
        let limit = |size: &str, l: u64| {
            LinuxHugepageLimitBuilder::default()
                .page_size(size)
                .limit(l as i64)
                .build()
                .unwrap()
        };
        hugetlb(&f.0, &[limit("2MB", 4 << 20), limit("1GB", 0)]).unwrap();
        assert_eq!(f.get("hugetlb.2MB.limit_in_bytes"), "4194304");
        assert_eq!(f.get("hugetlb.2MB.rsvd.limit_in_bytes"), "4194304");
        assert_eq!(f.get("hugetlb.1GB.limit_in_bytes"), "0");
        let e = hugetlb(&f.0, &[limit("64KB", 1)]).unwrap_err();
        assert!(e.to_string().contains("64KB"), "{e}");
    }

    #[test]
    fn devices_start_from_deny_all_then_follow_the_rules_in_order() {
        let f = Fixture::empty("devices", &["devices.allow", "devices.deny"]);
        let rule = |allow: bool, typ: LinuxDeviceType, major: Option<i64>, minor: Option<i64>| {
            let mut b = LinuxDeviceCgroupBuilder::default()
                .allow(allow)
                .typ(typ)
                .access("rwm");
            if let Some(m) = major {
                b = b.major(m);
            }
            if let Some(m) = minor {
                b = b.minor(m);
            }
            b.build().unwrap()
        };
        let rules = [
            rule(true, LinuxDeviceType::C, Some(1), Some(3)),
            rule(false, LinuxDeviceType::C, Some(1), Some(3)),
            rule(true, LinuxDeviceType::B, None, None),
        ];
        devices(&f.0, &rules).unwrap();
        assert_eq!(
            f.writes(),
            [
                "devices.deny=a",
                "devices.allow=c 1:3 rwm",
                "devices.deny=c 1:3 rwm",
                "devices.allow=b *:* rwm",
            ]
        );
    }

    #[test]
    fn network_class_and_priorities() {
        let f = Fixture::empty("net", &["net_cls.classid", "net_prio.ifpriomap"]);
        let n = LinuxNetworkBuilder::default()
            .class_id(0x100001u32)
            .priorities(vec![
                LinuxInterfacePriorityBuilder::default()
                    .name("eth0")
                    .priority(5u32)
                    .build()
                    .unwrap(),
                LinuxInterfacePriorityBuilder::default()
                    .name("lo")
                    .priority(1u32)
                    .build()
                    .unwrap(),
            ])
            .build()
            .unwrap();
        net_cls(&f.0, &n).unwrap();
        net_prio(&f.0, &n).unwrap();
        assert_eq!(
            f.writes(),
            [
                "net_cls.classid=1048577",
                "net_prio.ifpriomap=eth0 5",
                "net_prio.ifpriomap=lo 1",
            ]
        );
    }
}
