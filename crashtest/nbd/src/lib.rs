//! kvmio-nbd
