//! Exec and terminals through containerd: exec with and without a tty, duplicate exec ids,
//! `ctr run -t` with its initial size and a resize, exits whose output is held open or unread.

mod common;

use std::time::Duration;

use common::containerd::{describe, stdout, Containerd, CTR_TIMEOUT};

/// Lines of the form `<rows> <cols>` printed by `stty size`, in order.
fn sizes(text: &str) -> Vec<(u16, u16)> {
    text.split(['\r', '\n'])
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (r, c) = (f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            f.next().is_none().then_some((r, c))
        })
        .collect()
}

/// Sends a line to a `while read x; do stty size; done` loop until it prints `want`, at most
/// `rounds` times; whether it did.
///
/// The size is set by ctr's Resize call, which races with the first commands of the process, so
/// a few rounds may show the previous size. A line typed while the terminal is being set up can
/// also be discarded (seen with runc as well), so a round without an answer is retried.
fn size_seen(pty: &mut common::containerd::PtyChild, want: (u16, u16), rounds: usize) -> bool {
    for _ in 0..rounds {
        let before = sizes(&pty.output()).len();
        pty.write(b"x\n");
        if !pty.expect(Duration::from_secs(2), |t| sizes(t).len() > before) {
            continue;
        }
        if sizes(&pty.output()).last() == Some(&want) {
            return true;
        }
    }
    false
}

fn expect_size(pty: &mut common::containerd::PtyChild, want: (u16, u16)) {
    assert!(
        size_seen(pty, want, 60),
        "terminal size never became {want:?}; terminal output:\n{}",
        pty.output()
    );
}

/// Resizes ctr's terminal to `want` until the process sees it. ctr follows SIGWINCH only once
/// its first Resize call returned, which the process's first output can precede: a change
/// before that is lost (with any runtime), so it is made again, through another size so that
/// a signal is sent.
fn resize_to(pty: &mut common::containerd::PtyChild, want: (u16, u16)) {
    for _ in 0..10 {
        pty.resize(want.0, want.1);
        if size_seen(pty, want, 6) {
            return;
        }
        pty.resize(want.0 + 1, want.1);
    }
    panic!(
        "terminal size never became {want:?}; terminal output:\n{}",
        pty.output()
    );
}

#[test]
fn exec_without_tty_joins_the_container() {
    let cd = Containerd::start();
    cd.run_detached("box", &[], &["sleep", "1000"]);
    let init = cd.task_pid("box");
    let out = cd.exec(
        "box",
        "e1",
        &[],
        &[
            "sh",
            "-c",
            "readlink /proc/self/ns/pid; readlink /proc/self/ns/mnt; echo done; exit 5",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    for (i, kind) in ["pid", "mnt"].iter().enumerate() {
        let want = std::fs::read_link(format!("/proc/{init}/ns/{kind}")).expect("init ns");
        assert_eq!(
            lines.get(i).copied(),
            Some(want.to_string_lossy().as_ref()),
            "exec is not in the init's {kind} namespace: {}",
            describe(&out)
        );
    }
    assert_eq!(lines.get(2), Some(&"done"), "{text}");
    // The same exec id can be used again once the previous exec is gone.
    let out = cd.exec("box", "e1", &[], &["true"]);
    assert!(out.status.success(), "{}", describe(&out));
    cd.remove("box");
    cd.assert_no_leaks();
}

#[test]
fn exec_stdin_and_exit_codes() {
    let cd = Containerd::start();
    cd.run_detached("box", &[], &["sleep", "1000"]);
    let out = cd.exec_input("box", "cat", &[], &["cat"], b"exec input\n");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "exec input\n");
    // wc ends only at EOF: CloseIO for an exec reached its stdin.
    let out = cd.exec_input("box", "wc", &[], &["wc", "-c"], b"1234567");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "7");
    let out = cd.exec(
        "box",
        "x7",
        &[],
        &["sh", "-c", "echo to-stderr >&2; exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    cd.remove("box");
    cd.assert_no_leaks();
}

/// An exec that leaves a child running in the background with its stdout: `ctr task exec`
/// gets the output and the exit code, the exit is reported when the exec exits rather than when
/// the child closes the output (it never does), and the child lives on. runc's shim reports the
/// exit at once and closes the exec's stdio 2 s after it, at Delete; so does this shim.
#[test]
fn exec_leaving_a_background_child_is_reported_at_its_exit() {
    let cd = Containerd::start();
    cd.run_detached("host", &[], &["sleep", "1000"]);
    let mut events = cd.events();
    let script = "sleep 1000 & echo started; exit 4";
    let out = cd.exec("host", "bg", &[], &["sh", "-c", script]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert_eq!(stdout(&out), "started\n");
    let exit = events.wait_topic("/tasks/exit", "host", Some("bg"));
    assert_eq!(exit.exit_status(), Some(4), "{exit:?}");
    exit.assert_not_held();
    let left = cd.exec(
        "host",
        "ps",
        &[],
        &["sh", "-c", "ps -o args | grep -c '^sleep 1000'"],
    );
    assert_eq!(
        stdout(&left).trim(),
        "2",
        "the init and the exec's child: {}",
        describe(&left)
    );
    cd.remove("host");
    cd.assert_no_leaks();
}

/// Detached, a task's and an exec's exits are reported when they exit, though the output they
/// wrote last was never read: `ctr run -d` and `ctr task exec -d` returned long before, so no
/// client is there to wait for (runc's shim reports them at once; this one used to hold them
/// for its 1 s stall bound).
#[test]
fn detached_exits_with_unread_output_are_not_held() {
    let cd = Containerd::start();
    // Each says it is ready once its trap is set: a SIGTERM before that would end it with 143.
    let talker = |code: u8| {
        format!(
            "trap 'echo bye; echo bye >&2; exit {code}' TERM; touch /tmp/ready-{code}; \
             sleep 1000 & wait"
        )
    };
    cd.run_detached("quiet", &[], &["sh", "-c", &talker(3)]);
    cd.exec_detached("quiet", "side", &["sh", "-c", &talker(4)]);
    let tmp = cd.bundle_dir("quiet").join("rootfs/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(tmp.join("ready-3").exists() && tmp.join("ready-4").exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the talkers never got ready"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut events = cd.events();
    cd.ctr_ok(&[
        "task",
        "kill",
        "--exec-id",
        "side",
        "-s",
        "SIGTERM",
        "quiet",
    ]);
    let side = events.wait_topic("/tasks/exit", "quiet", Some("side"));
    cd.ctr_ok(&["task", "kill", "-s", "SIGTERM", "quiet"]);
    let init = events.wait_topic("/tasks/exit", "quiet", Some("quiet"));
    for (exit, code) in [(side, 4), (init, 3)] {
        assert_eq!(exit.exit_status(), Some(code), "{exit:?}");
        exit.assert_not_held();
    }
    cd.remove("quiet");
    cd.assert_no_leaks();
}

#[test]
fn duplicate_exec_id_is_refused() {
    let cd = Containerd::start();
    cd.run_detached("box", &[], &["sleep", "1000"]);
    cd.exec_detached("box", "dup", &["sleep", "1000"]);
    let out = cd.exec("box", "dup", &[], &["true"]);
    assert!(
        !out.status.success(),
        "second exec with the same id ran: {}",
        describe(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("already exists"), "{}", describe(&out));
    // ctr creates the fifos before asking and does not remove them when the exec is refused.
    cd.clear_fifo_dirs();
    // The first exec is untouched and shows in the process list.
    let ps = cd.ctr_ok(&["task", "ps", "box"]);
    assert!(
        ps.lines().count() >= 3,
        "expected init and the exec in `ctr task ps`: {ps}"
    );
    cd.remove("box");
    cd.assert_no_leaks();
}

#[test]
fn exec_after_the_init_exited_is_refused() {
    let cd = Containerd::start();
    cd.run_detached("done", &[], &["true"]);
    let mut events = cd.events();
    if cd.task_status("done").as_deref() != Some("STOPPED") {
        events.wait_topic("/tasks/exit", "done", Some("done"));
    }
    let out = cd.exec("done", "late", &[], &["true"]);
    assert!(
        !out.status.success(),
        "exec into a stopped task ran: {}",
        describe(&out)
    );
    cd.remove("done");
    cd.assert_no_leaks();
}

#[test]
fn run_with_tty_has_the_initial_size_and_follows_resize() {
    let cd = Containerd::start();
    let args = cd.run_args(
        &["--rm", "-t"],
        "tty",
        &[],
        &[
            "sh",
            "-c",
            "tty; while read x; do stty size 2>/dev/null || echo 0 0; done; exit 3",
        ],
    );
    let mut pty = cd.spawn_ctr_on_pty(&args, 30, 90);
    assert!(
        pty.expect(CTR_TIMEOUT, |t| t.contains("/dev/pts/")
            || t.contains("not a tty"))
            && pty.output().contains("/dev/pts/"),
        "no tty in the container: {}",
        pty.output()
    );
    expect_size(&mut pty, (30, 90));
    resize_to(&mut pty, (50, 120));
    pty.write(b"\x04");
    let (status, out) = pty.wait(CTR_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(3),
        "terminal output:\n{out}"
    );
    cd.assert_no_leaks();
}

#[test]
fn exec_with_tty() {
    let cd = Containerd::start();
    cd.run_detached("box", &[], &["sleep", "1000"]);
    let args = cd.exec_args(
        "box",
        "t1",
        &["-t"],
        &[
            "sh",
            "-c",
            "tty; while read x; do stty size 2>/dev/null || echo 0 0; done; exit 4",
        ],
    );
    let mut pty = cd.spawn_ctr_on_pty(&args, 25, 80);
    assert!(
        pty.expect(CTR_TIMEOUT, |t| t.contains("/dev/pts/")
            || t.contains("not a tty"))
            && pty.output().contains("/dev/pts/"),
        "no tty in the exec: {}",
        pty.output()
    );
    expect_size(&mut pty, (25, 80));
    resize_to(&mut pty, (40, 100));
    pty.write(b"\x04");
    let (status, out) = pty.wait(CTR_TIMEOUT);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(4),
        "terminal output:\n{out}"
    );
    // A tty exec does not disturb the init.
    assert_eq!(cd.task_status("box").as_deref(), Some("RUNNING"));
    cd.remove("box");
    cd.assert_no_leaks();
}
