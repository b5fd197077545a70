//! The shim's log: lines in logrus text format written to the bundle's `log` fifo, which
//! containerd opened for reading before starting the shim and copies into its own log.
//!
//! The fifo is opened O_WRONLY|O_NONBLOCK: a missing reader (containerd restarting) must never
//! block a shim thread, so a line that does not fit is dropped.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

struct FifoLogger {
    out: Mutex<File>,
    level: log::LevelFilter,
}

impl log::Log for FifoLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let level = match r.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        let line = format!(
            "time=\"{}\" level={level} msg=\"{}\" runtime={} pid={}\n",
            rfc3339(SystemTime::now()),
            escape(&r.args().to_string()),
            crate::RUNTIME_NAME,
            std::process::id()
        );
        let mut f = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // One write per line keeps lines whole (fifo writes ≤ PIPE_BUF are atomic).
        let _ = f.write(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Set by `start` for the daemon: the `LogLevel` of the runtime options.
pub const LEVEL_ENV: &str = "PELAGOS_LOG_LEVEL";

/// Logs to `<dir>/log` from now on; `debug` lowers the level to debug, and
/// [`LEVEL_ENV`] sets it. Quietly does nothing
/// when the fifo cannot be opened (no reader, or no such file).
pub fn init(dir: &Path, debug: bool) {
    let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(dir.join("log"))
    else {
        return;
    };
    let from_options = std::env::var(LEVEL_ENV)
        .ok()
        .and_then(|l| l.parse::<log::LevelFilter>().ok());
    let level = match (debug, from_options) {
        (true, Some(l)) => l.max(log::LevelFilter::Debug),
        (true, None) => log::LevelFilter::Debug,
        (false, Some(l)) => l,
        (false, None) => log::LevelFilter::Info,
    };
    if log::set_boxed_logger(Box::new(FifoLogger {
        out: Mutex::new(f),
        level,
    }))
    .is_ok()
    {
        log::set_max_level(level);
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// RFC 3339 in UTC with nanoseconds, as logrus prints it.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000000005Z");
    }

    #[test]
    fn messages_are_quoted_safely() {
        assert_eq!(escape("a \"b\"\nc\\"), "a \\\"b\\\"\\nc\\\\");
    }
}
