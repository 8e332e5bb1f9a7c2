//! crashtest
