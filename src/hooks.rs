//! OCI hooks: runs one hook with the state JSON on stdin, its args and env, and its timeout.

use oci_spec::runtime::Hook;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook: {0}")]
    Other(String),
}

/// Runs each hook in order with `state_json` on stdin; the first failure stops the rest.
pub fn run_all(hooks: &[Hook], state_json: &[u8]) -> Result<(), HookError> {
    let _ = (hooks, state_json);
    todo!()
}
