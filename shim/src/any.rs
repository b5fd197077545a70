//! Protobuf messages packed into `Any` under the type URLs containerd's typeurl registry knows.
//! The names are constants: `MessageFull::descriptor()` would parse the generated file
//! descriptors on first use in every shim, 7–11 % of a daemon's CPU in the benchmark profile.

use containerd_shim_protos::cgroups::metrics::Metrics as MetricsV1;
use containerd_shim_protos::cgroups_v2::metrics::Metrics as MetricsV2;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::oci::ProcessDetails;

/// A message with its protobuf full name.
pub trait Named: Message {
    const TYPE_URL: &'static str;
}

macro_rules! named {
    ($($t:ty => $name:literal),* $(,)?) => {
        $(impl Named for $t {
            const TYPE_URL: &'static str = $name;
        })*
    };
}

named! {
    TaskCreate => "containerd.events.TaskCreate",
    TaskStart => "containerd.events.TaskStart",
    TaskExecAdded => "containerd.events.TaskExecAdded",
    TaskExecStarted => "containerd.events.TaskExecStarted",
    TaskOOM => "containerd.events.TaskOOM",
    TaskExit => "containerd.events.TaskExit",
    TaskPaused => "containerd.events.TaskPaused",
    TaskResumed => "containerd.events.TaskResumed",
    TaskDelete => "containerd.events.TaskDelete",
    MetricsV1 => "io.containerd.cgroups.v1.Metrics",
    MetricsV2 => "io.containerd.cgroups.v2.Metrics",
    ProcessDetails => "containerd.runc.v1.ProcessDetails",
}

pub fn pack<M: Named>(m: &M) -> Result<Any, containerd_shim_protos::protobuf::Error> {
    Ok(Any {
        type_url: M::TYPE_URL.to_owned(),
        value: m.write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::protobuf::MessageFull;

    use super::*;

    fn same<M: Named + MessageFull>() {
        assert_eq!(M::TYPE_URL, M::descriptor().full_name());
    }

    #[test]
    fn names_match_the_generated_descriptors() {
        same::<TaskCreate>();
        same::<TaskStart>();
        same::<TaskExecAdded>();
        same::<TaskExecStarted>();
        same::<TaskOOM>();
        same::<TaskExit>();
        same::<TaskPaused>();
        same::<TaskResumed>();
        same::<TaskDelete>();
        same::<MetricsV1>();
        same::<MetricsV2>();
        same::<ProcessDetails>();
    }
}
