//! Small helpers every part of xtask shares: the one place processes are spawned ([`run`]),
//! file-system operations, digests, locks, progress lines and host facts. None of
//! them depends on the project, a stage or a VM.

pub mod digest;
pub mod fsx;
pub mod host;
pub mod lock;
pub mod progress;
pub mod run;
