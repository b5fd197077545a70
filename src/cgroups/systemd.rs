//! The systemd cgroup driver (runc's `--systemd-cgroup`, containerd's `SystemdCgroup`): a
//! container's cgroup is a transient unit that systemd creates and owns, asked for over D-Bus
//! (`org.freedesktop.systemd1.Manager.StartTransientUnit`), so systemd knows it, keeps its
//! controllers enabled and re-applies the same limits when it reconfigures the tree.
//!
//! As runc: `cgroupsPath` is `slice:prefix:name`; the unit is the scope `<prefix>-<name>.scope`
//! in `slice` (`Slice=`, `Delegate=yes`, the container's first pid in `PIDs`), or the slice
//! `name` when it ends in `.slice` (`Wants=` its parent). Missing parent slices are made by
//! systemd itself, as for any unit naming them. The resources become unit properties (cgroup
//! v2: MemoryMax/Low/SwapMax, CPUWeight, CPUQuota, TasksMax, AllowedCPUs/MemoryNodes, IO
//! weight and limits, the unified map's known keys; v1: MemoryLimit, CPUShares, CPUQuota,
//! BlockIOWeight, TasksMax) and the device rules `DevicePolicy=strict` with a `DeviceAllow=`
//! list. The cgroup files are then written as with the cgroupfs driver, and on cgroup v2 the
//! runtime's own device program is attached beside systemd's (see `devfilter`): each must
//! allow an access. Update sets the properties (`SetUnitProperties`) and the files; destroy
//! stops the unit.
//!
//! As runc, the spec's `org.systemd.property.<Name>` annotations are more unit properties, set
//! after the ones above (so they win): the value in GVariant text (see [`crate::gvariant`]), a
//! `<name>Sec` number of seconds becoming `<name>USec`.

use std::time::{Duration, Instant};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::devfilter::Emulated;
use super::{v2, CgroupError, Mode};
use crate::dbus::{Connection, DbusError, Message, Value, SIGNAL};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
/// How long one D-Bus call, or one job, may take (runc waits 30 s for a unit too).
const TIMEOUT: Duration = Duration::from_secs(30);
/// sd_booted(3): systemd is PID 1 iff this directory exists.
pub const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// Whether systemd runs this host (sd_booted).
pub fn booted() -> bool {
    std::path::Path::new(SYSTEMD_RUN_DIR).is_dir()
}

/// Annotations naming unit properties (runc's spec conversion).
const PROPERTY_ANNOTATION: &str = "org.systemd.property.";

/// The unit a `slice:prefix:name` cgroups path names.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// `cri-containerd-<id>.scope`, or a slice.
    pub name: String,
    /// The parent slice (`system.slice` when the path gives none, `-.slice` for the root).
    pub slice: String,
    /// Where systemd puts its cgroup (see [`super::resolve_path`]).
    pub path: String,
    /// Properties from `org.systemd.property.*` annotations (see [`Unit::with_annotations`]).
    pub properties: Vec<(String, Value)>,
}

impl Unit {
    /// The unit of `cgroups_path` (`slice:prefix:name`); an empty path is
    /// `system.slice:pelagos:<id>`, as runc makes it `runc-<id>.scope`.
    pub fn of(cgroups_path: Option<&str>, id: &str) -> Result<Unit, CgroupError> {
        let raw = cgroups_path.unwrap_or("").trim();
        let raw = if raw.is_empty() {
            format!("system.slice:pelagos:{id}")
        } else {
            raw.to_string()
        };
        let parts: Vec<&str> = raw.split(':').collect();
        let [slice, prefix, name] = parts.as_slice() else {
            return Err(CgroupError::InvalidPath {
                path: raw.clone(),
                reason: "the systemd cgroup driver needs \"slice:prefix:name\"".into(),
            });
        };
        let path = super::resolve_path(Some(&raw), id)?;
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let name = if name.ends_with(".slice") {
            name.to_string()
        } else if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        Ok(Unit {
            name,
            slice: slice.to_string(),
            path,
            properties: Vec::new(),
        })
    }

    /// The unit with the properties the spec's `org.systemd.property.<Name>` annotations give,
    /// checked as runc does: a name of three or more ASCII letters, a value in GVariant text,
    /// a number for `<name>Sec` (seconds, set as `<name>USec`).
    pub fn with_annotations<'a>(
        mut self,
        annotations: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Unit, CgroupError> {
        let mut found: Vec<(&String, &String)> = annotations
            .into_iter()
            .filter(|(k, _)| k.starts_with(PROPERTY_ANNOTATION))
            .collect();
        found.sort();
        for (key, text) in found {
            let bad = |reason: String| CgroupError::Annotation {
                key: key.clone(),
                reason,
            };
            let name = &key[PROPERTY_ANNOTATION.len()..];
            if name.len() < 3 || !name.bytes().all(|c| c.is_ascii_alphabetic()) {
                return Err(bad(format!(
                    "{name:?} is not a property name (three or more ASCII letters)"
                )));
            }
            let mut value = crate::gvariant::parse(text).map_err(|e| bad(e.to_string()))?;
            let mut name = name.to_string();
            if let Some(stem) = name.strip_suffix("Sec") {
                if stem.ends_with(|c: char| c.is_ascii_lowercase()) {
                    value = seconds_to_usec(&value).ok_or_else(|| {
                        bad(format!("{text:?} is not a non-negative number of seconds"))
                    })?;
                    name = format!("{stem}USec");
                }
            }
            self.properties.push((name, value));
        }
        Ok(self)
    }

    fn is_slice(&self) -> bool {
        self.name.ends_with(".slice")
    }
}

fn failed(unit: &str, op: &'static str, source: DbusError) -> CgroupError {
    CgroupError::Systemd {
        unit: unit.to_string(),
        op,
        reason: source.to_string(),
    }
}

/// A connection to systemd's manager on the system bus.
struct Manager {
    bus: Connection,
    version: Option<u32>,
}

impl Manager {
    fn connect(unit: &str) -> Result<Manager, CgroupError> {
        if !booted() {
            return Err(CgroupError::Systemd {
                unit: unit.to_string(),
                op: "connect",
                reason: format!("systemd is not running on this host (no {SYSTEMD_RUN_DIR})"),
            });
        }
        let bus = Connection::system(TIMEOUT).map_err(|e| failed(unit, "connect", e))?;
        Ok(Manager { bus, version: None })
    }

    fn call(&mut self, member: &str, body: Vec<Value>) -> Result<Vec<Value>, DbusError> {
        self.bus.call(
            Message::method_call(SYSTEMD, MANAGER_PATH, MANAGER, member, body),
            TIMEOUT,
        )
    }

    /// systemd's version number (e.g. 252 of "252.38-1~deb12u1"); 0 when unknown.
    fn version(&mut self) -> u32 {
        if let Some(v) = self.version {
            return v;
        }
        let got = self.bus.call(
            Message::method_call(
                SYSTEMD,
                MANAGER_PATH,
                "org.freedesktop.DBus.Properties",
                "Get",
                vec![Value::str(MANAGER), Value::str("Version")],
            ),
            TIMEOUT,
        );
        let v = match got {
            Ok(body) => body
                .first()
                .and_then(|v| v.inner().as_str())
                .map(parse_version)
                .unwrap_or(0),
            Err(e) => {
                log::warn!("systemd version: {e}");
                0
            }
        };
        self.version = Some(v);
        v
    }

    /// Routes JobRemoved to this connection (before the job exists, so it cannot be missed).
    fn watch_jobs(&mut self) -> Result<(), DbusError> {
        self.bus.add_match(
            &format!(
                "type='signal',sender='{SYSTEMD}',path='{MANAGER_PATH}',\
                 interface='{MANAGER}',member='JobRemoved'"
            ),
            TIMEOUT,
        )?;
        self.call("Subscribe", Vec::new()).map(drop)
    }

    /// Waits for the job at `path` to finish; returns its result ("done", "failed", ...).
    fn wait_job(&mut self, path: &str) -> Result<String, DbusError> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let m = self.bus.next_signal(deadline)?;
            if m.kind != SIGNAL || m.member.as_deref() != Some("JobRemoved") {
                continue;
            }
            // JobRemoved(u id, o job, s unit, s result)
            if m.body.get(1).and_then(Value::as_str) == Some(path) {
                return Ok(m
                    .body
                    .get(3)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string());
            }
        }
    }

    fn reset_failed(&mut self, unit: &str) {
        match self.call("ResetFailedUnit", vec![Value::str(unit)]) {
            Ok(_) => {}
            Err(DbusError::Remote { name, .. }) if name.ends_with(".NoSuchUnit") => {}
            Err(e) => log::debug!("reset-failed {unit}: {e}"),
        }
    }
}

fn parse_version(s: &str) -> u32 {
    let digits: String = s
        .trim_start_matches(['"', 'v'])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or(0)
}

/// A number of seconds as systemd's microseconds (`t`).
fn seconds_to_usec(v: &Value) -> Option<Value> {
    const M: u64 = 1_000_000;
    let whole = |n: i64| u64::try_from(n).ok()?.checked_mul(M);
    let usec = match *v {
        Value::Byte(n) => whole(n.into()),
        Value::I16(n) => whole(n.into()),
        Value::U16(n) => whole(n.into()),
        Value::I32(n) => whole(n.into()),
        Value::U32(n) => whole(n.into()),
        Value::I64(n) => whole(n),
        Value::U64(n) => n.checked_mul(M),
        Value::Double(d) if d >= 0.0 && (d * M as f64) < u64::MAX as f64 => {
            Some((d * M as f64) as u64)
        }
        _ => None,
    }?;
    Some(Value::U64(usec))
}

fn prop(name: &str, v: Value) -> Value {
    Value::Struct(vec![Value::str(name), Value::variant(v)])
}

fn props(list: Vec<Value>) -> Value {
    Value::Array("(sv)".into(), list)
}

/// Starts the transient unit for a container whose first process is `pid`, with the resources
/// as properties, and waits until systemd has made it. On error no unit is left.
pub(crate) fn start(
    unit: &Unit,
    pid: i32,
    resources: &LinuxResources,
    devices: &[LinuxDeviceCgroup],
    mode: Mode,
) -> Result<(), CgroupError> {
    let mut m = Manager::connect(&unit.name)?;
    let version = m.version();
    let mut list = vec![prop(
        "Description",
        Value::str(format!("pelagos container {}", unit.name)),
    )];
    if unit.is_slice() {
        list.push(prop(
            "Wants",
            Value::Array("s".into(), vec![Value::str(&unit.slice)]),
        ));
    } else {
        list.push(prop("Slice", Value::str(&unit.slice)));
        list.push(prop(
            "PIDs",
            Value::Array("u".into(), vec![Value::U32(pid as u32)]),
        ));
        list.push(prop("Delegate", Value::Bool(true)));
    }
    let io_accounting = match mode {
        Mode::Unified => "IOAccounting",
        _ => "BlockIOAccounting",
    };
    for a in [
        "MemoryAccounting",
        "CPUAccounting",
        io_accounting,
        "TasksAccounting",
    ] {
        list.push(prop(a, Value::Bool(true)));
    }
    list.push(prop("DefaultDependencies", Value::Bool(false)));
    list.extend(device_properties(devices)?);
    list.extend(resource_properties(resources, mode, version)?);
    list.extend(unit.properties.iter().map(|(n, v)| prop(n, v.clone())));
    m.watch_jobs()
        .map_err(|e| failed(&unit.name, "subscribe", e))?;
    let aux = Value::Array("(sa(sv))".into(), Vec::new());
    let body = vec![
        Value::str(&unit.name),
        Value::str("replace"),
        props(list),
        aux,
    ];
    let job = match m.call("StartTransientUnit", body.clone()) {
        Err(DbusError::Remote { name, .. }) if name.ends_with(".UnitExists") => {
            // A failed unit of an earlier container with this name: let systemd drop it.
            m.reset_failed(&unit.name);
            m.call("StartTransientUnit", body)
        }
        other => other,
    }
    .map_err(|e| failed(&unit.name, "StartTransientUnit", e))?;
    let job = job
        .first()
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    match m.wait_job(&job) {
        Ok(r) if r == "done" => {
            log::debug!("systemd started {} in {}", unit.name, unit.slice);
            Ok(())
        }
        Ok(r) => {
            m.reset_failed(&unit.name);
            Err(CgroupError::Systemd {
                unit: unit.name.clone(),
                op: "start",
                reason: format!("the job ended \"{r}\""),
            })
        }
        Err(e) => {
            let _ = stop_with(&mut m, &unit.name);
            Err(failed(&unit.name, "wait for the start job", e))
        }
    }
}

/// Sets new resource values on the unit (runtime only, as runc). Device rules are left as
/// created, as by the cgroupfs driver's update.
pub(crate) fn set(unit: &str, resources: &LinuxResources, mode: Mode) -> Result<(), CgroupError> {
    let mut m = Manager::connect(unit)?;
    let version = m.version();
    let list = resource_properties(resources, mode, version)?;
    if list.is_empty() {
        return Ok(());
    }
    m.call(
        "SetUnitProperties",
        vec![Value::str(unit), Value::Bool(true), props(list)],
    )
    .map_err(|e| failed(unit, "SetUnitProperties", e))?;
    Ok(())
}

/// Stops the unit and waits for it to be gone; a unit already gone (a scope whose processes
/// all exited) is fine.
pub fn stop(unit: &str) -> Result<(), CgroupError> {
    let mut m = Manager::connect(unit)?;
    stop_with(&mut m, unit)
}

fn stop_with(m: &mut Manager, unit: &str) -> Result<(), CgroupError> {
    m.watch_jobs().map_err(|e| failed(unit, "subscribe", e))?;
    let job = match m.call("StopUnit", vec![Value::str(unit), Value::str("replace")]) {
        Ok(body) => body.first().and_then(Value::as_str).map(str::to_string),
        Err(DbusError::Remote { name, .. }) if name.ends_with(".NoSuchUnit") => None,
        Err(e) => return Err(failed(unit, "StopUnit", e)),
    };
    if let Some(job) = job {
        match m.wait_job(&job) {
            Ok(r) if r == "done" => {}
            Ok(r) => log::warn!("stop {unit}: the job ended \"{r}\""),
            Err(e) => return Err(failed(unit, "wait for the stop job", e)),
        }
    }
    m.reset_failed(unit);
    log::debug!("systemd stopped {unit}");
    Ok(())
}

fn infinity(v: i64) -> u64 {
    if v < 0 {
        u64::MAX
    } else {
        v as u64
    }
}

/// runc's CPUQuotaPerSecUSec: microseconds per second, rounded up to whole percent (systemd
/// keeps a percentage); `u64::MAX` is no quota.
fn quota_properties(quota: i64, period: u64, version: u32, out: &mut Vec<Value>) {
    if period != 0 {
        if version >= 242 {
            out.push(prop("CPUQuotaPeriodUSec", Value::U64(period)));
        } else {
            log::debug!("systemd {version} has no CPUQuotaPeriodUSec; cpu.max has the period");
        }
    }
    if quota != 0 || period != 0 {
        let mut per_sec = u64::MAX;
        if quota > 0 {
            let period = if period == 0 { 100_000 } else { period };
            per_sec = (quota as u64).saturating_mul(1_000_000) / period;
            if per_sec % 10_000 != 0 {
                per_sec = (per_sec / 10_000 + 1) * 10_000;
            }
        }
        out.push(prop("CPUQuotaPerSecUSec", Value::U64(per_sec)));
    }
}

/// A cpu or memory-node list ("0-2,4") as systemd's bitmask bytes, lowest cpu in the lowest
/// bit of the first byte.
fn list_to_bits(list: &str, what: &str) -> Result<Vec<u8>, CgroupError> {
    let bad = || CgroupError::InvalidResource {
        resource: what.into(),
        reason: format!("{list:?} is not a list of numbers and ranges"),
    };
    let mut bytes: Vec<u8> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo.parse().map_err(|_| bad())?;
        let hi: usize = hi.parse().map_err(|_| bad())?;
        if lo > hi || hi >= 1 << 16 {
            return Err(bad());
        }
        for n in lo..=hi {
            if bytes.len() <= n / 8 {
                bytes.resize(n / 8 + 1, 0);
            }
            bytes[n / 8] |= 1 << (n % 8);
        }
    }
    Ok(bytes)
}

fn bits(list: &str, name: &str, what: &str, version: u32) -> Result<Option<Value>, CgroupError> {
    if version < 244 {
        log::debug!("systemd {version} has no {name}; the cgroup file has it");
        return Ok(None);
    }
    let b = list_to_bits(list, what)?;
    Ok(Some(prop(
        name,
        Value::Array("y".into(), b.into_iter().map(Value::Byte).collect()),
    )))
}

/// The unit properties that express `r` (runc's genV1/genV2ResourcesProperties).
fn resource_properties(
    r: &LinuxResources,
    mode: Mode,
    version: u32,
) -> Result<Vec<Value>, CgroupError> {
    let mut out = Vec::new();
    let v2 = mode == Mode::Unified;
    if let Some(mem) = r.memory() {
        let limit = mem.limit().unwrap_or(0);
        if limit != 0 {
            let name = if v2 { "MemoryMax" } else { "MemoryLimit" };
            out.push(prop(name, Value::U64(infinity(limit))));
        }
        if v2 {
            if let Some(res) = mem.reservation().filter(|v| *v != 0) {
                out.push(prop("MemoryLow", Value::U64(infinity(res))));
            }
            if let Some(swap) = v2::swap_to_v2(mem.swap().unwrap_or(0), limit)? {
                out.push(prop("MemorySwapMax", Value::U64(infinity(swap))));
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        if let Some(shares) = cpu.shares().filter(|s| *s != 0) {
            match v2 {
                true => out.push(prop("CPUWeight", Value::U64(v2::shares_to_weight(shares)))),
                false => out.push(prop("CPUShares", Value::U64(shares))),
            }
        }
        quota_properties(
            cpu.quota().unwrap_or(0),
            cpu.period().unwrap_or(0),
            version,
            &mut out,
        );
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            out.extend(bits(cpus, "AllowedCPUs", "cpu.cpus", version)?);
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|c| !c.is_empty()) {
            out.extend(bits(mems, "AllowedMemoryNodes", "cpu.mems", version)?);
        }
    }
    if let Some(p) = r.pids() {
        let limit = p.limit();
        if limit > 0 || limit == -1 {
            out.push(prop("TasksMax", Value::U64(infinity(limit))));
        }
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight().filter(|w| *w != 0) {
            match v2 {
                true => out.push(prop(
                    "IOWeight",
                    Value::U64(v2::blkio_weight_to_io_weight(w)),
                )),
                false => out.push(prop("BlockIOWeight", Value::U64(u64::from(w)))),
            }
        }
        if v2 {
            let limits = [
                ("IOReadBandwidthMax", b.throttle_read_bps_device()),
                ("IOWriteBandwidthMax", b.throttle_write_bps_device()),
                ("IOReadIOPSMax", b.throttle_read_iops_device()),
                ("IOWriteIOPSMax", b.throttle_write_iops_device()),
            ];
            for (name, devs) in limits {
                let Some(devs) = devs.as_ref().filter(|d| !d.is_empty()) else {
                    continue;
                };
                let entries = devs
                    .iter()
                    .map(|d| {
                        Value::Struct(vec![
                            Value::str(format!("/dev/block/{}:{}", d.major(), d.minor())),
                            Value::U64(d.rate()),
                        ])
                    })
                    .collect();
                out.push(prop(name, Value::Array("(st)".into(), entries)));
            }
        }
    }
    if v2 {
        if let Some(map) = r.unified() {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for k in keys {
                out.extend(unified_property(k, map[k].trim(), version)?);
            }
        }
    }
    Ok(out)
}

/// runc's unifiedResToSystemdProps: the unified keys systemd has a property for; the others
/// reach only the cgroup files.
fn unified_property(key: &str, v: &str, version: u32) -> Result<Vec<Value>, CgroupError> {
    let bad = || CgroupError::InvalidResource {
        resource: format!("unified {key}"),
        reason: format!("{v:?} is not a valid value"),
    };
    let max_or = |v: &str| -> Result<u64, CgroupError> {
        match v {
            "max" => Ok(u64::MAX),
            n => n.parse().map_err(|_| bad()),
        }
    };
    let mut out = Vec::new();
    match key {
        "cpu.max" => {
            let f: Vec<&str> = v.split_whitespace().collect();
            let quota = match f.first() {
                Some(&"max") => 0,
                Some(q) => q.parse().map_err(|_| bad())?,
                None => return Err(bad()),
            };
            let period = match f.get(1) {
                Some(p) => p.parse().map_err(|_| bad())?,
                None => 100_000,
            };
            if f.len() > 2 {
                return Err(bad());
            }
            quota_properties(quota, period, version, &mut out);
        }
        "cpu.weight" => out.push(prop("CPUWeight", Value::U64(v.parse().map_err(|_| bad())?))),
        "cpuset.cpus" => out.extend(bits(v, "AllowedCPUs", key, version)?),
        "cpuset.mems" => out.extend(bits(v, "AllowedMemoryNodes", key, version)?),
        "memory.high" | "memory.low" | "memory.min" | "memory.max" | "memory.swap.max" => {
            let name = match key {
                "memory.high" => "MemoryHigh",
                "memory.low" => "MemoryLow",
                "memory.min" => "MemoryMin",
                "memory.max" => "MemoryMax",
                _ => "MemorySwapMax",
            };
            out.push(prop(name, Value::U64(max_or(v)?)));
        }
        "pids.max" => out.push(prop("TasksMax", Value::U64(max_or(v)?))),
        _ => log::debug!("unified {key}: no systemd property; written to the cgroup file only"),
    }
    Ok(out)
}

/// `DevicePolicy` and `DeviceAllow` for the rules (runc's devices.systemdProperties): a
/// default-allow list is `auto` with no entries (the runtime's own program still refuses
/// its exceptions), a default-deny list `strict` with one entry per allowed device or class.
fn device_properties(rules: &[LinuxDeviceCgroup]) -> Result<Vec<Value>, CgroupError> {
    let emulated = Emulated::from_rules(rules)?;
    if emulated.default_allow {
        return Ok(vec![
            prop("DevicePolicy", Value::str("auto")),
            prop("DeviceAllow", Value::Array("(ss)".into(), Vec::new())),
        ]);
    }
    let names = std::fs::read_to_string("/proc/devices").unwrap_or_default();
    let mut entries = Vec::new();
    for (block, major, minor, access) in emulated.allowed() {
        let class = if block { "block" } else { "char" };
        let what = match (major, minor) {
            (None, _) => format!("{class}-*"),
            (Some(maj), None) => match driver_name(&names, block, maj) {
                Some(n) => format!("{class}-{n}"),
                None => {
                    log::debug!("no driver has {class} major {maj}; not in DeviceAllow");
                    continue;
                }
            },
            (Some(maj), Some(min)) => format!("/dev/{class}/{maj}:{min}"),
        };
        entries.push(Value::Struct(vec![Value::str(what), Value::str(access)]));
    }
    Ok(vec![
        prop("DevicePolicy", Value::str("strict")),
        prop("DeviceAllow", Value::Array("(ss)".into(), entries)),
    ])
}

/// The driver name /proc/devices gives `major` in its character or block section.
fn driver_name(proc_devices: &str, block: bool, major: u32) -> Option<String> {
    let section = if block {
        "Block devices:"
    } else {
        "Character devices:"
    };
    proc_devices
        .split("\n\n")
        .find(|s| s.trim_start().starts_with(section))?
        .lines()
        .skip(1)
        .find_map(|l| {
            let (n, name) = l.trim().split_once(' ')?;
            (n.parse::<u32>().ok()? == major).then(|| name.trim().to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };

    fn names(props: &[Value]) -> Vec<(String, Value)> {
        props
            .iter()
            .map(|p| match p {
                Value::Struct(f) => (f[0].as_str().unwrap().to_string(), f[1].inner().clone()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn units_of_paths() {
        let u = Unit::of(
            Some("kubepods-besteffort-pod1.slice:cri-containerd:abc"),
            "abc",
        )
        .unwrap();
        assert_eq!(u.name, "cri-containerd-abc.scope");
        assert_eq!(u.slice, "kubepods-besteffort-pod1.slice");
        assert_eq!(
            Unit::of(None, "c1").unwrap(),
            Unit {
                name: "pelagos-c1.scope".into(),
                slice: "system.slice".into(),
                path: "/system.slice/pelagos-c1.scope".into(),
                properties: Vec::new(),
            }
        );
        assert_eq!(Unit::of(Some(":x:c1"), "c1").unwrap().slice, "system.slice");
        let s = Unit::of(Some("a.slice:x:a-b.slice"), "c1").unwrap();
        assert!(s.is_slice());
        let e = Unit::of(Some("/a/b"), "c1").unwrap_err().to_string();
        assert!(e.contains("slice:prefix:name"), "{e}");
        assert!(Unit::of(Some("nodot:x:c1"), "c1").is_err());
        assert!(Unit::of(Some("a.slice:x:../c1"), "c1").is_err());
    }

    #[test]
    fn property_annotations_as_runc_reads_them() {
        let ann = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let with =
            |pairs: &[(&str, &str)]| Unit::of(None, "c1").unwrap().with_annotations(&ann(pairs));
        let u = with(&[
            ("org.systemd.property.TimeoutStopUSec", "uint64 123456789"),
            ("org.systemd.property.CollectMode", "'inactive-or-failed'"),
            ("org.systemd.property.RuntimeMaxSec", "3600"),
            ("org.systemd.property.AccuracySec", "1.5"),
            ("io.kubernetes.cri.container-type", "container"),
        ])
        .unwrap();
        assert_eq!(
            u.properties,
            [
                ("AccuracyUSec".to_string(), Value::U64(1_500_000)),
                ("CollectMode".to_string(), Value::str("inactive-or-failed")),
                ("RuntimeMaxUSec".to_string(), Value::U64(3_600_000_000)),
                ("TimeoutStopUSec".to_string(), Value::U64(123_456_789)),
            ]
        );
        // "Sec" after a capital is no seconds suffix (runc's rule).
        let u = with(&[("org.systemd.property.FooSSec", "true")]).unwrap();
        assert_eq!(u.properties, [("FooSSec".to_string(), Value::Bool(true))]);
        for (key, value, want) in [
            ("org.systemd.property.Bad-Name", "1", "not a property name"),
            ("org.systemd.property.Xy", "1", "not a property name"),
            (
                "org.systemd.property.CollectMode",
                "inactive",
                "unknown word",
            ),
            (
                "org.systemd.property.RuntimeMaxSec",
                "'1h'",
                "number of seconds",
            ),
            (
                "org.systemd.property.RuntimeMaxSec",
                "-1",
                "number of seconds",
            ),
        ] {
            let e = with(&[(key, value)]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(want), "{key}={value}: {e}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("252.38-1~deb12u1"), 252);
        assert_eq!(parse_version("\"v245.4-1.fc32\""), 245);
        assert_eq!(parse_version("x"), 0);
    }

    #[test]
    fn cpu_bits() {
        assert_eq!(list_to_bits("0-2,4", "c").unwrap(), vec![0b1_0111]);
        assert_eq!(list_to_bits("9", "c").unwrap(), vec![0, 0b10]);
        assert!(list_to_bits("2-1", "c").is_err());
        assert!(list_to_bits("x", "c").is_err());
    }

    #[test]
    fn resources_as_runc_sets_them() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64 << 20)
                    .swap(128 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .shares(512u64)
                    .quota(25_000i64)
                    .period(100_000u64)
                    .cpus("0-1")
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(-1).build().unwrap())
            .build()
            .unwrap();
        let v2 = names(&resource_properties(&r, Mode::Unified, 252).unwrap());
        let get = |n: &str| v2.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("MemoryMax"), Some(Value::U64(64 << 20)));
        assert_eq!(get("MemorySwapMax"), Some(Value::U64(64 << 20)));
        assert_eq!(
            get("CPUWeight"),
            Some(Value::U64(v2::shares_to_weight(512)))
        );
        assert_eq!(get("CPUQuotaPerSecUSec"), Some(Value::U64(250_000)));
        assert_eq!(get("CPUQuotaPeriodUSec"), Some(Value::U64(100_000)));
        assert_eq!(get("TasksMax"), Some(Value::U64(u64::MAX)));
        assert_eq!(
            get("AllowedCPUs"),
            Some(Value::Array("y".into(), vec![Value::Byte(3)]))
        );
        let v1 = names(&resource_properties(&r, Mode::Legacy, 252).unwrap());
        assert!(v1
            .iter()
            .any(|(k, v)| k == "MemoryLimit" && *v == Value::U64(64 << 20)));
        assert!(v1
            .iter()
            .any(|(k, v)| k == "CPUShares" && *v == Value::U64(512)));
        assert!(!v1.iter().any(|(k, _)| k == "MemorySwapMax"));
        // systemd before 244 has no AllowedCPUs: the file alone carries it.
        let old = names(&resource_properties(&r, Mode::Unified, 243).unwrap());
        assert!(!old.iter().any(|(k, _)| k == "AllowedCPUs"));
    }

    #[test]
    fn quota_rounds_up_to_whole_percent() {
        let mut out = Vec::new();
        quota_properties(12_345, 100_000, 252, &mut out);
        assert_eq!(names(&out)[1].1, Value::U64(130_000));
        let mut out = Vec::new();
        quota_properties(-1, 0, 252, &mut out);
        assert_eq!(names(&out)[0].1, Value::U64(u64::MAX));
    }

    #[test]
    fn unified_keys() {
        let p = names(&unified_property("memory.high", "max", 252).unwrap());
        assert_eq!(p, vec![("MemoryHigh".into(), Value::U64(u64::MAX))]);
        let p = names(&unified_property("cpu.max", "50000 100000", 252).unwrap());
        assert!(p.contains(&("CPUQuotaPerSecUSec".into(), Value::U64(500_000))));
        assert!(unified_property("memory.oom.group", "1", 252)
            .unwrap()
            .is_empty());
        assert!(unified_property("pids.max", "many", 252).is_err());
    }

    #[test]
    fn device_lists() {
        let mut rules = vec![oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(false)
            .access("rwm")
            .build()
            .unwrap()];
        rules.extend(super::super::default_device_rules());
        let p = names(&device_properties(&rules).unwrap());
        assert_eq!(p[0], ("DevicePolicy".into(), Value::str("strict")));
        let Value::Array(_, allow) = &p[1].1 else {
            panic!("{p:?}")
        };
        let allow: Vec<(String, String)> = allow
            .iter()
            .map(|e| match e {
                Value::Struct(f) => (
                    f[0].as_str().unwrap().to_string(),
                    f[1].as_str().unwrap().to_string(),
                ),
                _ => panic!(),
            })
            .collect();
        assert!(
            allow.contains(&("/dev/char/1:3".into(), "rwm".into())),
            "{allow:?}"
        );
        assert!(allow.contains(&("char-*".into(), "m".into())), "{allow:?}");
        assert!(allow.contains(&("block-*".into(), "m".into())), "{allow:?}");
        let all = vec![oci_spec::runtime::LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .access("rwm")
            .build()
            .unwrap()];
        let p = names(&device_properties(&all).unwrap());
        assert_eq!(p[0].1, Value::str("auto"));
    }

    #[test]
    fn proc_devices_names() {
        let text = "Character devices:\n  1 mem\n136 pts\n\nBlock devices:\n  8 sd\n";
        assert_eq!(driver_name(text, false, 136).as_deref(), Some("pts"));
        assert_eq!(driver_name(text, true, 8).as_deref(), Some("sd"));
        assert_eq!(driver_name(text, true, 1), None);
    }

    #[test]
    fn without_systemd_the_error_says_so() {
        if booted() {
            return;
        }
        let u = Unit::of(None, "c1").unwrap();
        let e = start(&u, 1, &LinuxResources::default(), &[], Mode::Unified)
            .unwrap_err()
            .to_string();
        assert!(e.contains("systemd is not running"), "{e}");
    }
}
