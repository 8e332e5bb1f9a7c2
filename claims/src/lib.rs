//! The seed article's performance claims, measured with kvmio's own layers.
//!
//! The article that started kvmio ("KVM存储实践", `shared/seed/`) claims that (1) under thin
//! provisioning the guest's merged requests are split again below QEMU, so (2) the guest
//! should run `none` or `deadline` rather than a merging, fairness-seeking scheduler; (3) guest
//! and host both cache the same data unless the cache mode bypasses the host; and (4)
//! writethrough writes slowly, writeback fastest, none in between. `kvmio-claims run` boots
//! test VMs across cache modes ([`plan`]) and image layouts ([`layout`]), runs workloads in
//! the guest under each IO scheduler ([`session`], the guest side is `kvmio-guest bench`),
//! reads every layer through a real kvmio-exporter ([`exporter`], [`layers`]) with the images
//! on a loop device of their own ([`store`]), and writes rows ([`results`]), tables
//! ([`figures`]), SVG plots ([`plots`]) and a Markdown summary ([`summary`]).
//! docs/seed-claims.md judges the claims from them.

pub mod experiment;
pub mod exporter;
pub mod figures;
pub mod layers;
pub mod layout;
pub mod plan;
pub mod plots;
pub mod results;
pub mod session;
pub mod store;
pub mod summary;
