//! The runtime-spec features document (what `runc features` prints): what this core implements,
//! for the CLI's `features` and the shim's `-info`, from which containerd's CRI derives what a
//! runtime handler supports (`recursive_read_only_mounts`, `user_namespaces`).

use serde_json::{json, Value};

/// The runtime-spec version the document's format follows.
const FEATURES_SPEC_VERSION: &str = "1.2.1";

/// The features document.
pub fn document() -> Value {
    let namespaces = [
        "cgroup", "ipc", "mount", "network", "pid", "time", "user", "uts",
    ];
    let caps: Vec<String> = (0..64)
        .filter_map(|c| crate::caps::name(c).map(|n| n.to_string()))
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": FEATURES_SPEC_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": crate::rootfs::options::known(),
        "linux": {
            "namespaces": namespaces,
            "capabilities": caps,
            "cgroup": {"v1": true, "v2": true, "systemd": true, "systemdUser": false,
                       "rdma": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                            "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                            "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                              "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32",
                          "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": true}}
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.version": FEATURES_SPEC_VERSION,
            "io.github.pelagos.version": env!("CARGO_PKG_VERSION")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_runtime_spec_features() {
        let f: oci_spec::runtime::Features = serde_json::from_value(document()).unwrap();
        assert_eq!(f.oci_version_min(), "1.0.0");
        let linux = f.linux().as_ref().unwrap();
        assert!(linux
            .capabilities()
            .as_ref()
            .unwrap()
            .contains(&"CAP_SYS_ADMIN".to_string()));
        let ns = linux.namespaces().as_ref().unwrap();
        use oci_spec::runtime::LinuxNamespaceType;
        assert!(ns.contains(&LinuxNamespaceType::User) && ns.contains(&LinuxNamespaceType::Time));
        // CRI's recursive_read_only_mounts reads this option.
        assert!(f
            .mount_options()
            .as_ref()
            .unwrap()
            .contains(&"rro".to_string()));
    }
}
