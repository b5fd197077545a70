//! OOM-kill notification for one cgroup, as an fd for the caller's epoll.

use super::{Cgroup, CgroupError};

#[derive(Debug)]
pub struct OomWatch {}

impl OomWatch {
    pub(crate) fn new(cg: &Cgroup) -> Result<OomWatch, CgroupError> {
        let _ = cg;
        todo!()
    }
}
