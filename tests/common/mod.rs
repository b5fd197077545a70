#![allow(dead_code)]

pub mod bundle;
