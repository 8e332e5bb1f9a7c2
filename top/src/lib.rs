//! kvmio-top's command line as a library, so that the man-page generator (`deploy/mangen`)
//! renders the flags the binary parses. The view itself lives in the binary.

pub mod cli;
