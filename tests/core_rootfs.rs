//! The container's filesystem as seen from inside: mounts and their flags, devices, /dev
//! links, masked and read-only paths, a read-only root, and symlinked mount destinations
//! that must not escape the rootfs. Bad mount input must fail cleanly.

mod common;

use std::path::{Path, PathBuf};

use common::bundle::{mounts_under, unique_id, Bundle, Output, Pipes, TestRoot};
use pelagos::{Container, CreateOptions};
use serde_json::json;

/// A host directory removed on drop.
struct HostDir(PathBuf);

impl HostDir {
    fn new(name: &str) -> HostDir {
        HostDir::new_in(&std::env::temp_dir(), name)
    }

    fn new_in(base: &Path, name: &str) -> HostDir {
        let d = base.join(unique_id(&format!("pelagos-rootfs-{name}")));
        std::fs::create_dir_all(&d).unwrap();
        HostDir(d)
    }
}

/// A mount made for a test, detached on drop (also when the test fails).
struct Unmount(PathBuf);

impl Unmount {
    fn bind(src: &Path, dst: &Path) -> Unmount {
        nix::mount::mount(
            Some(src),
            dst,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        Unmount(dst.to_path_buf())
    }

    fn tmpfs(dst: &Path) -> Unmount {
        nix::mount::mount(
            Some("tmpfs"),
            dst,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=755"),
        )
        .unwrap();
        Unmount(dst.to_path_buf())
    }
}

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sh(b: Bundle, script: &str) -> (Bundle, Output) {
    let b = b.args(&["sh", "-c", script]);
    let out = TestRoot::new().run(&b);
    (b, out)
}

/// The mountinfo line (from inside the container) whose mount point is `dest`.
fn mount_line<'a>(mountinfo: &'a str, dest: &str) -> Option<&'a str> {
    mountinfo
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == Some(dest))
}

fn mount_opts<'a>(mountinfo: &'a str, dest: &str) -> Vec<&'a str> {
    let line =
        mount_line(mountinfo, dest).unwrap_or_else(|| panic!("{dest} not mounted:\n{mountinfo}"));
    line.split(' ').nth(5).unwrap().split(',').collect()
}

#[test]
fn default_bundle_runs() {
    let (_, out) = sh(Bundle::new(), "echo hi");
    assert_eq!(
        (out.code, out.stdout.as_str(), out.stderr.as_str()),
        (0, "hi\n", "")
    );
}

#[test]
fn spec_mounts_have_the_requested_flags() {
    let data = HostDir::new("data");
    std::fs::write(data.0.join("hello"), "from host\n").unwrap();
    let file = data.0.join("single");
    std::fs::write(&file, "one file\n").unwrap();
    let b = Bundle::new()
        .mount(
            json!({"destination": "/data", "type": "bind", "source": data.0,
                      "options": ["rbind", "ro", "nosuid", "nodev"]}),
        )
        .mount(
            json!({"destination": "/etc/single", "type": "none", "source": file,
                      "options": ["bind", "noexec"]}),
        )
        .mount(
            json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                      "options": ["size=1m", "mode=700", "noatime"]}),
        );
    let (_, out) = sh(
        b,
        "cat /data/hello /etc/single; touch /data/x 2>&1 | grep -q 'Read-only' && echo ro-ok; \
         touch /scratch/y && echo tmpfs-rw-ok; stat -c %a /scratch; cat /proc/self/mountinfo",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("from host\none file\nro-ok\ntmpfs-rw-ok\n700\n"),
        "{}",
        out.stdout
    );
    let mi = out.stdout.as_str();
    let data_opts = mount_opts(mi, "/data");
    for o in ["ro", "nosuid", "nodev"] {
        assert!(data_opts.contains(&o), "/data lacks {o}: {data_opts:?}");
    }
    let single = mount_opts(mi, "/etc/single");
    assert!(
        single.contains(&"noexec") && single.contains(&"rw"),
        "{single:?}"
    );
    let scratch = mount_line(mi, "/scratch").unwrap();
    assert!(
        scratch.contains("size=1024k") && scratch.contains(" - tmpfs "),
        "{scratch}"
    );
    assert!(mount_opts(mi, "/scratch").contains(&"noatime"));
    // Nothing was written to the host through the read-only bind.
    assert!(!data.0.join("x").exists());
}

#[test]
fn default_devices_and_dev_links() {
    let b = Bundle::new().edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                                       "fileMode": 0o600, "uid": 1, "gid": 2},
                                      {"path": "/dev/sub/fifo", "type": "p", "fileMode": 0o640}]);
    });
    let (_, out) = sh(
        b,
        "for d in null zero full random urandom tty fuse; do stat -c '%n %F %t:%T %a %u:%g' /dev/$d; done; \
         stat -c '%n %F %a' /dev/sub/fifo; \
         for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let expected = "\
/dev/null character special file 1:3 666 0:0
/dev/zero character special file 1:5 666 0:0
/dev/full character special file 1:7 666 0:0
/dev/random character special file 1:8 666 0:0
/dev/urandom character special file 1:9 666 0:0
/dev/tty character special file 5:0 666 0:0
/dev/fuse character special file a:e5 600 1:2
/dev/sub/fifo fifo 640
fd /proc/self/fd
stdin /proc/self/fd/0
stdout /proc/self/fd/1
stderr /proc/self/fd/2
ptmx pts/ptmx
";
    assert_eq!(out.stdout, expected);
}

#[test]
fn read_only_dev_still_gets_devices() {
    let b = Bundle::new().edit(|c| {
        c["mounts"][1]["options"] =
            json!(["nosuid", "strictatime", "mode=755", "size=65536k", "ro"]);
    });
    let (_, out) = sh(
        b,
        "stat -c '%t:%T' /dev/null; touch /dev/x 2>/dev/null || echo dev-ro",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "1:3\ndev-ro\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn masked_paths_show_nothing() {
    let b = Bundle::new().edit(|c| {
        let m = c["linux"]["maskedPaths"].as_array_mut().unwrap();
        m.push(json!("/etc/secret"));
        m.push(json!("/etc/secretdir"));
        m.push(json!("/does/not/exist"));
    });
    std::fs::write(b.rootfs().join("etc/secret"), "password\n").unwrap();
    std::fs::create_dir_all(b.rootfs().join("etc/secretdir")).unwrap();
    std::fs::write(b.rootfs().join("etc/secretdir/key"), "key\n").unwrap();
    let (_, out) = sh(
        b,
        "echo keys=$(cat /proc/keys | wc -c) secret=$(cat /etc/secret | wc -c); \
         stat -c '%t:%T' /etc/secret; ls -A /etc/secretdir /sys/firmware | wc -l; \
         touch /etc/secretdir/new 2>/dev/null || echo dir-ro",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.stdout, "keys=0 secret=0\n1:3\n3\ndir-ro\n",
        "{}",
        out.stderr
    );
}

#[test]
fn readonly_paths_and_root_refuse_writes() {
    let (_, out) = sh(
        Bundle::new(),
        "echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null || echo sys-ro; \
         touch /newfile 2>/dev/null || echo root-ro; grep -E ' /proc/sys | / ' /proc/self/mountinfo",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("sys-ro\nroot-ro\n"),
        "{}",
        out.stdout
    );
    assert!(mount_opts(&out.stdout, "/proc/sys").contains(&"ro"));
    assert!(mount_opts(&out.stdout, "/").contains(&"ro"));

    let (b, out) = sh(
        Bundle::new().readonly_root(false),
        "touch /newfile && echo root-rw",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "root-rw\n"),
        "{}",
        out.stderr
    );
    assert!(b.rootfs().join("newfile").exists());
}

#[test]
fn symlinked_destination_stays_inside_rootfs() {
    let outside = HostDir::new("outside");
    let b = Bundle::new()
        .mount(json!({"destination": "/escape/sub", "type": "tmpfs", "source": "tmpfs"}))
        .mount(
            json!({"destination": "/up/file", "type": "bind", "source": "/etc/hostname",
                      "options": ["bind", "ro"]}),
        );
    // An absolute symlink to a host directory, and a relative one climbing above the root.
    std::os::unix::fs::symlink(&outside.0, b.rootfs().join("escape")).unwrap();
    std::os::unix::fs::symlink("../../../../../..", b.rootfs().join("up")).unwrap();
    let inside = outside.0.strip_prefix("/").unwrap();
    let script = format!(
        "grep -c ' {}/sub ' /proc/self/mountinfo; grep -c ' /file ' /proc/self/mountinfo",
        Path::new("/").join(inside).display()
    );
    let (b, out) = sh(b, &script);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "1\n1\n"),
        "{}",
        out.stderr
    );
    // The host directory the symlink names was not touched; the mount points were created
    // inside the rootfs instead.
    assert_eq!(std::fs::read_dir(&outside.0).unwrap().count(), 0);
    assert!(b.rootfs().join(inside).join("sub").is_dir());
    assert!(b.rootfs().join("file").is_file());
    assert_eq!(mounts_under(&outside.0), Vec::<String>::new());
}

/// Whether the host has only the unified cgroup hierarchy (cgroup2 on /sys/fs/cgroup).
fn host_is_unified() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            f.get(4) == Some(&"/sys/fs/cgroup") && l.contains(" - cgroup2 ")
        })
}

#[test]
fn cgroup_mount_shows_own_cgroup_read_only() {
    if host_is_unified() {
        // runc mounts the whole cgroup2 tree without a cgroup namespace; with one (what
        // containerd and `runc spec` use on such hosts) only the container's own cgroup shows.
        let (_, out) = sh(
            Bundle::new().namespace("cgroup", None),
            "grep -x 1 /sys/fs/cgroup/cgroup.procs; mkdir /sys/fs/cgroup/x 2>/dev/null || echo cg-ro",
        );
        assert_eq!(
            (out.code, out.stdout.as_str()),
            (0, "1\ncg-ro\n"),
            "{}",
            out.stderr
        );
        return;
    }
    let (_, out) = sh(
        Bundle::new(),
        "ls /sys/fs/cgroup | tr '\\n' ' '; echo; \
         for f in /sys/fs/cgroup/*/cgroup.procs; do cat $f; done | sort -u | tr '\\n' ' '; echo; \
         mkdir /sys/fs/cgroup/pids/x 2>/dev/null || echo cg-ro",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let mut lines = out.stdout.lines();
    let dirs = lines.next().unwrap();
    assert!(dirs.contains("pids") && dirs.contains("memory"), "{dirs}");
    // Only the container's own cgroup is visible: its processes are the shell and its pipe.
    let pids: Vec<u32> = lines
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        pids.contains(&1) && pids.iter().all(|p| *p < 100),
        "{pids:?}"
    );
    assert_eq!(lines.next(), Some("cg-ro"));
}

#[test]
fn tmpcopyup_keeps_the_directory_content() {
    let b = Bundle::new().mount(
        json!({"destination": "/etc", "type": "tmpfs", "source": "tmpfs", "options": ["tmpcopyup", "mode=755"]}),
    );
    let (b, out) = sh(
        b,
        "cat /etc/group; echo new > /etc/passwd && cat /etc/passwd",
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "root:x:0:\ntty:x:5:\nnogroup:x:65534:\nnew\n");
    // The image's /etc is untouched.
    assert!(std::fs::read_to_string(b.rootfs().join("etc/passwd"))
        .unwrap()
        .starts_with("root:"));
}

#[test]
fn no_pivot_uses_chroot() {
    let root = TestRoot::new();
    let b = Bundle::new().args(&["sh", "-c", "cat /proc/self/mountinfo | wc -l; echo ok"]);
    let (stdio, pipes) = Pipes::new();
    let mut c = Container::create(
        &root.config,
        CreateOptions {
            id: unique_id("nopivot"),
            bundle: b.path().to_path_buf(),
            stdio,
            no_pivot: true,
            preserve_fds: Vec::new(),
        },
    )
    .expect("create");
    c.start().unwrap();
    let (stdout, stderr) = pipes.collect();
    assert_eq!(c.wait().unwrap().status, 0, "{stderr}");
    c.delete(false).unwrap();
    assert!(stdout.ends_with("ok\n"), "{stdout}");
}

/// Issue 15: options the runtime has no flag for go to the filesystem as data, as runc passes
/// them; a bind mount's data is ignored by the kernel.
#[test]
fn bind_options_without_a_flag_are_passed_on_like_runc() {
    let b = Bundle::new()
        .mount(
            json!({"destination": "/x", "type": "bind", "source": "/etc",
                      "options": ["bind", "mode=755", "size=1k", "ro"]}),
        )
        .mount(
            json!({"destination": "/y", "type": "bind", "source": "/etc",
                      "options": ["rbind", "bogusopt"]}),
        );
    let (_b, out) = sh(
        b,
        "test -e /x/hostname && test -e /y/hostname && touch /x/f || echo ro",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "ro\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_mounts_fail_cleanly() {
    let root = TestRoot::new();
    let cases = [
        (
            json!({"destination": "/x", "type": "nosuchfs", "source": "none"}),
            "nosuchfs",
        ),
        (
            json!({"destination": "relative", "type": "tmpfs", "source": "tmpfs"}),
            "relative",
        ),
        (
            json!({"destination": "/x", "type": "bind", "source": "/no/such/source", "options": ["rbind"]}),
            "/no/such/source",
        ),
        (
            json!({"destination": "/x", "type": "tmpfs", "source": "tmpfs", "options": ["size=notanumber"]}),
            "/x",
        ),
    ];
    for (mount, needle) in cases {
        let b = Bundle::new().mount(mount.clone());
        let id = unique_id("badmount");
        let (stdio, _pipes) = Pipes::new();
        let msg = match root.create_id(&id, &b, stdio) {
            Ok(c) => {
                let _ = c.delete(true);
                panic!("{mount} was accepted")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains(needle),
            "error for {mount} does not name {needle:?}: {msg}"
        );
        root.assert_nothing_left(&id, &b);
    }
}

#[test]
fn bad_device_fails_cleanly() {
    let root = TestRoot::new();
    let b = Bundle::new().edit(|c| {
        c["linux"]["devices"] = json!([{"path": "/dev/all", "type": "a", "major": 1, "minor": 1}]);
    });
    let id = unique_id("baddev");
    let (stdio, _pipes) = Pipes::new();
    let msg = match root.create_id(&id, &b, stdio) {
        Ok(c) => {
            let _ = c.delete(true);
            panic!("accepted a device of type a")
        }
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("/dev/all") && msg.contains("\"a\""), "{msg}");
    root.assert_nothing_left(&id, &b);
}

#[test]
fn user_namespace_gets_host_device_binds() {
    // mknod is refused in a user namespace: the default devices are binds of the host nodes.
    let b = Bundle::new().userns(100000, 65536);
    let (_, out) = sh(
        b,
        "id -u; for d in null zero tty; do stat -c '%t:%T' /dev/$d; done;          grep -c ' /dev/null ' /proc/self/mountinfo; cat /proc/keys | wc -c",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "0\n1:3\n1:5\n5:0\n1\n0\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn relative_bind_source_is_relative_to_the_bundle() {
    let b = Bundle::new();
    std::fs::create_dir_all(b.path().join("reldata")).unwrap();
    std::fs::write(b.path().join("reldata/f"), "rel\n").unwrap();
    let b = b.mount(json!({"destination": "/rel", "type": "bind", "source": "reldata", "options": ["rbind", "ro"]}));
    let (_, out) = sh(b, "cat /rel/f");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "rel\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn rootfs_propagation_is_applied_to_the_container_root() {
    let script = "awk '$5 == \"/\"' /proc/self/mountinfo";
    let (_, shared) = sh(
        Bundle::new().edit(|c| c["linux"]["rootfsPropagation"] = json!("rshared")),
        script,
    );
    assert_eq!(shared.code, 0, "{}", shared.stderr);
    assert!(shared.stdout.contains(" shared:"), "{}", shared.stdout);
    let (_, private) = sh(
        Bundle::new().edit(|c| c["linux"]["rootfsPropagation"] = json!("rprivate")),
        script,
    );
    assert_eq!(private.code, 0, "{}", private.stderr);
    assert!(
        !private.stdout.contains("shared:") && !private.stdout.contains("master:"),
        "{}",
        private.stdout
    );
}

/// An overlay mounted at the bundle's rootfs, as containerd's snapshotter does; unmounted and
/// removed on drop.
struct Overlay {
    dir: HostDir,
    target: PathBuf,
}

impl Overlay {
    fn over(bundle: &Bundle) -> Overlay {
        let dir = HostDir::new("overlay");
        let lower = dir.0.join("lower");
        std::fs::rename(bundle.rootfs(), &lower).unwrap();
        for d in ["upper", "work"] {
            std::fs::create_dir(dir.0.join(d)).unwrap();
        }
        std::fs::create_dir(bundle.rootfs()).unwrap();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            dir.0.join("upper").display(),
            dir.0.join("work").display()
        );
        nix::mount::mount(
            Some("overlay"),
            &bundle.rootfs(),
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .expect("mount overlay");
        Overlay {
            dir,
            target: bundle.rootfs(),
        }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        let _ = &self.dir;
    }
}

#[test]
fn overlay_rootfs_like_containerd() {
    let b = Bundle::new().readonly_root(false).args(&[
        "sh",
        "-c",
        "echo written > /newfile; cat /newfile",
    ]);
    let overlay = Overlay::over(&b);
    let out = TestRoot::new().run(&b);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "written\n"),
        "{}",
        out.stderr
    );
    // The write went to the upper layer, and only the overlay itself is mounted in the bundle.
    assert!(overlay.dir.0.join("upper/newfile").is_file());
    assert_eq!(
        mounts_under(b.path()).len(),
        1,
        "{:?}",
        mounts_under(b.path())
    );
}

#[test]
fn sysfs_without_own_network_namespace_in_a_user_namespace() {
    // sysfs cannot be mounted there: the host's /sys is bound read-only instead.
    let b = Bundle::new()
        .userns(100000, 65536)
        .without_namespace("network");
    let (_, out) = sh(
        b,
        "ls /sys/class/net | grep -x lo; touch /sys/x 2>/dev/null || echo sys-ro",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "lo\nsys-ro\n"),
        "{}",
        out.stderr
    );
}

#[test]
fn cgroup_namespace_mounts_cgroupfs_directly() {
    let b = Bundle::new().namespace("cgroup", None);
    let probe = if host_is_unified() {
        "/sys/fs/cgroup"
    } else {
        "/sys/fs/cgroup/pids"
    };
    let (_, out) = sh(
        b,
        &format!(
            "cat /proc/self/cgroup | cut -d: -f3 | sort -u; \
             awk '$5 == \"{probe}\" {{print $4}}' /proc/self/mountinfo; grep -x 1 {probe}/cgroup.procs"
        ),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // In its own cgroup namespace the container is at the root of every hierarchy, and the
    // cgroup filesystem is mounted (root "/"), not bound from a host directory.
    assert_eq!(out.stdout, "/\n/\n1\n");
}

#[test]
fn mounts_over_proc_are_refused() {
    let root = TestRoot::new();
    let cases = [
        json!({"destination": "/proc/self", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/proc/sys", "type": "bind", "source": "/tmp", "options": ["rbind"]}),
        json!({"destination": "/proc", "type": "tmpfs", "source": "tmpfs"}),
    ];
    for mount in cases {
        let b = Bundle::new().mount(mount.clone());
        let id = unique_id("procmount");
        let (stdio, _pipes) = Pipes::new();
        let msg = match root.create_id(&id, &b, stdio) {
            Ok(c) => {
                let _ = c.delete(true);
                panic!("{mount} was accepted")
            }
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("/proc"), "{msg}");
        root.assert_nothing_left(&id, &b);
    }
    // A whitelisted file (as lxcfs does) is fine.
    let src = HostDir::new("lxcfs");
    std::fs::write(src.0.join("uptime"), "1.00 2.00\n").unwrap();
    let b = Bundle::new().mount(
        json!({"destination": "/proc/uptime", "type": "bind", "source": src.0.join("uptime"), "options": ["bind", "ro"]}),
    );
    let (_, out) = sh(b, "cat /proc/uptime");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "1.00 2.00\n"),
        "{}",
        out.stderr
    );
}

/// Idmapped bind mounts in a user-namespaced container (mapping 0 -> 100000): host files owned
/// by root show as root inside (nobody without the idmap), what the container's root writes
/// lands on the host as uid 0; a mount's own mappings override the container's; only `ridmap`
/// idmaps the submounts too.
#[test]
fn idmapped_bind_mounts_show_host_ids_through_the_mapping() {
    use std::os::unix::fs::{chown, MetadataExt};
    // On a disk filesystem: idmapped tmpfs (a /tmp) needs Linux 6.3.
    let data = HostDir::new_in(Path::new("/var/lib"), "idmap");
    std::fs::write(data.0.join("root-file"), "r").unwrap();
    std::fs::write(data.0.join("user-file"), "u").unwrap();
    chown(data.0.join("user-file"), Some(1000), Some(1000)).unwrap();
    let sub = data.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let src = data.0.to_str().unwrap();
    let bind = |dest: &str, opts: &[&str]| json!({"destination": dest, "type": "bind", "source": src, "options": opts});
    let mut mapped = bind("/mapped", &["bind"]);
    mapped["uidMappings"] = json!([{"containerID": 0, "hostID": 100010, "size": 65526}]);
    mapped["gidMappings"] = mapped["uidMappings"].clone();
    let b = Bundle::new()
        .userns(100000, 65536)
        .mount(bind("/plain", &["rbind"]))
        .mount(bind("/idmapped", &["bind", "idmap"]))
        .mount(mapped);
    // Root of the user namespace cannot create mount points in the host-owned rootfs.
    for d in ["plain", "idmapped", "mapped", "rec", "top"] {
        std::fs::create_dir(b.path().join("rootfs").join(d)).unwrap();
    }
    // A submount of the source, which both rbinds carry: idmapped with ridmap only. A bind of
    // another disk directory, which Linux 6.1 can idmap (a tmpfs it cannot).
    let other = HostDir::new_in(Path::new("/var/lib"), "idmap-sub");
    let _sub = Unmount::bind(&other.0, &sub);
    let b = b
        .mount(bind("/rec", &["rbind", "ridmap"]))
        .mount(bind("/top", &["rbind", "idmap"]));
    let (_, out) = sh(
        b,
        "stat -c %u:%g /plain/root-file /idmapped/root-file /idmapped/user-file \
         /mapped/root-file /rec/sub /top/sub; touch /idmapped/written",
    );
    nix::mount::umount(&sub).unwrap();
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "65534:65534\n0:0\n1000:1000\n10:10\n0:0\n65534:65534\n"),
        "{}",
        out.stderr
    );
    let written = std::fs::metadata(data.0.join("written")).unwrap();
    assert_eq!((written.uid(), written.gid()), (0, 0));
}

/// Idmapped mounts that cannot be made are refused at create, named, with nothing left.
#[test]
fn impossible_idmapped_mounts_are_named_and_leave_nothing() {
    let root = TestRoot::new();
    let bind = |src: &str, opts: &[&str]| json!({"destination": "/data", "type": "bind", "source": src, "options": opts});
    let cases = [
        // No user namespace to map into.
        (Bundle::new().mount(bind("/tmp", &["bind", "idmap"])), "user namespace"),
        // sysfs cannot be idmapped.
        (
            Bundle::new()
                .userns(100000, 65536)
                .mount(bind("/sys/kernel", &["bind", "idmap"])),
            "cannot idmap",
        ),
        (
            Bundle::new()
                .userns(100000, 65536)
                .mount(json!({"destination": "/data", "type": "tmpfs", "source": "t", "options": ["idmap"]})),
            "bind mounts only",
        ),
    ];
    for (b, needle) in cases {
        let id = unique_id("idmap");
        let (stdio, _pipes) = Pipes::new();
        let msg = match root.create_id(&id, &b, stdio) {
            Ok(c) => {
                let _ = c.delete(true);
                panic!("accepted an impossible idmapped mount ({needle})")
            }
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("/data") && msg.contains(needle),
            "error does not name {needle:?}: {msg}"
        );
        root.assert_nothing_left(&id, &b);
    }
}

/// `rro` (recursive read-only, what CRI asks for `recursiveReadOnly: Enabled`): the submounts
/// of the bind are read-only too, where plain `ro` leaves them writable.
#[test]
fn recursive_read_only_reaches_submounts() {
    let data = HostDir::new("rro");
    let sub = data.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let _sub = Unmount::tmpfs(&sub);
    let src = data.0.to_str().unwrap();
    let b = Bundle::new()
        .mount(json!({"destination": "/ro", "type": "bind", "source": src, "options": ["rbind", "ro"]}))
        .mount(json!({"destination": "/rro", "type": "bind", "source": src, "options": ["rbind", "rro"]}));
    let (_, out) = sh(
        b,
        "for d in /ro /ro/sub /rro /rro/sub; do touch $d/f 2>/dev/null && echo $d rw || echo $d ro; done",
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "/ro ro\n/ro/sub rw\n/rro ro\n/rro/sub ro\n"),
        "{}",
        out.stderr
    );
}
