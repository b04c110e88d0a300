//! The TruthDB OS installer engine: finds the disks it may install to, checks the install
//! config, plans the disk layout, and installs the appliance (see [`install`]).
//!
//! The engine never prints and never depends on a UI: the CLI (`src/main.rs`) and the
//! graphical front end call it, show its [`events::Event`]s and present its errors as they
//! are. Every tool it runs is logged to the install log.

pub mod block_devices;
pub mod config;
pub mod error;
pub mod events;
pub mod plan;
pub mod spec;

// What runs tools, mounts and writes disks is Unix only; the modules above (the install
// config, the image spec, the plan) are also what xtask reads on macOS and Windows hosts.
#[cfg(unix)]
pub mod install;
#[cfg(unix)]
pub mod medium;
#[cfg(unix)]
pub mod mounts;
#[cfg(unix)]
mod system;
#[cfg(unix)]
pub mod tool;
#[cfg(unix)]
pub mod verify;
#[cfg(unix)]
pub use system::*;

pub use error::{Error, Result};

/// The installer's version: the TruthDB OS version it was built as (`TRUTHDB_VERSION`, set by
/// `cargo xtask iso` for pre-releases), else the workspace version.
pub const VERSION: &str = match option_env!("TRUTHDB_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
