//! `pelagos`: the core's command-line front end. For now it has `run` (create, start, wait and
//! delete one container with the caller's stdio), enough to run a bundle by hand and to
//! exercise the sealed self-copy setup helper; the runc-compatible CLI comes later. The binary
//! also serves as the setup helper for the core's own tests.

use std::path::PathBuf;
use std::process::exit;

use pelagos::{Config, Container, CreateOptions, Stdio};

const USAGE: &str = "usage: pelagos run [--root DIR] [--bundle DIR] ID";

fn main() {
    pelagos::init::run_if_helper();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("run") => exit(run(&args[1..])),
        _ => {
            eprintln!("{USAGE}");
            exit(2)
        }
    }
}

/// Runs the bundle to completion; returns the container's exit code (128 + signal when
/// killed), or 1 when the container could not be run.
fn run(args: &[String]) -> i32 {
    let mut root = PathBuf::from("/run/pelagos");
    let mut bundle = PathBuf::from(".");
    let mut id = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--root" => root = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--bundle" | "-b" => bundle = it.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            s if s.starts_with('-') => usage(),
            s if id.is_none() => id = Some(s.to_string()),
            _ => usage(),
        }
    }
    let Some(id) = id else { usage() };
    let config = Config { root, helper: None };
    let opts = CreateOptions {
        id,
        bundle,
        stdio: Stdio::Inherit,
        no_pivot: false,
        preserve_fds: Vec::new(),
    };
    let mut c = match Container::create(&config, opts) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pelagos: {e}");
            return 1;
        }
    };
    if let Err(e) = c.start() {
        eprintln!("pelagos: {e}");
        let _ = c.delete(true);
        return 1;
    }
    let code = c.wait().map(|e| e.status).unwrap_or(1);
    if let Err(e) = c.delete(true) {
        eprintln!("pelagos: {e}");
    }
    code
}

fn usage() -> ! {
    eprintln!("{USAGE}");
    exit(2)
}
