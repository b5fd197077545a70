//! Exec and Attach through containerd's CRI streaming server (bound to 127.0.0.1), with the
//! `pelagos` handler and `runc` as a control, over the websocket `v4.channel.k8s.io` protocol.

mod common;

use common::cri::{ChannelStream, Cri};
use k8s_cri::v1::*;

fn exec_and_attach(handler: &str) {
    let cri = Cri::start(handler);
    let pod = cri.pod_config("stream");
    let pod_id = cri.run_pod_ok(&pod);
    let mut echo = Cri::container_config(
        "echo",
        &[
            "sh",
            "-c",
            "while read l; do echo got:$l; echo err:$l >&2; done",
        ],
    );
    echo.stdin = true;
    let id = cri.run_container(&pod_id, &pod, &echo);

    // Exec: output on both streams and the exit code in the status channel.
    let url = cri
        .block(cri.rs().exec(ExecRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        }))
        .expect("Exec")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "exec URL {url}");
    let got = ChannelStream::connect(&url).read_to_end();
    assert_eq!(got.stdout, "out\n", "{got:?}");
    assert_eq!(got.stderr, "err\n", "{got:?}");
    assert!(
        got.status.contains("NonZeroExitCode") && got.status.contains("\"message\":\"3\""),
        "exec status {:?}",
        got.status
    );

    // Attach: stdin reaches the container's process, its output comes back.
    let url = cri
        .block(cri.rs().attach(AttachRequest {
            container_id: id.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        }))
        .expect("Attach")
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "attach URL {url}");
    let mut stream = ChannelStream::connect(&url);
    stream.send_stdin(b"hello\n");
    let got = stream.read_until_stdout("got:hello\n");
    assert!(got.stdout.contains("got:hello\n"), "{got:?}");
    stream.close();
    assert_eq!(
        cri.container_status(&id).state,
        ContainerState::ContainerRunning as i32
    );

    cri.stop_pod(&pod_id);
    cri.remove_pod(&pod_id);
    cri.assert_no_leaks();
}

pelagos_and_runc!(exec_and_attach);
