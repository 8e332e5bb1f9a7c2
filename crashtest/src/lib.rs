//! kvmio-crashtest: boots small QEMU VMs on demand (the lab), and measures which acknowledged
//! writes survive a crash under each cache mode.

pub mod accel;
pub mod cpio;
pub mod guest_image;
pub mod kernel;
pub mod lab;
pub mod matrix;
pub mod modules;
pub mod oracle;
pub mod paths;
pub mod report;
pub mod verify;
pub mod vm;
