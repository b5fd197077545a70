//! What the integration tests and the fuzz targets reach inside the core: the runtime↔helper
//! protocol, the raw helper spawn and /proc parsing. Not an API for embedders: it follows the
//! internals and changes with them.

pub use crate::process::protocol;
pub use crate::process::{spawn, Spawn, Spawned};
pub use crate::sys::{parse_proc_stat, proc_stat, ProcStat};
