//! The TruthDB OS installer engine: lists disks, plans and writes the appliance to a disk.
//!
//! Not written yet (see the installer-engine issue): today the crate only carries the version,
//! which is the workspace version like everything else.

/// The installer's version: the workspace version, the one version of TruthDB OS.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
