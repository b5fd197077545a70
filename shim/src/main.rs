//! containerd-shim-pelagos-v2: the containerd shim v2 of runtime `io.containerd.pelagos.v2`.
//! It runs containers in-process with the pelagos core instead of exec'ing runc.
//!
//! One binary, five roles, picked by argv:
//! - the pelagos setup helper (a re-executed copy, see `pelagos::run_if_helper`),
//! - `start`: launch or join the shim daemon and print its address,
//! - `delete`: clean up one container after its shim is gone,
//! - `-info`: the runtime's features for containerd's introspection (`info`),
//! - no action: the daemon serving the Task API.
//!
//! The daemon is synchronous (threads, no async runtime). A shim spends its life idle waiting
//! for a few RPCs and exits; threads blocked in syscalls cost a few pages each, while a tokio
//! runtime costs more resident memory per shim, and memory per shim is what a node full of
//! containers pays. It also keeps the fork story simple: containers are created by a sealed
//! setup helper that a clone()d child execs at once, so no async runtime state is ever
//! duplicated into a child.
//!
//! The lifecycle (`start`, `delete`, serving) is written here rather than taken from the
//! containerd-shim crate's `run()`, which reads `start`'s stdin as runc options and so breaks
//! with containerd ≥ 2.3 (BootstrapParams on stdin).

mod any;
mod args;
mod daemon;
mod delete;
mod events;
mod failpoint;
mod info;
mod io;
mod lifecycle;
mod logger;
mod metrics;
mod mount;
mod options;
mod server;
mod service;
mod start;

use std::io::{Read, Write};

/// The runtime name containerd knows this shim by.
pub const RUNTIME_NAME: &str = "io.containerd.pelagos.v2";

fn main() {
    pelagos::run_if_helper();

    let flags = match args::parse(std::env::args().skip(1)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if flags.version {
        println!(
            "containerd-shim-pelagos-v2:\n  Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if flags.info {
        let mut input = Vec::new();
        let result = std::io::stdin()
            .read_to_end(&mut input)
            .map_err(|e| format!("-info: read stdin: {e}"))
            .and_then(|_| info::run(&input).map_err(|e| e.to_string()))
            .and_then(|out| {
                std::io::stdout()
                    .write_all(&out)
                    .map_err(|e| format!("-info: write stdout: {e}"))
            });
        if let Err(e) = result {
            eprintln!("{e}");
            std::process::exit(1);
        }
        return;
    }
    let code = match flags.action.as_str() {
        "start" => {
            logger::init(std::path::Path::new("."), flags.debug);
            match start::run(&flags) {
                Ok(started) => match std::io::stdout().write_all(&started.reply()) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprint!("start: write the address: {e}");
                        1
                    }
                },
                Err(e) => {
                    log::error!("{e}");
                    eprint!("{e}");
                    1
                }
            }
        }
        "delete" => {
            logger::init(std::path::Path::new("."), flags.debug);
            match delete::run(&flags) {
                Ok(bytes) => match std::io::stdout().write_all(&bytes) {
                    Ok(()) => 0,
                    Err(e) => {
                        eprint!("delete: write response: {e}");
                        1
                    }
                },
                Err(e) => {
                    eprint!("{e}");
                    1
                }
            }
        }
        "" => match daemon::run(&flags) {
            Ok(()) => 0,
            Err(e) => {
                log::error!("{e}");
                1
            }
        },
        other => {
            eprintln!("unknown action {other:?}: expected start or delete");
            2
        }
    };
    std::process::exit(code);
}
