//! Host-side facts, independent of the collector framework (plain functions over a procfs and a
//! sysfs root, so tests point them at fixture trees).

pub mod blockdev;
pub mod diskstats;
pub mod pagecache;
