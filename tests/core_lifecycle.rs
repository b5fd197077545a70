//! Core lifecycle tests against the real kernel (root): create/start/wait, stdio, exec, kill,
//! state transitions, bad input leaving nothing behind.

mod common;

use common::bundle::{Bundle, TestRoot};

#[test]
fn echo_hi() {
    let root = TestRoot::new();
    let b = Bundle::new().args(&["echo", "hi"]).edit(|c| {
        c["process"]["capabilities"]
            .as_object_mut()
            .unwrap()
            .remove("ambient");
    });
    let out = root.run(&b);
    assert_eq!(out.stdout, "hi\n", "stderr: {}", out.stderr);
    assert_eq!(out.code, 0);
}
