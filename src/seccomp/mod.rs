//! seccomp: compiles an OCI `LinuxSeccomp` profile to BPF with libseccomp (in the runtime,
//! cached per profile) and loads the BPF in the container (no libseccomp work after fork).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use nix::errno::Errno;
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: syscalls[{index}] ({names}): {reason}")]
    Rule {
        index: usize,
        names: String,
        reason: String,
    },
    #[error("seccomp: {0} is not supported (no seccomp notify listener)")]
    Unsupported(String),
    #[error("seccomp: libseccomp {what}: {source}")]
    Lib {
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp: load filter (flags {flags:#x}): {errno}")]
    Load { flags: u32, errno: Errno },
    #[error("seccomp: {0}")]
    Other(String),
}

/// A compiled filter, ready to load with seccomp(SECCOMP_SET_MODE_FILTER).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CompiledFilter {
    /// Raw `struct sock_filter` array, 8 bytes each, native endian.
    pub bpf: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* bits from the profile's `flags`.
    pub flags: u32,
}

/// errno returned when a profile asks for SCMP_ACT_ERRNO/TRACE without a value (runc: EPERM).
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

fn action(a: LinuxSeccompAction, errno_ret: Option<u32>) -> Result<ScmpAction, String> {
    let ret = errno_ret.unwrap_or(DEFAULT_ERRNO);
    Ok(match a {
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActErrno => {
            let e = i32::try_from(ret)
                .ok()
                .filter(|e| *e <= i32::from(u16::MAX));
            ScmpAction::Errno(e.ok_or_else(|| format!("errnoRet {ret} out of range"))?)
        }
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(
            u16::try_from(ret).map_err(|_| format!("errnoRet {ret} out of range"))?,
        ),
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActNotify => return Err("SCMP_ACT_NOTIFY".into()),
    })
}

fn arch(a: Arch) -> ScmpArch {
    match a {
        Arch::ScmpArchNative => ScmpArch::Native,
        Arch::ScmpArchX86 => ScmpArch::X86,
        Arch::ScmpArchX86_64 => ScmpArch::X8664,
        Arch::ScmpArchX32 => ScmpArch::X32,
        Arch::ScmpArchArm => ScmpArch::Arm,
        Arch::ScmpArchAarch64 => ScmpArch::Aarch64,
        Arch::ScmpArchMips => ScmpArch::Mips,
        Arch::ScmpArchMips64 => ScmpArch::Mips64,
        Arch::ScmpArchMips64n32 => ScmpArch::Mips64N32,
        Arch::ScmpArchMipsel => ScmpArch::Mipsel,
        Arch::ScmpArchMipsel64 => ScmpArch::Mipsel64,
        Arch::ScmpArchMipsel64n32 => ScmpArch::Mipsel64N32,
        Arch::ScmpArchPpc => ScmpArch::Ppc,
        Arch::ScmpArchPpc64 => ScmpArch::Ppc64,
        Arch::ScmpArchPpc64le => ScmpArch::Ppc64Le,
        Arch::ScmpArchS390 => ScmpArch::S390,
        Arch::ScmpArchS390x => ScmpArch::S390X,
        Arch::ScmpArchParisc => ScmpArch::Parisc,
        Arch::ScmpArchParisc64 => ScmpArch::Parisc64,
        Arch::ScmpArchRiscv64 => ScmpArch::Riscv64,
        Arch::ScmpArchLoongarch64 => ScmpArch::Loongarch64,
        Arch::ScmpArchM68k => ScmpArch::M68k,
        Arch::ScmpArchSh => ScmpArch::Sh,
        Arch::ScmpArchSheb => ScmpArch::Sheb,
    }
}

fn filter_flag(f: LinuxSeccompFilterFlag) -> u32 {
    (match f {
        LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
        LinuxSeccompFilterFlag::SeccompFilterFlagTsync => libc::SECCOMP_FILTER_FLAG_TSYNC,
        LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
            libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
        }
    }) as u32
}

fn compare_op(op: LinuxSeccompOperator, value: u64) -> ScmpCompareOp {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => ScmpCompareOp::NotEqual,
        LinuxSeccompOperator::ScmpCmpLt => ScmpCompareOp::Less,
        LinuxSeccompOperator::ScmpCmpLe => ScmpCompareOp::LessOrEqual,
        LinuxSeccompOperator::ScmpCmpEq => ScmpCompareOp::Equal,
        LinuxSeccompOperator::ScmpCmpGe => ScmpCompareOp::GreaterEqual,
        LinuxSeccompOperator::ScmpCmpGt => ScmpCompareOp::Greater,
        // OCI: `value` is the mask, `valueTwo` the datum compared after masking.
        LinuxSeccompOperator::ScmpCmpMaskedEq => ScmpCompareOp::MaskedEqual(value),
    }
}

fn lib(what: impl Into<String>) -> impl FnOnce(libseccomp::error::SeccompError) -> SeccompError {
    let what = what.into();
    move |source| SeccompError::Lib { what, source }
}

/// Builds the BPF for `profile` (no caching).
pub fn compile_uncached(profile: &LinuxSeccomp) -> Result<CompiledFilter, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())
        .map_err(|a| SeccompError::Unsupported(format!("{a} as defaultAction")))?;
    let mut ctx = ScmpFilterContext::new(default).map_err(lib("create filter"))?;
    // We export the BPF and load it ourselves; NNP is the runtime's decision.
    ctx.set_ctl_nnp(false)
        .map_err(lib("disable NNP attribute"))?;
    for a in profile.architectures().iter().flatten() {
        ctx.add_arch(arch(*a))
            .map_err(lib(format!("add architecture {a}")))?;
    }
    for (index, rule) in profile.syscalls().iter().flatten().enumerate() {
        let rule_err = |reason: String| SeccompError::Rule {
            index,
            names: rule.names().join(","),
            reason,
        };
        let act = match action(rule.action(), rule.errno_ret()) {
            Ok(a) => a,
            Err(a) if a == "SCMP_ACT_NOTIFY" => {
                return Err(SeccompError::Unsupported(format!(
                    "{a} for {}",
                    rule.names().join(",")
                )))
            }
            Err(reason) => return Err(rule_err(reason)),
        };
        if act == default {
            // libseccomp refuses rules equal to the default action; they are no-ops anyway.
            continue;
        }
        let args = rule.args().clone().unwrap_or_default();
        let mut per_index = [0usize; 6];
        let mut conds = Vec::with_capacity(args.len());
        for a in &args {
            if a.index() > 5 {
                return Err(rule_err(format!(
                    "argument index {} out of range 0..=5",
                    a.index()
                )));
            }
            per_index[a.index()] += 1;
            let datum = match a.op() {
                LinuxSeccompOperator::ScmpCmpMaskedEq => a.value_two().unwrap_or(0),
                _ => a.value(),
            };
            conds.push(ScmpArgCompare::new(
                a.index() as u32,
                compare_op(a.op(), a.value()),
                datum,
            ));
        }
        for name in rule.names() {
            let sys = match ScmpSyscall::from_name(name) {
                Ok(s) => s,
                Err(_) => {
                    // Profiles list syscalls of every kernel and arch; runc skips unknown ones.
                    log::debug!("seccomp: syscall {name:?} unknown to libseccomp, skipped");
                    continue;
                }
            };
            let what = || format!("add rule for {name}");
            if conds.is_empty() {
                ctx.add_rule(act, sys)
                    .map_err(|e| rule_err(format!("{}: {e}", what())))?;
            } else if per_index.iter().any(|n| *n > 1) {
                // Several conditions on one argument cannot all hold: like runc, each becomes
                // its own rule (OR) instead of one impossible conjunction.
                for c in &conds {
                    ctx.add_rule_conditional(act, sys, std::slice::from_ref(c))
                        .map_err(|e| rule_err(format!("{}: {e}", what())))?;
                }
            } else {
                ctx.add_rule_conditional(act, sys, &conds)
                    .map_err(|e| rule_err(format!("{}: {e}", what())))?;
            }
        }
    }
    let flags = profile
        .flags()
        .iter()
        .flatten()
        .fold(0u32, |f, x| f | filter_flag(*x));
    let mut bpf = export(&ctx)?;
    if !matches!(default, ScmpAction::Allow | ScmpAction::Log) {
        let mut arches = vec![ScmpArch::native()];
        arches.extend(profile.architectures().iter().flatten().map(|a| arch(*a)));
        let names: Vec<&str> = profile
            .syscalls()
            .iter()
            .flatten()
            .flat_map(|r| r.names().iter().map(String::as_str))
            .collect();
        let mut stub = enosys_stub(&newest_known(&arches, &names));
        stub.append(&mut bpf);
        bpf = stub;
    }
    Ok(CompiledFilter { bpf, flags })
}

/// For each architecture the stub can tell (its audit value), the highest syscall number the
/// profile names there.
fn newest_known(arches: &[ScmpArch], names: &[&str]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for a in arches {
        let audit = match a {
            ScmpArch::X8664 => AUDIT_ARCH_X86_64,
            ScmpArch::X86 => AUDIT_ARCH_I386,
            ScmpArch::Aarch64 => AUDIT_ARCH_AARCH64,
            ScmpArch::Arm => AUDIT_ARCH_ARM,
            _ => continue,
        };
        let last = names
            .iter()
            .filter_map(|n| ScmpSyscall::from_name_by_arch(n, *a).ok())
            .map(i32::from)
            .filter(|nr| *nr >= 0)
            .max();
        if let (Some(last), false) = (last, out.iter().any(|(x, _)| *x == audit)) {
            out.push((audit, last as u32));
        }
    }
    out
}

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// x32 syscalls come as x86_64 with this bit set in the number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// runc's "enosys" patch as a prefix to the filter: on each architecture of `newest` (audit
/// value, highest syscall number the profile names), a syscall above that number returns
/// ENOSYS instead of the profile's default action, so that libc's fallbacks for syscalls newer
/// than the profile (clone3 → clone, faccessat2 → faccessat, ...) work. Everything else falls
/// through to the filter, which loads what it needs itself.
fn enosys_stub(newest: &[(u32, u32)]) -> Vec<u8> {
    const LD_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const JGT: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
    const JA: u16 = 0x05; // BPF_JMP | BPF_JA
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    const NR: u32 = 0; // offsetof(struct seccomp_data, nr)
    const ARCH: u32 = 4; // offsetof(struct seccomp_data, arch)
    if newest.is_empty() {
        return Vec::new();
    }
    let block = |audit: u32| if audit == AUDIT_ARCH_X86_64 { 4 } else { 3 };
    // ld arch, the blocks, `ja` over the return, `ret ENOSYS`; the filter follows.
    let enosys_at = 1 + newest.iter().map(|(a, _)| block(*a)).sum::<usize>() + 1;
    let filter_at = enosys_at + 1;
    let mut insns: Vec<(u16, u8, u8, u32)> = vec![(LD_ABS, 0, 0, ARCH)];
    for (audit, last) in newest {
        let start = insns.len();
        let size = block(*audit);
        // Relative jumps count from the next instruction.
        let to = |target: usize, at: usize| (target - at - 1) as u8;
        insns.push((JEQ, 0, to(start + size, start), *audit));
        insns.push((LD_ABS, 0, 0, NR));
        if *audit == AUDIT_ARCH_X86_64 {
            let at = insns.len();
            insns.push((JGE, to(filter_at, at), 0, X32_SYSCALL_BIT));
        }
        let at = insns.len();
        insns.push((JGT, to(enosys_at, at), to(filter_at, at), *last));
    }
    insns.push((JA, 0, 0, 1));
    insns.push((RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32));
    insns
        .into_iter()
        .flat_map(|(code, jt, jf, k)| {
            let mut b = code.to_ne_bytes().to_vec();
            b.extend([jt, jf]);
            b.extend(k.to_ne_bytes());
            b
        })
        .collect()
}

/// seccomp_export_bpf writes to an fd (the in-memory variant needs libseccomp 2.6).
fn export(ctx: &ScmpFilterContext) -> Result<Vec<u8>, SeccompError> {
    use std::io::{Read, Seek};
    let fd =
        nix::sys::memfd::memfd_create(c"pelagos-seccomp", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .map_err(|e| SeccompError::Other(format!("memfd_create: {e}")))?;
    ctx.export_bpf(&fd).map_err(lib("export bpf"))?;
    let mut f = std::fs::File::from(fd);
    let mut bpf = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bpf))
        .map_err(|e| SeccompError::Other(format!("read exported bpf: {e}")))?;
    if bpf.is_empty()
        || !bpf
            .len()
            .is_multiple_of(std::mem::size_of::<libc::sock_filter>())
    {
        return Err(SeccompError::Other(format!(
            "exported bpf has a bad size {}",
            bpf.len()
        )));
    }
    Ok(bpf)
}

/// Compiled filters by serialized profile. Profiles are few (one per distinct security
/// configuration), so the map is bounded only by a generous cap.
static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, Arc<CompiledFilter>>>> = OnceLock::new();
const CACHE_MAX: usize = 256;

/// Compiles (or returns from the process-wide cache) the filter for `profile`. Errors name the
/// bad syscall, action, architecture, operator or flag.
pub fn compile(profile: &LinuxSeccomp) -> Result<Arc<CompiledFilter>, SeccompError> {
    let key = serde_json::to_vec(profile)
        .map_err(|e| SeccompError::Other(format!("serialize profile: {e}")))?;
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(Arc::clone(hit));
    }
    // Compiled without the lock held: concurrent creates of other profiles are not serialized.
    let compiled = Arc::new(compile_uncached(profile)?);
    let mut map = cache.lock().unwrap_or_else(|p| p.into_inner());
    if map.len() >= CACHE_MAX {
        map.clear();
    }
    Ok(Arc::clone(map.entry(key).or_insert(compiled)))
}

/// A compiled filter laid out for the kernel, so that installing it makes no syscall but the
/// one that loads it: the setup helper installs it right before execve, and everything between
/// the two would have to be allowed by the user's profile.
pub struct Program {
    insns: Vec<libc::sock_filter>,
    flags: u32,
}

impl Program {
    pub fn new(filter: &CompiledFilter) -> Result<Program, SeccompError> {
        let size = std::mem::size_of::<libc::sock_filter>();
        if filter.bpf.is_empty()
            || !filter.bpf.len().is_multiple_of(size)
            || filter.bpf.len() / size > usize::from(u16::MAX)
        {
            return Err(SeccompError::Other(format!(
                "bad filter size {} bytes",
                filter.bpf.len()
            )));
        }
        let insns = filter
            .bpf
            .chunks_exact(size)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Program {
            insns,
            flags: filter.flags,
        })
    }

    /// Installs the filter on the calling thread (no_new_privileges or CAP_SYS_ADMIN must hold).
    pub fn install(&self) -> Result<(), SeccompError> {
        let prog = libc::sock_fprog {
            len: self.insns.len() as u16,
            filter: self.insns.as_ptr().cast_mut(),
        };
        // SAFETY: seccomp reads `prog` and the `len` instructions it points to, all alive here.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                self.flags as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        match Errno::result(ret) {
            Ok(_) => Ok(()),
            Err(Errno::ENOSYS) if self.flags == 0 => {
                // SAFETY: as above; PR_SET_SECCOMP reads the same program.
                let ret = unsafe {
                    libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                        &prog as *const libc::sock_fprog,
                    )
                };
                Errno::result(ret)
                    .map(drop)
                    .map_err(|errno| SeccompError::Load { flags: 0, errno })
            }
            Err(errno) => Err(SeccompError::Load {
                flags: self.flags,
                errno,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    /// Runs the stub on (arch, nr): `Some(return value)`, or `None` when it falls through to
    /// the filter after it.
    fn run_stub(stub: &[u8], arch: u32, nr: u32) -> Option<u32> {
        let insns: Vec<(u16, u8, u8, u32)> = stub
            .chunks_exact(8)
            .map(|c| {
                let k = u32::from_ne_bytes([c[4], c[5], c[6], c[7]]);
                (u16::from_ne_bytes([c[0], c[1]]), c[2], c[3], k)
            })
            .collect();
        let (mut pc, mut acc) = (0usize, 0u32);
        while pc < insns.len() {
            let (code, jt, jf, k) = insns[pc];
            let jump = |cond: bool| usize::from(if cond { jt } else { jf });
            pc += 1 + match code {
                0x20 => {
                    acc = if k == 0 { nr } else { arch };
                    0
                }
                0x15 => jump(acc == k),
                0x35 => jump(acc >= k),
                0x25 => jump(acc > k),
                0x05 => k as usize,
                0x06 => return Some(k),
                other => panic!("unexpected opcode {other:#x}"),
            };
        }
        assert_eq!(pc, insns.len(), "jumped past the filter's start");
        None
    }

    #[test]
    fn enosys_stub_answers_only_newer_syscalls_of_known_arches() {
        let stub = enosys_stub(&[(AUDIT_ARCH_X86_64, 434), (AUDIT_ARCH_I386, 400)]);
        let enosys = Some(libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert_eq!(run_stub(&stub, AUDIT_ARCH_X86_64, 435), enosys);
        assert_eq!(run_stub(&stub, AUDIT_ARCH_X86_64, 434), None);
        assert_eq!(run_stub(&stub, AUDIT_ARCH_X86_64, 0), None);
        // x32 numbers carry their own bit: left to the filter.
        assert_eq!(
            run_stub(&stub, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | 1),
            None
        );
        assert_eq!(run_stub(&stub, AUDIT_ARCH_I386, 401), enosys);
        assert_eq!(run_stub(&stub, AUDIT_ARCH_I386, 400), None);
        assert_eq!(run_stub(&stub, AUDIT_ARCH_AARCH64, 999), None);
        assert!(enosys_stub(&[]).is_empty());
    }

    #[test]
    fn allow_by_default_profiles_get_no_stub() {
        let allow = profile(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
        );
        let deny = profile(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ALLOW"}]}"#,
        );
        let (a, d) = (
            compile_uncached(&allow).unwrap(),
            compile_uncached(&deny).unwrap(),
        );
        let native = newest_known(&[ScmpArch::native()], &["mkdir"]);
        assert_eq!(native.len(), 1);
        let stub = enosys_stub(&native);
        assert!(d.bpf.starts_with(&stub) && !a.bpf.starts_with(&stub));
    }

    #[test]
    fn small_profile_compiles() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["mkdir","mkdirat","no_such_syscall_xyz"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                            {"names":["personality"],"action":"SCMP_ACT_ERRNO",
                             "args":[{"index":0,"value":255,"valueTwo":8,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        let f = compile_uncached(&p).unwrap();
        assert_eq!(f.flags, libc::SECCOMP_FILTER_FLAG_LOG as u32);
        assert!(f.bpf.len().is_multiple_of(8));
        assert!(f.bpf.len() > 8 * 4);
    }

    #[test]
    fn moby_like_default_profile_compiles() {
        let json = include_str!("moby_default.json");
        let f = compile_uncached(&profile(json)).unwrap();
        assert!(f.bpf.len() / 8 > 100, "{} instructions", f.bpf.len() / 8);
    }

    #[test]
    fn cache_hit_returns_the_same_arc() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":38}]}"#,
        );
        let a = compile(&p).unwrap();
        let b = compile(&p.clone()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let other = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO","errnoRet":39}]}"#,
        );
        assert!(!Arc::ptr_eq(&a, &compile(&other).unwrap()));
    }

    #[test]
    fn concurrent_compiles_share_one_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["acct"],"action":"SCMP_ACT_ERRNO","errnoRet":41}]}"#,
        );
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || compile(&p).unwrap())
            })
            .collect();
        let got: Vec<Arc<CompiledFilter>> =
            handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(got.iter().all(|f| Arc::ptr_eq(f, &got[0])));
    }

    #[test]
    fn bad_profiles_name_the_problem() {
        let e = compile_uncached(&profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SCMP_ACT_NOTIFY") && e.contains("not supported"),
            "{e}"
        );

        let e = compile_uncached(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("syscalls[0]") && e.contains("read") && e.contains("index 7"),
            "{e}"
        );

        let e = compile_uncached(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":70000}]}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("70000"), "{e}");

        // Unknown actions and operators are rejected when the profile is parsed.
        let bad: Result<LinuxSeccomp, _> =
            serde_json::from_str(r#"{"defaultAction":"SCMP_ACT_EXPLODE"}"#);
        assert!(bad.unwrap_err().to_string().contains("SCMP_ACT_EXPLODE"));
    }

    #[test]
    fn default_action_rules_are_skipped() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        compile_uncached(&p).unwrap();
    }
}
