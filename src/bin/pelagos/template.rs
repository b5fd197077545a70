//! The documents `pelagos` writes without a container: the default config.json of `spec`
//! (runc's, optionally made rootless).

use serde_json::{json, Value};

pub use pelagos::spec::{example as default_spec, SPEC_VERSION};

/// runc's rootless conversion: a user namespace mapping the caller's ids to root, no network
/// namespace, /sys bind-mounted (sysfs needs a network namespace of one's own), no uid=/gid=
/// mount options (those ids are unmapped) and no cgroup resources.
pub fn make_rootless(spec: &mut Value, uid: u32, gid: u32) {
    let linux = &mut spec["linux"];
    if let Some(ns) = linux["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network" && n["type"] != "user");
        ns.push(json!({"type": "user"}));
    }
    linux["uidMappings"] = json!([{"containerID": 0, "hostID": uid, "size": 1}]);
    linux["gidMappings"] = json!([{"containerID": 0, "hostID": gid, "size": 1}]);
    if let Some(obj) = linux.as_object_mut() {
        obj.remove("resources");
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts.iter_mut() {
            if m["destination"] == "/sys" {
                *m = json!({"destination": "/sys", "type": "none", "source": "/sys",
                            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
                continue;
            }
            if let Some(opts) = m["options"].as_array_mut() {
                opts.retain(|o| {
                    let o = o.as_str().unwrap_or_default();
                    !o.starts_with("uid=") && !o.starts_with("gid=")
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootless_spec_maps_the_caller_and_drops_network_and_ids() {
        let mut s = default_spec();
        make_rootless(&mut s, 1000, 1001);
        let ns: Vec<&str> = s["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert!(ns.contains(&"user") && !ns.contains(&"network"), "{ns:?}");
        assert_eq!(s["linux"]["uidMappings"][0]["hostID"], 1000);
        assert_eq!(s["linux"]["gidMappings"][0]["hostID"], 1001);
        assert!(s["linux"].get("resources").is_none());
        let text = s["mounts"].to_string();
        assert!(!text.contains("gid=5"), "{text}");
        assert!(text.contains("rbind"), "{text}");
    }
}
