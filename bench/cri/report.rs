//! Samples per metric and runtime handler, the table with the targets, and the JSON of a run.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Index 0 is runc, 1 pelagos.
pub const HANDLERS: [&str; 2] = ["runc", "pelagos"];

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    /// Every sample is one call: p50 and p90.
    Latency,
    /// Samples are parts of one quantity: their mean.
    Mean,
}

pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    /// pelagos/runc of the p50 (or mean) must be at most this.
    pub target: Option<f64>,
    /// An operation that may not be slower than runc at the p50 or the p90.
    pub not_slower: bool,
}

const fn op(name: &'static str, target: Option<f64>) -> Metric {
    Metric {
        name,
        unit: "ms",
        kind: Kind::Latency,
        target,
        not_slower: true,
    }
}

/// Per-call samples without a target.
const fn info(name: &'static str) -> Metric {
    Metric {
        not_slower: false,
        ..op(name, None)
    }
}

const fn mean(name: &'static str, unit: &'static str, target: Option<f64>) -> Metric {
    Metric {
        name,
        unit,
        kind: Kind::Mean,
        target,
        not_slower: false,
    }
}

pub const RUN_POD: &str = "RunPodSandbox";
pub const CREATE: &str = "CreateContainer";
pub const START: &str = "StartContainer";
pub const STOP: &str = "StopContainer";
pub const REMOVE: &str = "RemoveContainer";
pub const STOP_POD: &str = "StopPodSandbox";
pub const REMOVE_POD: &str = "RemovePodSandbox";
pub const START_PATH: &str = "start path (RunPodSandbox + CreateContainer + StartContainer)";
pub const TEARDOWN: &str = "teardown (Stop/Remove container, Stop/Remove pod)";
pub const CNI_DELS: &str = "the CNI plugin's DELs of that teardown, replayed alone (information)";
pub const TEARDOWN_LESS_CNI: &str = "teardown less those DELs (information)";
pub const RUN_POD_4: &str = "RunPodSandbox, 4 in parallel";
pub const STOP_POD_4: &str = "StopPodSandbox, 4 in parallel";
pub const REMOVE_POD_4: &str = "RemovePodSandbox, 4 in parallel";
pub const RUN_POD_8: &str = "RunPodSandbox, 8 in parallel";
pub const STOP_POD_8: &str = "StopPodSandbox, 8 in parallel";
pub const REMOVE_POD_8: &str = "RemovePodSandbox, 8 in parallel";
pub const EXEC: &str = "ExecSync /bin/true";
pub const EXEC_CPU: &str = "ExecSync CPU per exec: shim + all it forks";
pub const EXEC_CPU_SHIM: &str = "ExecSync CPU per exec: the shim daemon alone (information)";
pub const PSS_POD: &str = "shim PSS per pod (pause + 2 containers, one shim per pod)";
pub const PSS_DENSITY: &str = "total shim PSS with the density pods running";
pub const LOG_CPU: &str = "shim CPU per GiB of stdout through CRI log files";
pub const LOG_RATE: &str = "stdout through CRI log files (information)";

pub const METRICS: &[Metric] = &[
    op(RUN_POD, None),
    op(CREATE, None),
    op(START, None),
    op(STOP, None),
    op(REMOVE, None),
    op(STOP_POD, None),
    op(REMOVE_POD, None),
    op(START_PATH, Some(0.4)),
    op(TEARDOWN, Some(0.4)),
    info(CNI_DELS),
    info(TEARDOWN_LESS_CNI),
    op(RUN_POD_4, Some(0.5)),
    op(STOP_POD_4, None),
    op(REMOVE_POD_4, None),
    op(RUN_POD_8, Some(0.5)),
    op(STOP_POD_8, None),
    op(REMOVE_POD_8, None),
    op(EXEC, Some(0.3)),
    mean(EXEC_CPU, "ms", Some(0.15)),
    mean(EXEC_CPU_SHIM, "ms", None),
    mean(PSS_POD, "KiB", Some(0.15)),
    mean(PSS_DENSITY, "MiB", Some(0.15)),
    mean(LOG_CPU, "ms", Some(0.3)),
    Metric {
        name: LOG_RATE,
        unit: "MiB/s",
        kind: Kind::Mean,
        target: None,
        not_slower: false,
    },
];

/// What one containerd's run measured.
#[derive(Default)]
pub struct Results {
    samples: BTreeMap<&'static str, [Vec<f64>; 2]>,
    pub failures: Vec<String>,
    pub leaks: Vec<String>,
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = p * (s.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (rank - lo as f64))
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".to_owned(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(p: Option<f64>, r: Option<f64>) -> Option<f64> {
    match (p, r) {
        (Some(p), Some(r)) if r > 0.0 => Some(p / r),
        _ => None,
    }
}

/// A metric's figures: (p50 or mean, p90) per handler.
struct Figures {
    mid: [Option<f64>; 2],
    p90: [Option<f64>; 2],
    n: [usize; 2],
}

impl Results {
    pub fn add(&mut self, metric: &'static str, handler: usize, value: f64) {
        debug_assert!(METRICS.iter().any(|m| m.name == metric));
        self.samples.entry(metric).or_default()[handler].push(value);
    }

    fn figures(&self, m: &Metric) -> Option<Figures> {
        let s = self.samples.get(m.name)?;
        let f = |h: usize| match m.kind {
            Kind::Latency => (percentile(&s[h], 0.5), percentile(&s[h], 0.9)),
            Kind::Mean if s[h].is_empty() => (None, None),
            Kind::Mean => (Some(s[h].iter().sum::<f64>() / s[h].len() as f64), None),
        };
        let (r, p) = (f(0), f(1));
        Some(Figures {
            mid: [r.0, p.0],
            p90: [r.1, p.1],
            n: [s[0].len(), s[1].len()],
        })
    }

    /// The verdict of a metric with a target: `Some(true)` met.
    fn verdict(m: &Metric, f: &Figures) -> Option<bool> {
        let r50 = ratio(f.mid[1], f.mid[0]);
        let r90 = ratio(f.p90[1], f.p90[0]);
        let mut checks = Vec::new();
        if let Some(t) = m.target {
            checks.push(r50.map(|r| r <= t));
        }
        if m.not_slower {
            checks.push(r50.map(|r| r <= 1.0));
            checks.push(r90.map(|r| r <= 1.0));
        }
        if checks.is_empty() {
            return None;
        }
        Some(checks.iter().all(|c| *c == Some(true)))
    }

    /// The table: one row per measured metric, then failures and leftovers.
    pub fn table(&self, title: &str) -> String {
        let mut out = format!(
            "\n### {title}\n\n| metric | runc p50 | runc p90 | pelagos p50 | pelagos p90 | \
             pelagos/runc p50 | p90 | target |\n|---|---:|---:|---:|---:|---:|---:|---|\n"
        );
        for m in METRICS {
            let Some(f) = self.figures(m) else { continue };
            let target = match (m.target, m.not_slower) {
                (Some(t), true) => format!("<= {t}, p90 <= 1"),
                (Some(t), false) => format!("<= {t}"),
                (None, true) => "p50, p90 <= 1".to_owned(),
                (None, false) => String::new(),
            };
            let verdict = match Self::verdict(m, &f) {
                Some(true) => " ok",
                Some(false) => " MISS",
                None => "",
            };
            let (label, p90s) = match m.kind {
                Kind::Latency => (
                    format!("{} ({}, n={}/{})", m.name, m.unit, f.n[0], f.n[1]),
                    true,
                ),
                Kind::Mean => (format!("{} ({}, mean)", m.name, m.unit), false),
            };
            let p90 = |h: usize| if p90s { fmt(f.p90[h]) } else { String::new() };
            let r90 = if p90s {
                fmt(ratio(f.p90[1], f.p90[0]))
            } else {
                String::new()
            };
            out.push_str(&format!(
                "| {label} | {} | {} | {} | {} | {} | {r90} | {target}{verdict} |\n",
                fmt(f.mid[0]),
                p90(0),
                fmt(f.mid[1]),
                p90(1),
                fmt(ratio(f.mid[1], f.mid[0])),
            ));
        }
        for f in &self.failures {
            out.push_str(&format!("\nfailed: {f}"));
        }
        for l in &self.leaks {
            out.push_str(&format!("\nleft behind: {l}"));
        }
        out.push('\n');
        out
    }

    pub fn to_json(&self) -> Value {
        let mut rows = Vec::new();
        for m in METRICS {
            let Some(f) = self.figures(m) else { continue };
            let s = &self.samples[m.name];
            rows.push(json!({
                "metric": m.name,
                "unit": m.unit,
                "runc": {"p50": f.mid[0], "p90": f.p90[0], "samples": s[0]},
                "pelagos": {"p50": f.mid[1], "p90": f.p90[1], "samples": s[1]},
                "ratio_p50": ratio(f.mid[1], f.mid[0]),
                "ratio_p90": ratio(f.p90[1], f.p90[0]),
                "target": m.target,
                "not_slower_than_runc": m.not_slower,
                "met": Self::verdict(m, &f),
            }));
        }
        json!({"rows": rows, "failures": self.failures, "leftovers": self.leaks})
    }
}
