//! cgroup v2 controller files and the v1 → v2 value conversions runc uses, so a spec written
//! for v1 (shares, blkio weights, memsw) means the same on a v2 host.

use std::collections::HashMap;
use std::path::Path;

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxHugepageLimit, LinuxMemory};

use super::fs::{read, write};
use super::CgroupError;

/// runc's ConvertCPUSharesToCgroupV2Value: maps shares [2, 262144] onto weight [1, 10000].
pub(crate) fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    1 + (shares.saturating_sub(2) * 9999) / 262142
}

/// runc's ConvertBlkIOToIOWeightValue: blkio weight [10, 1000] onto io.weight [1, 10000].
pub(crate) fn blkio_weight_to_io_weight(w: u16) -> u64 {
    if w == 0 {
        return 0;
    }
    1 + (u64::from(w).saturating_sub(10) * 9999) / 990
}

/// runc's ConvertMemorySwapToCgroupV2Value: the spec's swap is memory+swap (v1 memsw), v2's
/// memory.swap.max is swap alone. `None` leaves it as is, -1 is "max"; swap equal to the
/// limit is `Some(0)`: no swap at all.
pub(crate) fn swap_to_v2(swap: i64, limit: i64) -> Result<Option<i64>, CgroupError> {
    if limit == -1 && swap == 0 {
        return Ok(Some(-1));
    }
    match swap {
        0 => return Ok(None),
        -1 => return Ok(Some(-1)),
        _ => {}
    }
    let bad = |reason: &str| CgroupError::InvalidResource {
        resource: "memory.swap".into(),
        reason: reason.into(),
    };
    if limit == 0 || limit == -1 {
        return Err(bad("a swap limit needs a memory limit"));
    }
    if swap < limit {
        return Err(bad("memory+swap limit must be >= the memory limit"));
    }
    Ok(Some(swap - limit))
}

fn num(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

pub(crate) fn memory(dir: &Path, m: &LinuxMemory) -> Result<(), CgroupError> {
    let limit = m.limit().unwrap_or(0);
    let swap = swap_to_v2(m.swap().unwrap_or(0), limit)?;
    // Swap first: lowering memory.max while the old swap allowance is large is always
    // accepted, the opposite order is not meaningful in v2 but keeps parity with runc.
    if let Some(swap) = swap {
        if dir.join("memory.swap.max").exists() {
            write(dir, "memory.swap.max", &num(swap))?;
        } else if swap != -1 {
            return Err(CgroupError::Unsupported {
                resource: "memory.swap".into(),
                reason: "swap accounting is off on this host (no memory.swap.max)".into(),
            });
        }
    }
    if limit > 0 && m.check_before_update() == Some(true) {
        // v1 refuses a limit below usage (EBUSY); v2 would OOM-kill instead. runc 1.2 offers
        // this opt-in check to keep the v1 behaviour.
        let usage: i64 = read(dir, "memory.current")?.trim().parse().unwrap_or(0);
        if usage > limit {
            return Err(CgroupError::InvalidResource {
                resource: "memory.limit".into(),
                reason: format!("{limit} is below the cgroup's current usage {usage}"),
            });
        }
    }
    if limit != 0 {
        write(dir, "memory.max", &num(limit))?;
    }
    if let Some(r) = m.reservation().filter(|r| *r != 0) {
        write(dir, "memory.low", &num(r))?;
    }
    if m.swappiness().is_some() {
        log::debug!("memory.swappiness has no cgroup v2 equivalent; ignored");
    }
    if m.disable_oom_killer() == Some(true) {
        log::debug!("memory.disableOOMKiller has no cgroup v2 equivalent; ignored");
    }
    Ok(())
}

pub(crate) fn cpu(dir: &Path, c: &LinuxCpu) -> Result<(), CgroupError> {
    if c.realtime_runtime().is_some_and(|r| r != 0) || c.realtime_period().is_some_and(|p| p != 0) {
        return Err(CgroupError::Unsupported {
            resource: "cpu.realtimeRuntime".into(),
            reason: "realtime scheduling limits do not exist in cgroup v2".into(),
        });
    }
    if let Some(s) = c.shares().filter(|s| *s != 0) {
        write(dir, "cpu.weight", &shares_to_weight(s).to_string())?;
    }
    let quota = c.quota().unwrap_or(0);
    let period = c.period().unwrap_or(0);
    if quota != 0 || period != 0 {
        let mut v = if quota > 0 {
            quota.to_string()
        } else {
            "max".to_string()
        };
        if period != 0 {
            v.push(' ');
            v.push_str(&period.to_string());
        }
        write(dir, "cpu.max", &v)?;
    }
    if let Some(b) = c.burst() {
        write(dir, "cpu.max.burst", &b.to_string())?;
    }
    if let Some(i) = c.idle() {
        write(dir, "cpu.idle", &i.to_string())?;
    }
    Ok(())
}

pub(crate) fn io(dir: &Path, b: &LinuxBlockIo) -> Result<(), CgroupError> {
    // With BFQ, io.bfq.weight takes the blkio range as is; io.weight needs converting.
    let bfq = dir.join("io.bfq.weight").exists();
    if let Some(w) = b.weight().filter(|w| *w != 0) {
        if bfq {
            write(dir, "io.bfq.weight", &w.to_string())?;
        } else {
            write(
                dir,
                "io.weight",
                &format!("default {}", blkio_weight_to_io_weight(w)),
            )?;
        }
    }
    for d in b.weight_device().iter().flatten() {
        if let Some(w) = d.weight() {
            let (file, v) = if bfq {
                ("io.bfq.weight", u64::from(w))
            } else {
                ("io.weight", blkio_weight_to_io_weight(w))
            };
            write(dir, file, &format!("{}:{} {v}", d.major(), d.minor()))?;
        }
    }
    let throttles = [
        ("rbps", b.throttle_read_bps_device()),
        ("wbps", b.throttle_write_bps_device()),
        ("riops", b.throttle_read_iops_device()),
        ("wiops", b.throttle_write_iops_device()),
    ];
    for (key, devs) in throttles {
        for d in devs.iter().flatten() {
            // v1 uses 0 to lift a limit; v2 spells it "max".
            let rate = if d.rate() == 0 {
                "max".to_string()
            } else {
                d.rate().to_string()
            };
            write(
                dir,
                "io.max",
                &format!("{}:{} {key}={rate}", d.major(), d.minor()),
            )?;
        }
    }
    Ok(())
}

pub(crate) fn hugetlb(dir: &Path, limits: &[LinuxHugepageLimit]) -> Result<(), CgroupError> {
    for l in limits {
        let size = l.page_size();
        let file = format!("hugetlb.{size}.max");
        if !dir.join(&file).exists() {
            return Err(CgroupError::Unsupported {
                resource: format!("hugepageLimits[{size}]"),
                reason: format!("page size {size} is not offered by this host"),
            });
        }
        write(dir, &file, &l.limit().to_string())?;
        let rsvd = format!("hugetlb.{size}.rsvd.max");
        if dir.join(&rsvd).exists() {
            write(dir, &rsvd, &l.limit().to_string())?;
        }
    }
    Ok(())
}

pub(crate) fn unified(dir: &Path, map: &HashMap<String, String>) -> Result<(), CgroupError> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for key in keys {
        write(dir, key, &map[key]).map_err(|e| match e {
            CgroupError::Write { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                CgroupError::InvalidResource {
                    resource: format!("unified[{key}]"),
                    reason: "no such cgroup file (is its controller enabled?)".into(),
                }
            }
            e => e,
        })?;
    }
    Ok(())
}

/// Enables every controller `parent` offers for its children. A controller that cannot be
/// enabled (e.g. the parent holds processes) is skipped: the child just lacks it.
pub(crate) fn enable_subtree(parent: &Path) {
    let offered = super::fs::read_words(&parent.join("cgroup.controllers"));
    if offered.is_empty() {
        return;
    }
    let enabled = super::fs::read_words(&parent.join("cgroup.subtree_control"));
    let missing: Vec<&String> = offered.iter().filter(|c| !enabled.contains(c)).collect();
    if missing.is_empty() {
        return;
    }
    let all: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
    if write(parent, "cgroup.subtree_control", &all.join(" ")).is_ok() {
        return;
    }
    for c in missing {
        if let Err(e) = write(parent, "cgroup.subtree_control", &format!("+{c}")) {
            log::debug!("{e}");
        }
    }
}

/// Whether cgroup.events reports the cgroup frozen.
pub(crate) fn events_frozen(dir: &Path) -> Result<bool, CgroupError> {
    Ok(read(dir, "cgroup.events")?
        .lines()
        .any(|l| l.trim() == "frozen 1"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroups::fixture::Fixture;
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxThrottleDeviceBuilder,
        LinuxWeightDeviceBuilder,
    };

    #[test]
    fn memory_files() {
        let f = Fixture::empty("mem", &["memory.max", "memory.swap.max", "memory.low"]);
        let m = LinuxMemoryBuilder::default()
            .limit(100i64)
            .swap(300i64)
            .reservation(50i64)
            .build()
            .unwrap();
        memory(&f.0, &m).unwrap();
        assert_eq!(f.get("memory.max"), "100");
        assert_eq!(f.get("memory.swap.max"), "200");
        assert_eq!(f.get("memory.low"), "50");
        let unlimited = LinuxMemoryBuilder::default().limit(-1i64).build().unwrap();
        memory(&f.0, &unlimited).unwrap();
        assert_eq!(f.get("memory.max"), "max");
        assert_eq!(f.get("memory.swap.max"), "max");
    }

    #[test]
    fn swap_without_swap_accounting_is_named() {
        let f = Fixture::empty("noswap", &["memory.max"]);
        let m = LinuxMemoryBuilder::default()
            .limit(100i64)
            .swap(300i64)
            .build()
            .unwrap();
        let e = memory(&f.0, &m).unwrap_err();
        assert!(e.to_string().contains("memory.swap"), "{e}");
    }

    #[test]
    fn cpu_files() {
        let f = Fixture::empty("cpu", &["cpu.weight", "cpu.max", "cpu.idle"]);
        let c = LinuxCpuBuilder::default()
            .shares(1024u64)
            .quota(50_000i64)
            .period(100_000u64)
            .build()
            .unwrap();
        cpu(&f.0, &c).unwrap();
        assert_eq!(f.get("cpu.weight"), "39");
        assert_eq!(f.get("cpu.max"), "50000 100000");
        let unlimited = LinuxCpuBuilder::default().quota(-1i64).build().unwrap();
        cpu(&f.0, &unlimited).unwrap();
        assert_eq!(f.get("cpu.max"), "max");
        let rt = LinuxCpuBuilder::default()
            .realtime_runtime(1000i64)
            .build()
            .unwrap();
        assert!(cpu(&f.0, &rt).unwrap_err().to_string().contains("realtime"));
    }

    #[test]
    fn io_files() {
        let f = Fixture::empty("io", &["io.weight", "io.max"]);
        let b = LinuxBlockIoBuilder::default()
            .weight(500u16)
            .weight_device(vec![LinuxWeightDeviceBuilder::default()
                .major(8)
                .minor(0)
                .weight(1000u16)
                .build()
                .unwrap()])
            .throttle_read_bps_device(vec![LinuxThrottleDeviceBuilder::default()
                .major(8)
                .minor(0)
                .rate(1_048_576u64)
                .build()
                .unwrap()])
            .build()
            .unwrap();
        io(&f.0, &b).unwrap();
        // Each write replaces the fixture file; the kernel would merge them per device.
        assert_eq!(f.get("io.weight"), "8:0 10000");
        assert_eq!(f.get("io.max"), "8:0 rbps=1048576");
    }

    #[test]
    fn unified_keys_are_written_or_named() {
        let f = Fixture::empty("unified", &["memory.oom.group"]);
        let mut map = HashMap::new();
        map.insert("memory.oom.group".to_string(), "1".to_string());
        unified(&f.0, &map).unwrap();
        assert_eq!(f.get("memory.oom.group"), "1");
        map.insert("memory.nonexistent".to_string(), "1".to_string());
        let e = unified(&f.0, &map).unwrap_err();
        assert!(e.to_string().contains("memory.nonexistent"), "{e}");
    }

    #[test]
    fn shares_conversion_matches_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262144), 10000);
    }

    #[test]
    fn blkio_conversion_matches_runc() {
        assert_eq!(blkio_weight_to_io_weight(10), 1);
        assert_eq!(blkio_weight_to_io_weight(500), 4950);
        assert_eq!(blkio_weight_to_io_weight(1000), 10000);
    }

    #[test]
    fn swap_conversion() {
        assert_eq!(swap_to_v2(0, -1).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(0, 100).unwrap(), None);
        assert_eq!(swap_to_v2(100, 100).unwrap(), Some(0));
        assert_eq!(swap_to_v2(-1, 100).unwrap(), Some(-1));
        assert_eq!(swap_to_v2(300, 100).unwrap(), Some(200));
        assert!(swap_to_v2(50, 100).is_err());
        assert!(swap_to_v2(50, 0).is_err());
    }
}
