#![allow(dead_code)]

pub mod bundle;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod ttrpc_raw;
pub mod v2;
