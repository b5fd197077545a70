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
        write(dir, file, &super::resources::device_rule_string(r))?;
    }
    Ok(())
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
