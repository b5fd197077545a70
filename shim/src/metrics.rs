//! The Stats RPC's payload: the core's cgroup metrics copied into containerd's
//! `io.containerd.cgroups.v1.Metrics` / `io.containerd.cgroups.v2.Metrics` messages, wrapped in
//! an `Any` whose type URL is the message name (what `ctr task metrics` decodes).

use containerd_shim_protos::cgroups::metrics as p1;
use containerd_shim_protos::cgroups_v2::metrics as p2;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use pelagos::cgroups::stats as s;
use pelagos::cgroups::stats::Stats;

pub fn to_any(stats: &Stats) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    use crate::any::pack;
    match stats {
        Stats::V1(m) => pack(&v1(m)),
        Stats::V2(m) => pack(&v2(m)),
    }
}

fn some<T>(v: T) -> MessageField<T> {
    MessageField::some(v)
}

pub fn v1(m: &s::V1Metrics) -> p1::Metrics {
    let entry = |e: &s::MemoryEntry| p1::MemoryEntry {
        limit: e.limit,
        usage: e.usage,
        max: e.max,
        failcnt: e.failcnt,
        ..Default::default()
    };
    let blk = |v: &[s::BlkIoEntry]| -> Vec<p1::BlkIOEntry> {
        v.iter()
            .map(|e| p1::BlkIOEntry {
                op: e.op.clone(),
                device: e.device.clone(),
                major: e.major,
                minor: e.minor,
                value: e.value,
                ..Default::default()
            })
            .collect()
    };
    let mem = &m.memory;
    p1::Metrics {
        hugetlb: m
            .hugetlb
            .iter()
            .map(|h| p1::HugetlbStat {
                usage: h.usage,
                max: h.max,
                failcnt: h.failcnt,
                pagesize: h.pagesize.clone(),
                ..Default::default()
            })
            .collect(),
        pids: some(p1::PidsStat {
            current: m.pids.current,
            limit: m.pids.limit,
            ..Default::default()
        }),
        cpu: some(p1::CPUStat {
            usage: some(p1::CPUUsage {
                total: m.cpu.usage.total,
                kernel: m.cpu.usage.kernel,
                user: m.cpu.usage.user,
                per_cpu: m.cpu.usage.per_cpu.clone(),
                ..Default::default()
            }),
            throttling: some(p1::Throttle {
                periods: m.cpu.throttling.periods,
                throttled_periods: m.cpu.throttling.throttled_periods,
                throttled_time: m.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: some(p1::MemoryStat {
            cache: mem.cache,
            rss: mem.rss,
            rss_huge: mem.rss_huge,
            mapped_file: mem.mapped_file,
            dirty: mem.dirty,
            writeback: mem.writeback,
            pg_pg_in: mem.pg_pg_in,
            pg_pg_out: mem.pg_pg_out,
            pg_fault: mem.pg_fault,
            pg_maj_fault: mem.pg_maj_fault,
            inactive_anon: mem.inactive_anon,
            active_anon: mem.active_anon,
            inactive_file: mem.inactive_file,
            active_file: mem.active_file,
            unevictable: mem.unevictable,
            hierarchical_memory_limit: mem.hierarchical_memory_limit,
            hierarchical_swap_limit: mem.hierarchical_swap_limit,
            total_cache: mem.total_cache,
            total_rss: mem.total_rss,
            total_rss_huge: mem.total_rss_huge,
            total_mapped_file: mem.total_mapped_file,
            total_dirty: mem.total_dirty,
            total_writeback: mem.total_writeback,
            total_pg_pg_in: mem.total_pg_pg_in,
            total_pg_pg_out: mem.total_pg_pg_out,
            total_pg_fault: mem.total_pg_fault,
            total_pg_maj_fault: mem.total_pg_maj_fault,
            total_inactive_anon: mem.total_inactive_anon,
            total_active_anon: mem.total_active_anon,
            total_inactive_file: mem.total_inactive_file,
            total_active_file: mem.total_active_file,
            total_unevictable: mem.total_unevictable,
            usage: some(entry(&mem.usage)),
            swap: some(entry(&mem.swap)),
            kernel: some(entry(&mem.kernel)),
            kernel_tcp: some(entry(&mem.kernel_tcp)),
            ..Default::default()
        }),
        blkio: some(p1::BlkIOStat {
            io_service_bytes_recursive: blk(&m.blkio.io_service_bytes_recursive),
            io_serviced_recursive: blk(&m.blkio.io_serviced_recursive),
            io_queued_recursive: blk(&m.blkio.io_queued_recursive),
            io_service_time_recursive: blk(&m.blkio.io_service_time_recursive),
            io_wait_time_recursive: blk(&m.blkio.io_wait_time_recursive),
            io_merged_recursive: blk(&m.blkio.io_merged_recursive),
            io_time_recursive: blk(&m.blkio.io_time_recursive),
            sectors_recursive: blk(&m.blkio.sectors_recursive),
            ..Default::default()
        }),
        memory_oom_control: some(p1::MemoryOomControl {
            oom_kill_disable: m.memory_oom_control.oom_kill_disable,
            under_oom: m.memory_oom_control.under_oom,
            oom_kill: m.memory_oom_control.oom_kill,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn v2(m: &s::V2Metrics) -> p2::Metrics {
    let mem = &m.memory;
    p2::Metrics {
        pids: some(p2::PidsStat {
            current: m.pids.current,
            limit: m.pids.limit,
            ..Default::default()
        }),
        cpu: some(p2::CPUStat {
            usage_usec: m.cpu.usage_usec,
            user_usec: m.cpu.user_usec,
            system_usec: m.cpu.system_usec,
            nr_periods: m.cpu.nr_periods,
            nr_throttled: m.cpu.nr_throttled,
            throttled_usec: m.cpu.throttled_usec,
            ..Default::default()
        }),
        memory: some(p2::MemoryStat {
            anon: mem.anon,
            file: mem.file,
            kernel_stack: mem.kernel_stack,
            slab: mem.slab,
            sock: mem.sock,
            shmem: mem.shmem,
            file_mapped: mem.file_mapped,
            file_dirty: mem.file_dirty,
            file_writeback: mem.file_writeback,
            anon_thp: mem.anon_thp,
            inactive_anon: mem.inactive_anon,
            active_anon: mem.active_anon,
            inactive_file: mem.inactive_file,
            active_file: mem.active_file,
            unevictable: mem.unevictable,
            slab_reclaimable: mem.slab_reclaimable,
            slab_unreclaimable: mem.slab_unreclaimable,
            pgfault: mem.pgfault,
            pgmajfault: mem.pgmajfault,
            workingset_refault: mem.workingset_refault,
            workingset_activate: mem.workingset_activate,
            workingset_nodereclaim: mem.workingset_nodereclaim,
            pgrefill: mem.pgrefill,
            pgscan: mem.pgscan,
            pgsteal: mem.pgsteal,
            pgactivate: mem.pgactivate,
            pgdeactivate: mem.pgdeactivate,
            pglazyfree: mem.pglazyfree,
            pglazyfreed: mem.pglazyfreed,
            thp_fault_alloc: mem.thp_fault_alloc,
            thp_collapse_alloc: mem.thp_collapse_alloc,
            usage: mem.usage,
            usage_limit: mem.usage_limit,
            swap_usage: mem.swap_usage,
            swap_limit: mem.swap_limit,
            max_usage: mem.max_usage,
            swap_max_usage: mem.swap_max_usage,
            ..Default::default()
        }),
        io: some(p2::IOStat {
            usage: m
                .io
                .usage
                .iter()
                .map(|e| p2::IOEntry {
                    major: e.major,
                    minor: e.minor,
                    rbytes: e.rbytes,
                    wbytes: e.wbytes,
                    rios: e.rios,
                    wios: e.wios,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        hugetlb: m
            .hugetlb
            .iter()
            .map(|h| p2::HugeTlbStat {
                current: h.current,
                max: h.max,
                pagesize: h.pagesize.clone(),
                ..Default::default()
            })
            .collect(),
        memory_events: some(p2::MemoryEvents {
            low: m.memory_events.low,
            high: m.memory_events.high,
            max: m.memory_events.max,
            oom: m.memory_events.oom,
            oom_kill: m.memory_events.oom_kill,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn v1_metrics_keep_every_value_and_name_their_type() {
        let mut m = s::V1Metrics::default();
        m.pids.current = 3;
        m.pids.limit = 10;
        m.cpu.usage.total = 123;
        m.cpu.usage.per_cpu = vec![100, 23];
        m.memory.usage.usage = 4096;
        m.memory.usage.limit = 1 << 20;
        m.memory.total_rss = 77;
        m.memory_oom_control.oom_kill = 1;
        m.blkio.io_service_bytes_recursive.push(s::BlkIoEntry {
            op: "Read".into(),
            major: 8,
            value: 512,
            ..Default::default()
        });
        let any = to_any(&Stats::V1(Box::new(m))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let back = p1::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.pids.current, back.pids.limit), (3, 10));
        assert_eq!(back.cpu.usage.total, 123);
        assert_eq!(back.cpu.usage.per_cpu, vec![100, 23]);
        assert_eq!(back.memory.usage.usage, 4096);
        assert_eq!(back.memory.usage.limit, 1 << 20);
        assert_eq!(back.memory.total_rss, 77);
        assert_eq!(back.memory_oom_control.oom_kill, 1);
        assert_eq!(back.blkio.io_service_bytes_recursive[0].op, "Read");
        assert_eq!(back.blkio.io_service_bytes_recursive[0].value, 512);
    }

    #[test]
    fn v2_metrics_keep_every_value_and_name_their_type() {
        let mut m = s::V2Metrics::default();
        m.pids.current = 2;
        m.cpu.usage_usec = 999;
        m.memory.usage = 8192;
        m.memory.usage_limit = 65536;
        m.memory_events.oom_kill = 4;
        m.io.usage.push(s::IoEntry {
            major: 253,
            rbytes: 1,
            wbytes: 2,
            ..Default::default()
        });
        let any = to_any(&Stats::V2(Box::new(m))).unwrap();
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = p2::Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.pids.current, 2);
        assert_eq!(back.cpu.usage_usec, 999);
        assert_eq!((back.memory.usage, back.memory.usage_limit), (8192, 65536));
        assert_eq!(back.memory_events.oom_kill, 4);
        assert_eq!(back.io.usage[0].major, 253);
        assert_eq!((back.io.usage[0].rbytes, back.io.usage[0].wbytes), (1, 2));
    }
}
