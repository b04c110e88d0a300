//! The engine's errors: each says what was refused and why, so a front end can show it as is.

use std::fmt;

use crate::events::Step;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The install config is malformed or unsafe; `source` names the file.
    Config { source: String, message: String },
    /// The disk selector matched no installable disk.
    NoDisk { selector: String, candidates: Vec<String> },
    /// The disk selector matched more than one disk.
    AmbiguousDisk { selector: String, matches: Vec<String> },
    /// The selected disk may not be installed to (boot medium, too small, read-only).
    Refused { disk: String, reason: String },
    /// A tool the engine runs failed or could not be read.
    Tool { command: String, message: String },
    /// A step of the install failed: which one, and how.
    Step { step: Step, source: Box<Error> },
}

impl Error {
    /// The install step that failed, for an error from [`crate::install::install`].
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Step { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// What went wrong, without the step it went wrong in (to tell a refusal from a failure).
    pub fn without_step(&self) -> &Error {
        match self {
            Error::Step { source, .. } => source.without_step(),
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { source, message } => write!(f, "install config {source}: {message}"),
            Error::NoDisk { selector, candidates } if candidates.is_empty() => {
                write!(f, "no installable disk matches {selector} (there are no installable disks)")
            }
            Error::NoDisk { selector, candidates } => {
                write!(f, "no installable disk matches {selector}; installable disks: {}", candidates.join(", "))
            }
            Error::AmbiguousDisk { selector, matches } => {
                write!(f, "{selector} matches {} disks ({}); name one", matches.len(), matches.join(", "))
            }
            Error::Refused { disk, reason } => write!(f, "refusing to install to {disk}: {reason}"),
            Error::Tool { command, message } => write!(f, "`{command}` failed: {message}"),
            Error::Step { step, source } => write!(f, "step {step}: {source}"),
        }
    }
}

// `Step`'s display includes its source's, so `source()` stays `None`: a front end printing the
// chain would otherwise say it twice.
impl std::error::Error for Error {}
