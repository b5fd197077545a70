#![allow(dead_code)]

pub mod bundle;
pub mod containerd;
pub mod cri;
pub mod image;
pub mod v2;
