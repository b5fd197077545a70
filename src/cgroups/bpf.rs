//! The few eBPF pieces the cgroup v2 device filter needs: an encoder for the instructions it
//! uses and the bpf(2) commands that load a `BPF_PROG_TYPE_CGROUP_DEVICE` program and attach,
//! replace, query and detach it on a cgroup.
//!
//! Written here rather than taken from a crate: the filter uses eleven opcodes and five bpf(2)
//! commands, about 250 lines; `aya` or `libbpf-rs` would bring an ELF loader, BTF and (for
//! libbpf) a C library for none of which this program has a use.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    pub code: u8,
    /// dst_reg in the low nibble, src_reg in the high one (little-endian bitfields).
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

/// Registers: R0 the return value, R1 the program's context.
pub(crate) type Reg = u8;

const CLASS_LDX: u8 = 0x01;
const CLASS_ALU: u8 = 0x04;
const CLASS_JMP: u8 = 0x05;
const SIZE_W: u8 = 0x00;
const MODE_MEM: u8 = 0x60;
const SRC_K: u8 = 0x00;
const SRC_X: u8 = 0x08;
const OP_AND: u8 = 0x50;
const OP_RSH: u8 = 0x70;
const OP_MOV: u8 = 0xb0;
const OP_JNE: u8 = 0x50;
const OP_EXIT: u8 = 0x90;

fn insn(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0x0f) | (src << 4),
        off,
        imm,
    }
}

/// `dst = *(u32 *)(src + off)`
pub(crate) fn ldx_w(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(CLASS_LDX | SIZE_W | MODE_MEM, dst, src, off, 0)
}

/// `(u32) dst &= imm`
pub(crate) fn and32_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU | OP_AND | SRC_K, dst, 0, 0, imm)
}

/// `(u32) dst >>= imm`
pub(crate) fn rsh32_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU | OP_RSH | SRC_K, dst, 0, 0, imm)
}

/// `(u32) dst = imm`
pub(crate) fn mov32_imm(dst: Reg, imm: i32) -> Insn {
    insn(CLASS_ALU | OP_MOV | SRC_K, dst, 0, 0, imm)
}

/// `(u32) dst = src`
pub(crate) fn mov32_reg(dst: Reg, src: Reg) -> Insn {
    insn(CLASS_ALU | OP_MOV | SRC_X, dst, src, 0, 0)
}

/// `if dst != imm goto +off`
pub(crate) fn jne_imm(dst: Reg, imm: i32, off: i16) -> Insn {
    insn(CLASS_JMP | OP_JNE | SRC_K, dst, 0, off, imm)
}

/// `if dst != src goto +off`
pub(crate) fn jne_reg(dst: Reg, src: Reg, off: i16) -> Insn {
    insn(CLASS_JMP | OP_JNE | SRC_X, dst, src, off, 0)
}

pub(crate) fn is_conditional_jump(i: &Insn) -> bool {
    i.code & 0x07 == CLASS_JMP && i.code & 0xf0 == OP_JNE
}

pub(crate) fn exit() -> Insn {
    insn(CLASS_JMP | OP_EXIT, 0, 0, 0, 0)
}

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
const BPF_PROG_QUERY: libc::c_int = 16;

const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
pub(crate) const BPF_F_ALLOW_MULTI: u32 = 1 << 1;
pub(crate) const BPF_F_REPLACE: u32 = 1 << 2;
/// The name of this runtime's device programs (systemd's are `sd_devices`).
pub(crate) const PROG_NAME: &str = "pelagos_dev";

#[derive(Clone, Copy)]
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct ProgQuery {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct GetFdById {
    prog_id: u32,
    next_id: u32,
    open_flags: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `union bpf_attr`, limited to the commands used here; the padding keeps every byte the
/// kernel may look at zero.
#[repr(C, align(8))]
union Attr {
    load: ProgLoad,
    attach: ProgAttach,
    query: ProgQuery,
    by_id: GetFdById,
    info: InfoByFd,
    zero: [u64; 16],
}

impl Attr {
    fn zeroed() -> Attr {
        Attr { zero: [0; 16] }
    }
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, fully initialised bpf_attr of the size passed; the pointers in
    // it (instructions, license, log, id array) outlive the call, which the callers ensure.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fd_from(r: libc::c_long) -> OwnedFd {
    // SAFETY: a successful BPF_PROG_LOAD / BPF_PROG_GET_FD_BY_ID returns a new fd we own.
    unsafe { OwnedFd::from_raw_fd(r as RawFd) }
}

/// The load failed; `log` is the verifier's output when there is one.
#[derive(Debug)]
pub(crate) struct LoadFailure {
    pub error: io::Error,
    pub log: String,
}

/// Loads a cgroup device program named `prog_name` (at most 15 bytes). On failure the load is
/// repeated with the verifier log on, so the error says why.
pub(crate) fn load_cgroup_device(
    insns: &[Insn],
    license: &str,
    prog_name: &str,
) -> Result<OwnedFd, LoadFailure> {
    let license = std::ffi::CString::new(license).expect("license without NUL");
    let mut name = [0u8; 16];
    let n = prog_name.len().min(15);
    name[..n].copy_from_slice(&prog_name.as_bytes()[..n]);
    let attempt = |log: &mut [u8]| {
        let mut attr = Attr::zeroed();
        attr.load = ProgLoad {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: u32::from(!log.is_empty()),
            log_size: log.len() as u32,
            log_buf: if log.is_empty() {
                0
            } else {
                log.as_mut_ptr() as u64
            },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: 0,
        };
        bpf(BPF_PROG_LOAD, &mut attr).map(fd_from)
    };
    let error = match attempt(&mut []) {
        Ok(fd) => return Ok(fd),
        Err(e) => e,
    };
    let mut log = vec![0u8; 64 * 1024];
    let _ = attempt(&mut log);
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    Err(LoadFailure {
        error,
        log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
    })
}

/// Attaches `prog` to the cgroup `cgroup` as a device program with `flags`; `replace` names the
/// program it replaces atomically (with [`BPF_F_REPLACE`] in `flags`).
pub(crate) fn attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    flags: u32,
    replace: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut attr = Attr::zeroed();
    attr.attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: flags,
        replace_bpf_fd: replace.map_or(0, |f| f.as_raw_fd() as u32),
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(drop)
}

pub(crate) fn detach(cgroup: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = Attr::zeroed();
    attr.attach = ProgAttach {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: 0,
        replace_bpf_fd: 0,
    };
    bpf(BPF_PROG_DETACH, &mut attr).map(drop)
}

/// Ids of the device programs attached to `cgroup` itself (not inherited from ancestors).
pub(crate) fn query_device_programs(cgroup: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    loop {
        let mut attr = Attr::zeroed();
        attr.query = ProgQuery {
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type: BPF_CGROUP_DEVICE,
            query_flags: 0,
            attach_flags: 0,
            prog_ids: ids.as_mut_ptr() as u64,
            prog_cnt: ids.len() as u32,
        };
        match bpf(BPF_PROG_QUERY, &mut attr) {
            Ok(_) => {
                // SAFETY: the kernel filled the query member it was given.
                let count = unsafe { attr.query.prog_cnt } as usize;
                ids.truncate(count);
                return Ok(ids);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // SAFETY: on ENOSPC the kernel still reports the count in the query member.
                let count = unsafe { attr.query.prog_cnt } as usize;
                ids = vec![0; count.max(ids.len() * 2)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// The name a program was loaded with (`bpf_prog_info.name`, at offset 64 since Linux 4.15).
pub(crate) fn prog_name(prog: BorrowedFd<'_>) -> io::Result<String> {
    let mut info = [0u8; 96];
    let mut attr = Attr::zeroed();
    attr.info = InfoByFd {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: info.len() as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let name = &info[64..80];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// An fd for the loaded program with kernel id `id`.
pub(crate) fn prog_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::zeroed();
    attr.by_id = GetFdById {
        prog_id: id,
        next_id: 0,
        open_flags: 0,
    };
    bpf(BPF_PROG_GET_FD_BY_ID, &mut attr).map(fd_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(i: Insn) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = i.code;
        b[1] = i.regs;
        b[2..4].copy_from_slice(&i.off.to_le_bytes());
        b[4..8].copy_from_slice(&i.imm.to_le_bytes());
        b
    }

    #[test]
    fn encodings_match_the_kernel_opcodes() {
        // Expected bytes as the kernel's include/uapi/linux/bpf.h macros give them (e.g.
        // BPF_LDX_MEM(BPF_W, R2, R1, 0) = 0x61 0x12 ...).
        assert_eq!(bytes(ldx_w(2, 1, 0)), [0x61, 0x12, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(ldx_w(5, 1, 8)), [0x61, 0x15, 8, 0, 0, 0, 0, 0]);
        assert_eq!(
            bytes(and32_imm(2, 0xffff)),
            [0x54, 0x02, 0, 0, 0xff, 0xff, 0, 0]
        );
        assert_eq!(bytes(rsh32_imm(3, 16)), [0x74, 0x03, 0, 0, 16, 0, 0, 0]);
        assert_eq!(bytes(mov32_imm(0, 1)), [0xb4, 0x00, 0, 0, 1, 0, 0, 0]);
        assert_eq!(bytes(mov32_reg(1, 3)), [0xbc, 0x31, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(jne_imm(4, 8, 3)), [0x55, 0x04, 3, 0, 8, 0, 0, 0]);
        assert_eq!(bytes(jne_reg(1, 3, 2)), [0x5d, 0x31, 2, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(exit()), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes(jne_imm(2, 1, -1))[2..4], [0xff, 0xff]);
    }

    #[test]
    fn attr_layout_matches_bpf_h() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::size_of::<Attr>(), 128);
        assert_eq!(std::mem::offset_of!(ProgLoad, insns), 8);
        assert_eq!(std::mem::offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgAttach, replace_bpf_fd), 16);
        assert_eq!(std::mem::offset_of!(ProgQuery, prog_ids), 16);
        assert_eq!(std::mem::offset_of!(ProgQuery, prog_cnt), 24);
    }
}
