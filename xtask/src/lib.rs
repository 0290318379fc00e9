//! What the developer tasks share with portwatch's integration tests: the
//! test kit (network namespaces, loopback HTTP, child processes' lines).
//! The tasks themselves are the `xtask` binary (`cargo xtask ...`).

pub mod testkit;
