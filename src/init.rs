//! The setup helper's side: entered in a re-executed copy of the binary.

/// Call first thing in `main` of any binary that creates containers with this library. When
/// this process is a setup helper it never returns; otherwise it returns at once.
pub fn run_if_helper() {}
