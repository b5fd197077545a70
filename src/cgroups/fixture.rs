//! Test support for the controller writers: a directory standing in for a cgroup, and the
//! journal of every value `fs::write` wrote on this thread, in order (a plain file only keeps
//! the last one, where cgroupfs acts on each).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    static WRITES: RefCell<Vec<(String, String)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn record(path: &Path, value: &str) {
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
    WRITES.with(|w| {
        w.borrow_mut()
            .push((file.unwrap_or_default(), value.to_string()))
    });
}

/// A cgroup directory whose listed files exist (as cgroupfs files do, with the given initial
/// contents); removed on drop.
pub(crate) struct Fixture(pub PathBuf);

impl Fixture {
    pub fn new(name: &str, files: &[(&str, &str)]) -> Fixture {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d =
            std::env::temp_dir().join(format!("pelagos-cgfix-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in files {
            std::fs::write(d.join(f), v).unwrap();
        }
        WRITES.with(|w| w.borrow_mut().clear());
        Fixture(d)
    }

    /// The same, with every file empty.
    pub fn empty(name: &str, files: &[&str]) -> Fixture {
        let files: Vec<(&str, &str)> = files.iter().map(|f| (*f, "")).collect();
        Fixture::new(name, &files)
    }

    pub fn get(&self, f: &str) -> String {
        std::fs::read_to_string(self.0.join(f)).unwrap()
    }

    /// Every write since the fixture was made, as `file=value`.
    pub fn writes(&self) -> Vec<String> {
        WRITES.with(|w| w.borrow().iter().map(|(f, v)| format!("{f}={v}")).collect())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
