//! The `pelagos` runtime as containerd 2.x introspects it (issue 22): containerd runs
//! `<shim> -info` with the runtime options on stdin and reads the OCI features document back;
//! CRI derives from it what kubelet may ask of a handler (`recursive_read_only_mounts` from
//! `rro`, `user_namespaces` from the `user` namespace and idmapped mounts). containerd 2.1's CRI
//! introspects only runtimes of the runc type, so this goes through containerd's introspection
//! service (`ctr plugins inspect-runtime`), the call CRI makes from 2.2 on.

mod common;

use common::containerd::{describe, stdout, testing_pelagos, Containerd};
use serde_json::Value;

const RUNTIME: &str = "io.containerd.pelagos.v2";

fn inspect(cd: &Containerd, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["plugins", "inspect-runtime", "--runtime", RUNTIME];
    args.extend_from_slice(extra);
    cd.ctr(&args)
}

#[test]
fn containerd_2_reads_the_features_through_shim_info() {
    if !testing_pelagos() {
        println!("skipped: this is the pelagos shim's own -info");
        return;
    }
    let cd = Containerd::start_version("2.1");
    let out = inspect(&cd, &[]);
    assert!(out.status.success(), "{}", describe(&out));
    let info: Value = serde_json::from_str(&stdout(&out)).expect("inspect-runtime prints JSON");
    assert_eq!(info["Name"], RUNTIME, "{info}");
    assert_eq!(
        info["Version"]["Version"],
        env!("CARGO_PKG_VERSION"),
        "{info}"
    );
    let features = &info["Features"];
    let has = |v: &Value, s: &str| v.as_array().is_some_and(|a| a.iter().any(|x| x == s));
    // What CRI derives its two handler features from.
    assert!(has(&features["mountOptions"], "rro"), "{features}");
    assert!(has(&features["linux"]["namespaces"], "user"), "{features}");
    // Idmapped mounts, the other half of what user-namespaced pods need.
    assert_eq!(
        features["linux"]["mountExtensions"]["idmap"]["enabled"], true,
        "{features}"
    );

    // The handler's options reach -info; ones the shim would refuse at create are refused here.
    let dir = cd.root_dir().join("inspect-options");
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "LogLevel = \"debug\"\n").unwrap();
    let out = inspect(&cd, &["--runtime-config-path", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "Sytemdcgroup = true\n").unwrap();
    let out = inspect(&cd, &["--runtime-config-path", bad.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", describe(&out));
    let text = describe(&out);
    assert!(
        text.contains(r#"unknown key \"Sytemdcgroup\""#) && text.contains("bad.toml"),
        "{text}"
    );
    cd.assert_no_leaks();
}
