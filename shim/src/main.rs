//! containerd-shim-pelagos-v2: TODO

fn main() {
    pelagos::init::run_if_helper();
}
