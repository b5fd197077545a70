//! containerd's cgroup metrics read from cgroupfs. The structs mirror the protobuf messages
//! `io.containerd.cgroups.v1.Metrics` and `io.containerd.cgroups.v2.Metrics` (containerd/cgroups
//! `stats/v1/metrics.proto`, `cgroup2/stats/metrics.proto`) field for field, so the shim can
//! copy them into the protos one to one. Values come out as containerd computes them (cpuacct
//! ticks in nanoseconds, "max" as 0). A missing file reads as zero: a controller the host lacks
//! just leaves its message empty.

use std::collections::HashMap;
use std::path::Path;

use super::fs::read_opt;
use super::{Cgroup, Mode, Route};

/// The metrics the Task Stats RPC returns: v1 on legacy and hybrid hosts, v2 on unified ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Stats {
    V1(Box<V1Metrics>),
    V2(Box<V2Metrics>),
}

/// io.containerd.cgroups.v1.Metrics
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V1Metrics {
    pub hugetlb: Vec<HugetlbStat>,
    pub pids: PidsStat,
    pub cpu: CpuStat,
    pub memory: MemoryStat,
    pub blkio: BlkIoStat,
    pub memory_oom_control: MemoryOomControl,
}

/// v1 HugetlbStat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HugetlbStat {
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
    pub pagesize: String,
}

/// PidsStat (the same message in v1 and v2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PidsStat {
    pub current: u64,
    pub limit: u64,
}

/// v1 CPUStat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuStat {
    pub usage: CpuUsage,
    pub throttling: Throttle,
}

/// v1 CPUUsage, in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuUsage {
    pub total: u64,
    pub kernel: u64,
    pub user: u64,
    pub per_cpu: Vec<u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Throttle {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_time: u64,
}

/// v1 MemoryStat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryStat {
    pub cache: u64,
    pub rss: u64,
    pub rss_huge: u64,
    pub mapped_file: u64,
    pub dirty: u64,
    pub writeback: u64,
    pub pg_pg_in: u64,
    pub pg_pg_out: u64,
    pub pg_fault: u64,
    pub pg_maj_fault: u64,
    pub inactive_anon: u64,
    pub active_anon: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub unevictable: u64,
    pub hierarchical_memory_limit: u64,
    pub hierarchical_swap_limit: u64,
    pub total_cache: u64,
    pub total_rss: u64,
    pub total_rss_huge: u64,
    pub total_mapped_file: u64,
    pub total_dirty: u64,
    pub total_writeback: u64,
    pub total_pg_pg_in: u64,
    pub total_pg_pg_out: u64,
    pub total_pg_fault: u64,
    pub total_pg_maj_fault: u64,
    pub total_inactive_anon: u64,
    pub total_active_anon: u64,
    pub total_inactive_file: u64,
    pub total_active_file: u64,
    pub total_unevictable: u64,
    pub usage: MemoryEntry,
    pub swap: MemoryEntry,
    pub kernel: MemoryEntry,
    pub kernel_tcp: MemoryEntry,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryEntry {
    pub limit: u64,
    pub usage: u64,
    pub max: u64,
    pub failcnt: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryOomControl {
    pub oom_kill_disable: u64,
    pub under_oom: u64,
    pub oom_kill: u64,
}

/// v1 BlkIOStat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlkIoStat {
    pub io_service_bytes_recursive: Vec<BlkIoEntry>,
    pub io_serviced_recursive: Vec<BlkIoEntry>,
    pub io_queued_recursive: Vec<BlkIoEntry>,
    pub io_service_time_recursive: Vec<BlkIoEntry>,
    pub io_wait_time_recursive: Vec<BlkIoEntry>,
    pub io_merged_recursive: Vec<BlkIoEntry>,
    pub io_time_recursive: Vec<BlkIoEntry>,
    pub sectors_recursive: Vec<BlkIoEntry>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BlkIoEntry {
    pub op: String,
    pub device: String,
    pub major: u64,
    pub minor: u64,
    pub value: u64,
}

/// io.containerd.cgroups.v2.Metrics
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V2Metrics {
    pub pids: PidsStat,
    pub cpu: V2CpuStat,
    pub memory: V2MemoryStat,
    pub io: IoStat,
    pub hugetlb: Vec<HugeTlbStat>,
    pub memory_events: MemoryEvents,
}

/// v2 CPUStat (cpu.stat).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V2CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// v2 MemoryStat (memory.stat plus usage and limits).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct V2MemoryStat {
    pub anon: u64,
    pub file: u64,
    pub kernel_stack: u64,
    pub slab: u64,
    pub sock: u64,
    pub shmem: u64,
    pub file_mapped: u64,
    pub file_dirty: u64,
    pub file_writeback: u64,
    pub anon_thp: u64,
    pub inactive_anon: u64,
    pub active_anon: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub unevictable: u64,
    pub slab_reclaimable: u64,
    pub slab_unreclaimable: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub workingset_refault: u64,
    pub workingset_activate: u64,
    pub workingset_nodereclaim: u64,
    pub pgrefill: u64,
    pub pgscan: u64,
    pub pgsteal: u64,
    pub pgactivate: u64,
    pub pgdeactivate: u64,
    pub pglazyfree: u64,
    pub pglazyfreed: u64,
    pub thp_fault_alloc: u64,
    pub thp_collapse_alloc: u64,
    pub usage: u64,
    pub usage_limit: u64,
    pub swap_usage: u64,
    pub swap_limit: u64,
    pub max_usage: u64,
    pub swap_max_usage: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryEvents {
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoStat {
    pub usage: Vec<IoEntry>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct IoEntry {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// v2 HugeTlbStat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HugeTlbStat {
    pub current: u64,
    pub max: u64,
    pub pagesize: String,
}

pub(crate) fn read(cg: &Cgroup) -> Stats {
    if cg.mode() == Mode::Unified {
        Stats::V2(Box::new(cg.unified_dir().map(read_v2).unwrap_or_default()))
    } else {
        Stats::V1(Box::new(read_v1(cg)))
    }
}

/// A number from a cgroup file; "max" and anything unparsable are 0, as in containerd.
fn num(s: &str) -> u64 {
    s.trim().parse().unwrap_or(0)
}

fn file_num(dir: &Path, file: &str) -> u64 {
    read_opt(&dir.join(file)).map(|s| num(&s)).unwrap_or(0)
}

/// `key value` lines (memory.stat, cpu.stat, memory.events, ...).
fn flat_keyed(dir: &Path, file: &str) -> HashMap<String, u64> {
    read_opt(&dir.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), num(v)))
        })
        .collect()
}

fn pids(dir: &Path) -> PidsStat {
    PidsStat {
        current: file_num(dir, "pids.current"),
        limit: file_num(dir, "pids.max"),
    }
}

/// Hugepage sizes the host offers, spelled as cgroup file names spell them ("2MB").
fn hugepage_sizes() -> Vec<String> {
    let mut sizes: Vec<(u64, String)> = std::fs::read_dir("/sys/kernel/mm/hugepages")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let kb: u64 = name
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            Some((kb, page_size_name(kb)))
        })
        .collect();
    sizes.sort();
    sizes.into_iter().map(|(_, n)| n).collect()
}

fn page_size_name(kb: u64) -> String {
    if kb.is_multiple_of(1 << 20) {
        format!("{}GB", kb >> 20)
    } else if kb.is_multiple_of(1024) {
        format!("{}MB", kb >> 10)
    } else {
        format!("{kb}KB")
    }
}

fn read_v1(cg: &Cgroup) -> V1Metrics {
    let mut m = V1Metrics::default();
    if let Some(Route::V1(d)) = cg.route("pids") {
        m.pids = pids(d);
    }
    if let Some(d) = cg.v1_dir("cpuacct") {
        m.cpu.usage = cpuacct(d);
    }
    if let Some(d) = cg.v1_dir("cpu") {
        let s = flat_keyed(d, "cpu.stat");
        m.cpu.throttling = Throttle {
            periods: s.get("nr_periods").copied().unwrap_or(0),
            throttled_periods: s.get("nr_throttled").copied().unwrap_or(0),
            throttled_time: s.get("throttled_time").copied().unwrap_or(0),
        };
    }
    if let Some(d) = cg.v1_dir("memory") {
        m.memory = memory_v1(d);
        let oc = flat_keyed(d, "memory.oom_control");
        m.memory_oom_control = MemoryOomControl {
            oom_kill_disable: oc.get("oom_kill_disable").copied().unwrap_or(0),
            under_oom: oc.get("under_oom").copied().unwrap_or(0),
            oom_kill: oc.get("oom_kill").copied().unwrap_or(0),
        };
    }
    if let Some(d) = cg.v1_dir("blkio") {
        m.blkio = blkio(d);
    }
    if let Some(Route::V1(d)) = cg.route("hugetlb") {
        m.hugetlb = hugepage_sizes()
            .into_iter()
            .map(|size| HugetlbStat {
                usage: file_num(d, &format!("hugetlb.{size}.usage_in_bytes")),
                max: file_num(d, &format!("hugetlb.{size}.max_usage_in_bytes")),
                failcnt: file_num(d, &format!("hugetlb.{size}.failcnt")),
                pagesize: size,
            })
            .collect();
    }
    m
}

fn cpuacct(dir: &Path) -> CpuUsage {
    // cpuacct.stat counts USER_HZ ticks; containerd reports nanoseconds.
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as u64 } else { 100 };
    let st = flat_keyed(dir, "cpuacct.stat");
    let ns = |k: &str| {
        st.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            / ticks
    };
    CpuUsage {
        total: file_num(dir, "cpuacct.usage"),
        kernel: ns("system"),
        user: ns("user"),
        per_cpu: read_opt(&dir.join("cpuacct.usage_percpu"))
            .unwrap_or_default()
            .split_whitespace()
            .map(num)
            .collect(),
    }
}

fn memory_v1(d: &Path) -> MemoryStat {
    let s = flat_keyed(d, "memory.stat");
    let g = |k: &str| s.get(k).copied().unwrap_or(0);
    let entry = |prefix: &str| MemoryEntry {
        limit: file_num(d, &format!("{prefix}.limit_in_bytes")),
        usage: file_num(d, &format!("{prefix}.usage_in_bytes")),
        max: file_num(d, &format!("{prefix}.max_usage_in_bytes")),
        failcnt: file_num(d, &format!("{prefix}.failcnt")),
    };
    MemoryStat {
        cache: g("cache"),
        rss: g("rss"),
        rss_huge: g("rss_huge"),
        mapped_file: g("mapped_file"),
        dirty: g("dirty"),
        writeback: g("writeback"),
        pg_pg_in: g("pgpgin"),
        pg_pg_out: g("pgpgout"),
        pg_fault: g("pgfault"),
        pg_maj_fault: g("pgmajfault"),
        inactive_anon: g("inactive_anon"),
        active_anon: g("active_anon"),
        inactive_file: g("inactive_file"),
        active_file: g("active_file"),
        unevictable: g("unevictable"),
        hierarchical_memory_limit: g("hierarchical_memory_limit"),
        hierarchical_swap_limit: g("hierarchical_memsw_limit"),
        total_cache: g("total_cache"),
        total_rss: g("total_rss"),
        total_rss_huge: g("total_rss_huge"),
        total_mapped_file: g("total_mapped_file"),
        total_dirty: g("total_dirty"),
        total_writeback: g("total_writeback"),
        total_pg_pg_in: g("total_pgpgin"),
        total_pg_pg_out: g("total_pgpgout"),
        total_pg_fault: g("total_pgfault"),
        total_pg_maj_fault: g("total_pgmajfault"),
        total_inactive_anon: g("total_inactive_anon"),
        total_active_anon: g("total_active_anon"),
        total_inactive_file: g("total_inactive_file"),
        total_active_file: g("total_active_file"),
        total_unevictable: g("total_unevictable"),
        usage: entry("memory"),
        swap: entry("memory.memsw"),
        kernel: entry("memory.kmem"),
        kernel_tcp: entry("memory.kmem.tcp"),
    }
}

fn blkio(d: &Path) -> BlkIoStat {
    let mut names = DeviceNames::default();
    let mut entries = |file: &str| blkio_entries(d, file, &mut names);
    let mut s = BlkIoStat {
        io_service_bytes_recursive: entries("blkio.io_service_bytes_recursive"),
        io_serviced_recursive: entries("blkio.io_serviced_recursive"),
        io_queued_recursive: entries("blkio.io_queued_recursive"),
        io_service_time_recursive: entries("blkio.io_service_time_recursive"),
        io_wait_time_recursive: entries("blkio.io_wait_time_recursive"),
        io_merged_recursive: entries("blkio.io_merged_recursive"),
        io_time_recursive: entries("blkio.time_recursive"),
        sectors_recursive: entries("blkio.sectors_recursive"),
    };
    // Without CFQ (every current kernel) only the throttle counters exist; containerd falls
    // back to them the same way.
    if s.io_serviced_recursive.is_empty() {
        s.io_service_bytes_recursive = entries("blkio.throttle.io_service_bytes_recursive");
        s.io_serviced_recursive = entries("blkio.throttle.io_serviced_recursive");
    }
    s
}

/// `major:minor [op] value` lines; the `Total` line is dropped.
fn blkio_entries(d: &Path, file: &str, names: &mut DeviceNames) -> Vec<BlkIoEntry> {
    read_opt(&d.join(file))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dev, op, value) = match f.as_slice() {
                [dev, op, v] => (*dev, op.to_string(), num(v)),
                [dev, v] => (*dev, String::new(), num(v)),
                _ => return None,
            };
            let (maj, min) = dev.split_once(':')?;
            let (major, minor) = (maj.parse().ok()?, min.parse().ok()?);
            Some(BlkIoEntry {
                op,
                device: names.get(major, minor),
                major,
                minor,
                value,
            })
        })
        .collect()
}

/// major:minor → /dev path, from /sys/dev/block (cached per stats call).
#[derive(Default)]
struct DeviceNames(HashMap<(u64, u64), String>);

impl DeviceNames {
    fn get(&mut self, major: u64, minor: u64) -> String {
        self.0
            .entry((major, minor))
            .or_insert_with(|| {
                read_opt(Path::new(&format!("/sys/dev/block/{major}:{minor}/uevent")))
                    .unwrap_or_default()
                    .lines()
                    .find_map(|l| l.strip_prefix("DEVNAME="))
                    .map(|n| format!("/dev/{n}"))
                    .unwrap_or_default()
            })
            .clone()
    }
}

fn read_v2(d: &Path) -> V2Metrics {
    let cpu = flat_keyed(d, "cpu.stat");
    let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
    let ms = flat_keyed(d, "memory.stat");
    let g = |k: &str| ms.get(k).copied().unwrap_or(0);
    let ev = flat_keyed(d, "memory.events");
    let e = |k: &str| ev.get(k).copied().unwrap_or(0);
    V2Metrics {
        pids: pids(d),
        cpu: V2CpuStat {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
        },
        memory: V2MemoryStat {
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            anon_thp: g("anon_thp"),
            inactive_anon: g("inactive_anon"),
            active_anon: g("active_anon"),
            inactive_file: g("inactive_file"),
            active_file: g("active_file"),
            unevictable: g("unevictable"),
            slab_reclaimable: g("slab_reclaimable"),
            slab_unreclaimable: g("slab_unreclaimable"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            workingset_refault: g("workingset_refault_anon")
                + g("workingset_refault_file")
                + g("workingset_refault"),
            workingset_activate: g("workingset_activate_anon")
                + g("workingset_activate_file")
                + g("workingset_activate"),
            workingset_nodereclaim: g("workingset_nodereclaim"),
            pgrefill: g("pgrefill"),
            pgscan: g("pgscan"),
            pgsteal: g("pgsteal"),
            pgactivate: g("pgactivate"),
            pgdeactivate: g("pgdeactivate"),
            pglazyfree: g("pglazyfree"),
            pglazyfreed: g("pglazyfreed"),
            thp_fault_alloc: g("thp_fault_alloc"),
            thp_collapse_alloc: g("thp_collapse_alloc"),
            usage: file_num(d, "memory.current"),
            usage_limit: file_num(d, "memory.max"),
            swap_usage: file_num(d, "memory.swap.current"),
            swap_limit: file_num(d, "memory.swap.max"),
            max_usage: file_num(d, "memory.peak"),
            swap_max_usage: file_num(d, "memory.swap.peak"),
        },
        io: IoStat {
            usage: io_stat(&read_opt(&d.join("io.stat")).unwrap_or_default()),
        },
        hugetlb: hugepage_sizes()
            .into_iter()
            .filter(|size| d.join(format!("hugetlb.{size}.current")).exists())
            .map(|size| HugeTlbStat {
                current: file_num(d, &format!("hugetlb.{size}.current")),
                max: file_num(d, &format!("hugetlb.{size}.max")),
                pagesize: size,
            })
            .collect(),
        memory_events: MemoryEvents {
            low: e("low"),
            high: e("high"),
            max: e("max"),
            oom: e("oom"),
            oom_kill: e("oom_kill"),
        },
    }
}

/// io.stat: `8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0` per device.
fn io_stat(text: &str) -> Vec<IoEntry> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (maj, min) = f.next()?.split_once(':')?;
            let mut e = IoEntry {
                major: maj.parse().ok()?,
                minor: min.parse().ok()?,
                ..IoEntry::default()
            };
            for kv in f {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = num(v);
                match k {
                    "rbytes" => e.rbytes = v,
                    "wbytes" => e.wbytes = v,
                    "rios" => e.rios = v,
                    "wios" => e.wios = v,
                    _ => {}
                }
            }
            Some(e)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_stat_lines() {
        let e = io_stat("8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n");
        assert_eq!(
            e,
            vec![IoEntry {
                major: 8,
                minor: 0,
                rbytes: 4096,
                wbytes: 8192,
                rios: 1,
                wios: 2
            }]
        );
    }

    #[test]
    fn page_size_names() {
        assert_eq!(page_size_name(2048), "2MB");
        assert_eq!(page_size_name(1048576), "1GB");
        assert_eq!(page_size_name(64), "64KB");
    }

    #[test]
    fn v2_metrics_from_files() {
        let d = std::env::temp_dir().join(format!("pelagos-statfix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let files = [
            ("pids.current", "3\n"),
            ("pids.max", "max\n"),
            ("cpu.stat", "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 7\nnr_throttled 2\nthrottled_usec 90\n"),
            ("memory.stat", "anon 4096\nfile 8192\npgfault 11\nworkingset_refault_anon 1\nworkingset_refault_file 2\n"),
            ("memory.current", "12288\n"),
            ("memory.max", "1048576\n"),
            ("memory.events", "low 0\nhigh 1\nmax 2\noom 3\noom_kill 4\n"),
            ("io.stat", "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n"),
        ];
        for (f, v) in files {
            std::fs::write(d.join(f), v).unwrap();
        }
        let m = read_v2(&d);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(
            m.pids,
            PidsStat {
                current: 3,
                limit: 0
            }
        );
        assert_eq!(
            (m.cpu.usage_usec, m.cpu.nr_throttled, m.cpu.throttled_usec),
            (1500, 2, 90)
        );
        assert_eq!(
            (m.memory.anon, m.memory.file, m.memory.pgfault),
            (4096, 8192, 11)
        );
        assert_eq!(m.memory.workingset_refault, 3);
        assert_eq!(
            (m.memory.usage, m.memory.usage_limit, m.memory.swap_usage),
            (12288, 1048576, 0)
        );
        assert_eq!(m.memory_events.oom_kill, 4);
        assert_eq!(m.io.usage.len(), 1);
    }

    #[test]
    fn max_reads_as_zero() {
        assert_eq!(num("max\n"), 0);
        assert_eq!(num("42\n"), 42);
    }
}
