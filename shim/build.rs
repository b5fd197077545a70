//! Links the shim as a position-dependent executable. A PIE's `.data.rel.ro` (vtables,
//! string tables, protobuf descriptors: ~300 KiB here) is relocated at every start, which makes
//! those pages private and dirty in every shim daemon; at a fixed address they stay clean,
//! shared pages of the file, as in containerd-shim-runc-v2 (a non-PIE Go binary).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
