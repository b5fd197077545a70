//! `pelagos`: the core's command-line front end. For now it only serves as the setup helper
//! binary for the core's own tests; the runc-compatible CLI comes later.

fn main() {
    pelagos::init::run_if_helper();
    eprintln!("pelagos: the command-line interface is not implemented yet");
    std::process::exit(2);
}
