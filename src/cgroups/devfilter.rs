//! Device rules on cgroup v2: the rule list is reduced as the v1 devices controller would
//! reduce it (runc's devices emulator), compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE` program and
//! attached to the container's cgroup, replacing the program already there without a moment
//! where the cgroup is unfiltered (runc's LoadAttachCgroupDeviceFilter order).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::bpf::{self, Insn};
use super::CgroupError;

const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ACC_ALL: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// `BPF_DEVCG_DEV_BLOCK` / `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// A device class and numbers, `None` for `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key {
    block: bool,
    major: Option<u32>,
    minor: Option<u32>,
}

/// The state the v1 devices controller keeps: a default and the exceptions to it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Emulated {
    pub default_allow: bool,
    pub exceptions: BTreeMap<Key, u8>,
}

fn bad(reason: String) -> CgroupError {
    CgroupError::InvalidResource {
        resource: "devices".into(),
        reason,
    }
}

fn access_bits(r: &LinuxDeviceCgroup) -> u8 {
    // An empty access means rwm, as for the v1 controller (v1::device_rule_string).
    let a = r.access().as_deref().unwrap_or("");
    if a.is_empty() {
        return ACC_ALL;
    }
    a.chars().fold(0, |acc, c| {
        acc | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// A number of the spec: negative is `*`; one above what a device number can be matches no
/// device at all, which `Err` says.
fn number(n: Option<i64>) -> Result<Option<u32>, ()> {
    match n {
        None => Ok(None),
        Some(n) if n < 0 => Ok(None),
        Some(n) if n <= i64::from(i32::MAX) => Ok(Some(n as u32)),
        Some(_) => Err(()),
    }
}

fn letters(access: u8) -> String {
    [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')]
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|(_, c)| *c)
        .collect()
}

fn show(k: &Key, access: u8) -> String {
    let n = |v: Option<u32>| v.map_or("*".to_string(), |v| v.to_string());
    let a = letters(access);
    format!(
        "{} {}:{} {a}",
        if k.block { 'b' } else { 'c' },
        n(k.major),
        n(k.minor)
    )
}

impl Emulated {
    /// Applies the rules in order, as writes to devices.allow / devices.deny would. Like runc,
    /// a rule that would need a hole punched in a wildcard exception is refused (v1 silently
    /// ignores it, which would leave access the spec meant to take away).
    pub fn from_rules(rules: &[LinuxDeviceCgroup]) -> Result<Emulated, CgroupError> {
        let mut e = Emulated::default();
        for r in rules {
            let typ = r.typ().unwrap_or(LinuxDeviceType::A);
            let block = match typ {
                LinuxDeviceType::A => {
                    e.default_allow = r.allow();
                    e.exceptions.clear();
                    continue;
                }
                LinuxDeviceType::B => true,
                LinuxDeviceType::C => false,
                other => {
                    return Err(bad(format!(
                        "type {other:?} (the device cgroup knows a, b and c)"
                    )))
                }
            };
            let (Ok(major), Ok(minor)) = (number(r.major()), number(r.minor())) else {
                log::debug!(
                    "device rule {:?}:{:?} names no possible device; skipped",
                    r.major(),
                    r.minor()
                );
                continue;
            };
            let key = Key {
                block,
                major,
                minor,
            };
            let access = access_bits(r);
            if r.allow() == e.default_allow {
                e.remove(key, access)?;
            } else {
                *e.exceptions.entry(key).or_insert(0) |= access;
            }
        }
        Ok(e)
    }

    fn remove(&mut self, key: Key, access: u8) -> Result<(), CgroupError> {
        for major in [key.major, None] {
            for minor in [key.minor, None] {
                let wider = Key {
                    block: key.block,
                    major,
                    minor,
                };
                if wider == key {
                    continue;
                }
                if let Some(have) = self.exceptions.get(&wider).filter(|a| **a & access != 0) {
                    return Err(bad(format!(
                        "rule {} cannot be expressed: it punches a hole in the wildcard rule {}",
                        show(&key, access),
                        show(&wider, *have)
                    )));
                }
            }
        }
        if let Some(have) = self.exceptions.get_mut(&key) {
            *have &= !access;
            if *have == 0 {
                self.exceptions.remove(&key);
            }
        }
        Ok(())
    }

    /// What the exceptions of a default-deny list allow: `(block, major, minor, access)`,
    /// `None` for `*`, access as `rwm` letters.
    pub(crate) fn allowed(&self) -> Vec<(bool, Option<u32>, Option<u32>, String)> {
        self.exceptions
            .iter()
            .map(|(k, a)| (k.block, k.major, k.minor, letters(*a)))
            .collect()
    }

    /// The program: registers R2 type, R3 access, R4 major, R5 minor from `struct
    /// bpf_cgroup_dev_ctx`; one block per exception that returns its verdict when the device
    /// matches; the default verdict at the end.
    pub fn program(&self) -> Vec<Insn> {
        let mut p = vec![
            bpf::ldx_w(2, 1, 0),
            bpf::and32_imm(2, 0xffff),
            bpf::ldx_w(3, 1, 0),
            bpf::rsh32_imm(3, 16),
            bpf::ldx_w(4, 1, 4),
            bpf::ldx_w(5, 1, 8),
        ];
        let verdict = i32::from(!self.default_allow);
        for (key, access) in &self.exceptions {
            let typ = if key.block { DEV_BLOCK } else { DEV_CHAR };
            // Every test jumps past this block when it fails; offsets are set once its length
            // is known.
            let mut block = vec![bpf::jne_imm(2, typ, 0)];
            if *access != ACC_ALL {
                // Every access asked for must be in the rule: (asked & rule) == asked.
                block.push(bpf::mov32_reg(1, 3));
                block.push(bpf::and32_imm(1, i32::from(*access)));
                block.push(bpf::jne_reg(1, 3, 0));
            }
            if let Some(m) = key.major {
                block.push(bpf::jne_imm(4, m as i32, 0));
            }
            if let Some(m) = key.minor {
                block.push(bpf::jne_imm(5, m as i32, 0));
            }
            block.push(bpf::mov32_imm(0, verdict));
            block.push(bpf::exit());
            let len = block.len();
            for (i, insn) in block.iter_mut().enumerate() {
                if bpf::is_conditional_jump(insn) {
                    insn.off = (len - i - 1) as i16;
                }
            }
            p.extend(block);
        }
        p.push(bpf::mov32_imm(0, i32::from(self.default_allow)));
        p.push(bpf::exit());
        p
    }
}

fn failed(dir: &Path, op: &'static str, source: std::io::Error) -> CgroupError {
    CgroupError::DeviceFilter {
        path: dir.to_path_buf(),
        op,
        reason: source.to_string(),
    }
}

/// Compiles `rules` (spec rules then runc's defaults) and installs the program on the cgroup2
/// directory `dir`, replacing any device program attached there before; with `only_own`
/// (a systemd unit, which attaches a program of its own) only this runtime's programs are
/// replaced and systemd's stays beside it.
pub(crate) fn install(
    dir: &Path,
    rules: &[LinuxDeviceCgroup],
    only_own: bool,
) -> Result<(), CgroupError> {
    let emulated = Emulated::from_rules(rules)?;
    let insns = emulated.program();
    let cgroup = super::open_dir(dir)?;
    let mut old: Vec<OwnedFd> = bpf::query_device_programs(cgroup.as_fd())
        .map_err(|e| failed(dir, "BPF_PROG_QUERY", e))?
        .into_iter()
        .map(bpf::prog_fd_by_id)
        .collect::<Result<_, _>>()
        .map_err(|e| failed(dir, "BPF_PROG_GET_FD_BY_ID of an attached program", e))?;
    if only_own {
        let mut own = Vec::new();
        for fd in old {
            let name =
                bpf::prog_name(fd.as_fd()).map_err(|e| failed(dir, "BPF_OBJ_GET_INFO_BY_FD", e))?;
            if name == bpf::PROG_NAME {
                own.push(fd);
            }
        }
        old = own;
    }
    let prog = load(&insns).map_err(|(source, log)| CgroupError::DeviceFilter {
        path: dir.to_path_buf(),
        op: "BPF_PROG_LOAD",
        reason: if log.is_empty() {
            source.to_string()
        } else {
            format!("{source}; verifier: {log}")
        },
    })?;
    if let [one] = old.as_slice() {
        match bpf::attach(
            cgroup.as_fd(),
            prog.as_fd(),
            bpf::BPF_F_ALLOW_MULTI | bpf::BPF_F_REPLACE,
            Some(one.as_fd()),
        ) {
            Ok(()) => {
                log::debug!("device filter of {} replaced", dir.display());
                return Ok(());
            }
            // Kernels before 5.6 have no BPF_F_REPLACE: attach, then detach below.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::debug!("BPF_F_REPLACE refused ({e}); attaching before detaching")
            }
            Err(e) => return Err(failed(dir, "BPF_PROG_ATTACH with BPF_F_REPLACE", e)),
        }
    }
    bpf::attach(cgroup.as_fd(), prog.as_fd(), bpf::BPF_F_ALLOW_MULTI, None).map_err(|e| {
        failed(
            dir,
            "BPF_PROG_ATTACH (BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)",
            e,
        )
    })?;
    if old.len() > 1 {
        log::warn!(
            "{} had {} device programs; all replaced by one",
            dir.display(),
            old.len()
        );
    }
    for o in &old {
        // A program left behind would keep allowing what the new rules refuse.
        bpf::detach(cgroup.as_fd(), o.as_fd())
            .map_err(|e| failed(dir, "BPF_PROG_DETACH of the previous device program", e))?;
    }
    log::debug!(
        "device filter attached to {} ({} rules)",
        dir.display(),
        emulated.exceptions.len()
    );
    Ok(())
}

/// Loads the program; on EPERM (kernels before 5.11 charge programs to RLIMIT_MEMLOCK) the soft
/// limit is raised to the hard one, which needs no privilege, and the load retried once.
fn load(insns: &[Insn]) -> Result<OwnedFd, (std::io::Error, String)> {
    match bpf::load_cgroup_device(insns, "Apache-2.0", bpf::PROG_NAME) {
        Ok(fd) => Ok(fd),
        Err(f) if f.error.raw_os_error() == Some(libc::EPERM) => {
            use nix::sys::resource::{getrlimit, setrlimit, Resource};
            if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_MEMLOCK) {
                if soft < hard && setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard).is_ok() {
                    return bpf::load_cgroup_device(insns, "Apache-2.0", bpf::PROG_NAME)
                        .map_err(|f| (f.error, f.log));
                }
            }
            Err((f.error, f.log))
        }
        Err(f) => Err((f.error, f.log)),
    }
}

/// Ids of the device programs attached directly to the cgroup2 directory `dir`.
pub fn attached_programs(dir: &Path) -> Result<Vec<u32>, CgroupError> {
    let cgroup = super::open_dir(dir)?;
    bpf::query_device_programs(cgroup.as_fd()).map_err(|e| failed(dir, "BPF_PROG_QUERY", e))
}

/// The names of the device programs attached to `dir` (this runtime's are `pelagos_dev`,
/// systemd's `sd_devices`), sorted.
pub fn attached_program_names(dir: &Path) -> Result<Vec<String>, CgroupError> {
    let mut names = Vec::new();
    for id in attached_programs(dir)? {
        let fd = bpf::prog_fd_by_id(id).map_err(|e| failed(dir, "BPF_PROG_GET_FD_BY_ID", e))?;
        names.push(
            bpf::prog_name(fd.as_fd()).map_err(|e| failed(dir, "BPF_OBJ_GET_INFO_BY_FD", e))?,
        );
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    fn r(
        allow: bool,
        t: Option<LinuxDeviceType>,
        maj: i64,
        min: i64,
        a: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default().allow(allow).access(a);
        if let Some(t) = t {
            b = b.typ(t);
        }
        if maj >= 0 {
            b = b.major(maj);
        }
        if min >= 0 {
            b = b.minor(min);
        }
        b.build().unwrap()
    }

    use LinuxDeviceType::{A, B, C};

    /// Runs the program as the kernel would for one device access (a small interpreter of
    /// the opcodes the generator uses).
    fn verdict(p: &[Insn], block: bool, major: u32, minor: u32, access: u8) -> u32 {
        let ctx = [
            (u32::from(access) << 16) | if block { 1 } else { 2 },
            major,
            minor,
        ];
        let mut reg = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                0x61 => {
                    assert_eq!(src, 1, "loads only from the context");
                    reg[dst] = u64::from(ctx[i.off as usize / 4]);
                }
                0x54 => reg[dst] = u64::from(reg[dst] as u32 & i.imm as u32),
                0x74 => reg[dst] = u64::from((reg[dst] as u32) >> i.imm),
                0xb4 => reg[dst] = u64::from(i.imm as u32),
                0xbc => reg[dst] = u64::from(reg[src] as u32),
                0x55 if reg[dst] != i.imm as i64 as u64 => pc = (pc as i64 + i.off as i64) as usize,
                0x5d if reg[dst] != reg[src] => pc = (pc as i64 + i.off as i64) as usize,
                0x55 | 0x5d => {}
                0x95 => return reg[0] as u32,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    fn with_defaults(spec: Vec<LinuxDeviceCgroup>) -> Vec<Insn> {
        let mut rules = spec;
        rules.extend(super::super::default_device_rules());
        Emulated::from_rules(&rules).unwrap().program()
    }

    const RW: u8 = ACC_READ | ACC_WRITE;

    #[test]
    fn containerd_default_spec() {
        let p = with_defaults(vec![r(false, None, -1, -1, "rwm")]);
        // mknod of anything, but no read or write of a disk.
        assert_eq!(verdict(&p, true, 8, 0, ACC_MKNOD), 1);
        assert_eq!(verdict(&p, true, 8, 0, ACC_READ), 0);
        assert_eq!(verdict(&p, true, 8, 0, ACC_WRITE), 0);
        assert_eq!(verdict(&p, true, 254, 0, RW), 0);
        assert_eq!(verdict(&p, false, 1, 11, ACC_WRITE), 0); // kmsg
        assert_eq!(verdict(&p, false, 1, 3, RW), 1); // null
        assert_eq!(verdict(&p, false, 1, 5, ACC_READ), 1); // zero
        assert_eq!(verdict(&p, false, 136, 7, RW), 1); // pts/7
        assert_eq!(verdict(&p, false, 5, 2, RW), 1); // ptmx
        assert_eq!(verdict(&p, false, 10, 200, RW), 1); // net/tun
        assert_eq!(verdict(&p, false, 10, 229, RW), 0); // fuse
    }

    #[test]
    fn device_passthrough_allows_exactly_that_node() {
        let p = with_defaults(vec![
            r(false, None, -1, -1, "rwm"),
            r(true, Some(B), 254, 0, "rw"),
            r(true, Some(C), 10, 229, "rwm"),
        ]);
        assert_eq!(verdict(&p, true, 254, 0, RW), 1);
        assert_eq!(verdict(&p, true, 254, 1, ACC_READ), 0);
        assert_eq!(verdict(&p, false, 254, 0, ACC_READ), 0);
        assert_eq!(verdict(&p, false, 10, 229, RW), 1);
    }

    #[test]
    fn privileged_allows_everything() {
        let p = with_defaults(vec![r(true, None, -1, -1, "rwm")]);
        assert_eq!(p.len(), 8, "no exceptions: {p:?}");
        assert_eq!(verdict(&p, true, 8, 0, RW), 1);
        assert_eq!(verdict(&p, false, 1, 11, ACC_WRITE), 1);
    }

    #[test]
    fn later_rules_win_and_a_resets() {
        // A deny after an allow of the same node takes the access away again.
        let p = with_defaults(vec![
            r(false, Some(A), -1, -1, "rwm"),
            r(true, Some(C), 10, 229, "rwm"),
            r(false, Some(C), 10, 229, "w"),
        ]);
        assert_eq!(verdict(&p, false, 10, 229, ACC_READ), 1);
        assert_eq!(verdict(&p, false, 10, 229, RW), 0);
        // "a" forgets everything before it.
        let e = Emulated::from_rules(&[
            r(true, Some(C), 10, 229, "rwm"),
            r(false, Some(A), 3, 3, "r"),
        ])
        .unwrap();
        assert_eq!(e, Emulated::default());
        // In allow-by-default mode the exceptions are denials.
        let p =
            Emulated::from_rules(&[r(true, None, -1, -1, "rwm"), r(false, Some(B), 8, -1, "rw")])
                .unwrap()
                .program();
        assert_eq!(verdict(&p, true, 8, 3, ACC_READ), 0);
        assert_eq!(verdict(&p, true, 8, 3, ACC_MKNOD), 1);
        assert_eq!(verdict(&p, true, 9, 3, ACC_READ), 1);
    }

    #[test]
    fn holes_in_wildcards_are_refused() {
        let e = Emulated::from_rules(&[
            r(false, None, -1, -1, "rwm"),
            r(true, Some(C), 10, -1, "rwm"),
            r(false, Some(C), 10, 229, "r"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("c 10:229 r") && e.contains("c 10:* rwm"), "{e}");
        // Unrelated access bits are fine.
        assert!(Emulated::from_rules(&[
            r(false, None, -1, -1, "rwm"),
            r(true, Some(C), 10, -1, "m"),
            r(false, Some(C), 10, 229, "rw"),
        ])
        .is_ok());
    }

    #[test]
    fn impossible_numbers_match_nothing() {
        let p = with_defaults(vec![
            r(false, None, -1, -1, "rwm"),
            r(true, Some(B), 1 << 40, 0, "rwm"),
        ]);
        assert_eq!(verdict(&p, true, 0, 0, ACC_READ), 0);
    }

    /// With a systemd unit, systemd's own program (here one named as systemd names it) stays
    /// beside ours; only ours is replaced. Needs root and a cgroup2 mount.
    #[test]
    fn only_own_programs_are_replaced_beside_systemd() {
        let mount = super::super::fs::hierarchies()
            .unified
            .clone()
            .expect("a cgroup2 mount (unified or hybrid host)");
        let dir = mount.join(format!("pelagos-unit-devfilter-sd-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let allow_all = [bpf::mov32_imm(0, 1), bpf::exit()];
        let theirs = bpf::load_cgroup_device(&allow_all, "GPL", "sd_devices").unwrap();
        let cg = super::super::open_dir(&dir).unwrap();
        bpf::attach(cg.as_fd(), theirs.as_fd(), bpf::BPF_F_ALLOW_MULTI, None).unwrap();
        let mut all = vec![r(false, None, -1, -1, "rwm")];
        all.extend(super::super::default_device_rules());
        let names = |ids: &[u32]| -> Vec<String> {
            let mut n: Vec<String> = ids
                .iter()
                .map(|id| bpf::prog_name(bpf::prog_fd_by_id(*id).unwrap().as_fd()).unwrap())
                .collect();
            n.sort();
            n
        };
        install(&dir, &all, true).unwrap();
        let first = attached_programs(&dir).unwrap();
        let first_names = names(&first);
        install(&dir, &all, true).unwrap();
        let second = attached_programs(&dir).unwrap();
        let second_names = names(&second);
        install(&dir, &all, false).unwrap();
        let last = attached_programs(&dir).unwrap();
        drop(cg);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(first_names, ["pelagos_dev", "sd_devices"]);
        assert_eq!(second_names, ["pelagos_dev", "sd_devices"]);
        assert_ne!(first, second, "ours was not replaced");
        assert_eq!(names(&last), ["pelagos_dev"]);
    }

    /// Needs root and a cgroup2 mount (unified hosts, or the cgroup2 half of hybrid ones: the
    /// kernel runs device programs of cgroup2 whatever v1 controllers there are).
    #[test]
    fn kernel_takes_the_program_and_replaces_it() {
        let mount = super::super::fs::hierarchies()
            .unified
            .clone()
            .expect("a cgroup2 mount (unified or hybrid host)");
        let dir = mount.join(format!("pelagos-unit-devfilter-{}", std::process::id()));
        let scratch =
            std::env::temp_dir().join(format!("pelagos-devfilter-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::create_dir(&scratch).unwrap();
        let rules = vec![r(false, None, -1, -1, "rwm")];
        let mut all = rules.clone();
        all.extend(super::super::default_device_rules());
        install(&dir, &all, false).unwrap();
        let first = attached_programs(&dir).unwrap();
        install(&dir, &all, false).unwrap();
        let second = attached_programs(&dir).unwrap();
        let script = format!(
            "read go; mknod {0}/blk b 7 0 && echo mknod-ok; head -c 1 {0}/blk 2>&1; echo x > /dev/null && echo null-ok",
            scratch.display()
        );
        let mut child = std::process::Command::new("/bin/busybox")
            .args(["sh", "-c", &script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        super::super::fs::write(&dir, "cgroup.procs", &child.id().to_string()).unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(first, second, "the program was not replaced");
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.starts_with("mknod-ok\n")
                && out.contains("Operation not permitted")
                && out.ends_with("null-ok\n"),
            "{out}"
        );
    }
}
