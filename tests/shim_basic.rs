//! The shim through a real containerd and ctr: output, exit codes, signals, env, cwd, stdin and
//! a large byte-exact stream. Every test runs its own containerd and ends with the leak check.
//! `PELAGOS_TEST_RUNTIME=io.containerd.runc.v2` runs the same tests against runc's shim.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Output};

use common::containerd::{
    describe, stdout, testing_pelagos, wait_child_timeout, Containerd, CTR_TIMEOUT,
};

/// Reads the child's stdout until a line equal to `want`; returns the reader for the rest.
fn wait_line(child: &mut Child, want: &str) -> BufReader<std::process::ChildStdout> {
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).expect("read ctr stdout");
        assert!(n > 0, "ctr stdout ended before {want:?}");
        if line.trim_end() == want {
            return reader;
        }
    }
}

fn finish(mut child: Child) -> (i32, String) {
    let status = wait_child_timeout(&mut child, CTR_TIMEOUT).expect("ctr run did not exit");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.code().unwrap_or(-1), err)
}

/// Deterministic pseudo-random bytes (xorshift), so a failure is reproducible.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn echo_prints_and_exits_zero() {
    let cd = Containerd::start();
    let out = cd.run("echo", &[], &["echo", "hello from pelagos"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "hello from pelagos\n");
    cd.assert_no_leaks();
}

#[test]
fn exit_code_is_passed_through() {
    let cd = Containerd::start();
    let out = cd.run("exit3", &[], &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let out = cd.run("false", &[], &["false"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    cd.assert_no_leaks();
}

#[test]
fn stdout_and_stderr_are_separate() {
    let cd = Containerd::start();
    let out = cd.run("streams", &[], &["sh", "-c", "echo out; echo err >&2"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err\n"),
        "{}",
        describe(&out)
    );
    cd.assert_no_leaks();
}

#[test]
fn missing_command_fails_cleanly() {
    let cd = Containerd::start();
    let out = cd.run("nocmd", &[], &["/no/such/binary"]);
    assert!(!out.status.success(), "{}", describe(&out));
    // ctr run --rm does not delete a container whose task never started.
    let _ = cd.ctr(&["containers", "rm", "nocmd"]);
    cd.assert_no_leaks();
}

/// An unknown capability is refused naming it, and nothing is left behind. runc's shim (the
/// control) starts the container without it, which is checked instead.
#[test]
fn unknown_capability_is_named() {
    let cd = Containerd::start();
    let out = cd.run("badcap", &["--cap-add", "CAP_FOO"], &["true"]);
    if !testing_pelagos() {
        assert!(out.status.success(), "{}", describe(&out));
        let _ = cd.ctr(&["containers", "rm", "badcap"]);
        cd.assert_no_leaks();
        return;
    }
    assert!(!out.status.success(), "{}", describe(&out));
    let err = describe(&out);
    assert!(
        err.contains("config.json: invalid config at line") && err.contains("CAP_FOO"),
        "{err}"
    );
    assert!(!err.contains("expected one of"), "{err}");
    let _ = cd.ctr(&["containers", "rm", "badcap"]);
    cd.assert_no_leaks();
}

#[test]
fn sigkill_gives_137() {
    let cd = Containerd::start();
    let mut child = cd.spawn_run("k9", &[], &["sh", "-c", "echo ready; exec sleep 1000"]);
    let _rest = wait_line(&mut child, "ready");
    cd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "k9"]);
    let (code, err) = finish(child);
    assert_eq!(code, 137, "stderr: {err}");
    cd.assert_no_leaks();
}

#[test]
fn signal_reaches_a_handler() {
    let cd = Containerd::start();
    let script = "trap 'exit 42' TERM; sleep 1000 & echo ready; wait";
    let mut child = cd.spawn_run("term", &[], &["sh", "-c", script]);
    let _rest = wait_line(&mut child, "ready");
    cd.ctr_ok(&["task", "kill", "-s", "SIGTERM", "term"]);
    let (code, err) = finish(child);
    assert_eq!(code, 42, "stderr: {err}");
    cd.assert_no_leaks();
}

#[test]
fn env_and_cwd_are_applied() {
    let cd = Containerd::start();
    let out = cd.run(
        "envcwd",
        &["--env", "FOO=bar baz", "--cwd", "/tmp"],
        &["sh", "-c", "echo \"$FOO\"; pwd; echo \"$PATH\""],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"bar baz"), "{text}");
    assert_eq!(lines.get(1), Some(&"/tmp"), "{text}");
    assert!(lines.get(2).is_some_and(|p| p.contains("/bin")), "{text}");
    cd.assert_no_leaks();
}

/// HOME, when the spec leaves it unset, comes from the container's /etc/passwd for the uid,
/// "/" without an entry (runc's default); a HOME given is kept. (ctr 1.6 sets a user only for
/// execs.)
#[test]
fn home_is_set_from_the_containers_passwd_like_runc() {
    let cd = Containerd::start();
    let echo_home = ["sh", "-c", "echo \"$HOME\""];
    let home_of = |out: Output| {
        assert!(out.status.success(), "{}", describe(&out));
        stdout(&out).trim_end().to_string()
    };
    // The test image's passwd: root's home is /root, nobody's (65534) /nonexistent.
    assert_eq!(home_of(cd.run("root", &[], &echo_home)), "/root");
    let given = cd.run("given", &["--env", "HOME=/data"], &echo_home);
    assert_eq!(home_of(given), "/data");

    cd.run_detached("box", &[], &["sleep", "1000"]);
    for (user, want) in [("65534", "/nonexistent"), ("1234", "/"), ("0", "/root")] {
        let out = cd.ctr(
            &[
                "task",
                "exec",
                "--exec-id",
                &format!("u{user}"),
                "--user",
                user,
                "box",
            ]
            .into_iter()
            .chain(echo_home)
            .collect::<Vec<_>>(),
        );
        assert_eq!(home_of(out), want, "exec as uid {user}");
    }
    cd.remove("box");
    cd.assert_no_leaks();
}

#[test]
fn stdin_is_piped_until_eof() {
    let cd = Containerd::start();
    let out = cd.run_input("stdin", &[], &["cat"], Some(b"data\nmore data\n"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out), "data\nmore data\n");
    // wc only ends at EOF, so its count proves the shim closed the container's stdin.
    let out = cd.run_input("wc", &[], &["wc", "-c"], Some(b"12345"));
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(stdout(&out).trim(), "5");
    cd.assert_no_leaks();
}

#[test]
fn ten_mib_stream_is_byte_exact() {
    let cd = Containerd::start();
    let data = pseudo_random(10 << 20);
    let out = cd.run_input("stream", &[], &["cat"], Some(&data));
    assert!(
        out.status.success(),
        "exit: {:?} stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), data.len(), "stdout length");
    assert!(out.stdout == data, "stdout differs from stdin");
    // And out of the container only: the container's own digest of what it produced.
    let out = cd.run(
        "produce",
        &[],
        &[
            "sh",
            "-c",
            "head -c 10485760 /dev/zero | tee /tmp/z | sha256sum >&2; cat /tmp/z",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), 10 << 20);
    let inside = String::from_utf8_lossy(&out.stderr);
    let outside = common::image::sha256_hex(&out.stdout);
    assert!(
        inside.contains(&outside),
        "inside {inside:?} outside {outside}"
    );
    cd.assert_no_leaks();
}

#[test]
fn runs_in_its_own_namespaces() {
    let cd = Containerd::start();
    let kinds = ["pid", "net", "uts", "ipc", "mnt"];
    let script = format!(
        "echo $$; for n in {}; do readlink /proc/self/ns/$n; done",
        kinds.join(" ")
    );
    let out = cd.run("ns", &[], &["sh", "-c", &script]);
    assert!(out.status.success(), "{}", describe(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"1"),
        "the init is not pid 1 of a new pid namespace: {text}"
    );
    for (i, kind) in kinds.iter().enumerate() {
        let host = std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("host ns");
        let inside = lines.get(i + 1).copied().unwrap_or("");
        assert!(inside.starts_with(&format!("{kind}:[")), "{text}");
        assert_ne!(
            inside,
            host.to_string_lossy(),
            "{kind} namespace is the host's"
        );
    }
    cd.assert_no_leaks();
}

#[test]
fn a_second_run_after_the_first_reuses_nothing_stale() {
    let cd = Containerd::start();
    for round in 0..3 {
        let out = cd.run("again", &[], &["echo", "round"]);
        assert!(out.status.success(), "round {round}: {}", describe(&out));
        assert_eq!(stdout(&out), "round\n");
    }
    cd.assert_no_leaks();
}
