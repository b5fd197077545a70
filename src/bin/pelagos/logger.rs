//! The `--log` / `--log-format` / `--debug` logger: one line per record, JSON
//! (`{"level","msg","time"}`, what go-runc reads error messages from) or text, appended to the
//! log file or written to stderr.

use std::io::Write;
use std::sync::Mutex;

pub struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    json: bool,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata) -> bool {
        meta.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = record.level().as_str().to_ascii_lowercase();
        let msg = record.args().to_string();
        let time = rfc3339(std::time::SystemTime::now());
        let line = if self.json {
            serde_json::json!({"level": level, "msg": msg, "time": time}).to_string()
        } else {
            format!("time=\"{time}\" level={level} msg={msg:?}")
        };
        if let Ok(mut out) = self.out.lock() {
            let _ = writeln!(out, "{line}");
        }
    }

    fn flush(&self) {
        if let Ok(mut out) = self.out.lock() {
            let _ = out.flush();
        }
    }
}

/// Installs the logger; `path` `None` logs to stderr.
pub fn init(path: Option<&std::path::Path>, json: bool, debug: bool) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match path {
        Some(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let level = if debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let logger = Box::new(Logger {
        out: Mutex::new(out),
        json,
        level,
    });
    log::set_max_level(level);
    log::set_boxed_logger(logger).map_err(std::io::Error::other)
}

/// RFC 3339 UTC time, as runc's logs and `state` print it.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339_from(d.as_secs() as i64, d.subsec_nanos())
}

pub fn rfc3339_from(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339_from(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            super::rfc3339_from(1_709_210_096, 5),
            "2024-02-29T12:34:56.000000005Z"
        );
    }
}
