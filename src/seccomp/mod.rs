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
    let bpf = export(&ctx)?;
    Ok(CompiledFilter { bpf, flags })
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

/// Loads a compiled filter into the calling thread (NNP or CAP_SYS_ADMIN must hold).
pub fn load(filter: &CompiledFilter) -> Result<(), SeccompError> {
    Program::new(filter)?.install()
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

    /// Installs the filter on the calling thread.
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
