//! Small helpers every part of xtask shares: the one place processes are spawned ([`run`]),
//! file-system operations, digests, locks, progress lines and host facts. None of
//! them depends on the project, a stage or a VM.

pub mod deb822;
pub mod digest;
pub mod fsx;
pub mod host;
pub mod lock;
pub mod progress;
pub mod run;

/// A command line that asks for something impossible (a flag's value out of range, flags that
/// do not go together): `main` exits 2 for it, as clap does for what it catches itself, and 1
/// for every other failure.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Returns early with a [`UsageError`] (exit code 2), like `anyhow::bail!`.
macro_rules! usage_error {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::util::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage_error;
