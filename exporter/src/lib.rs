//! kvmio-exporter library
