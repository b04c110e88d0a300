//! The TruthDB OS installer engine: finds the disks it may install to, checks the install
//! config, and plans the disk layout before anything is written.
//!
//! The engine never prints and never depends on a UI: the CLI (`src/main.rs`) and, later, the
//! iced front end call it and present its results. [`write`] already writes a plan into a
//! disk image file (no mounts); still to come (see the installer-engine issue): real disks,
//! the UKI, the database payload and the unattended install. Nothing writes to a disk device yet.

pub mod config;
pub mod disks;
pub mod error;
pub mod plan;
pub mod write;

pub use error::{Error, Result};

/// The installer's version: the workspace version, the one version of TruthDB OS.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The device the live system booted from (behind `/run/live/medium`), never offered.
pub fn live_medium_device() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (source, target) = (fields.next()?, fields.next()?);
        (target == "/run/live/medium").then(|| source.to_owned())
    })
}

/// All whole disks, from the real `lsblk`, with their `/dev/disk/by-id` names.
pub fn list_disks() -> Result<Vec<disks::Disk>> {
    let output = std::process::Command::new("lsblk")
        .args(disks::LSBLK_ARGS)
        .output()
        .map_err(|e| Error::Tool { command: "lsblk".into(), message: e.to_string() })?;
    if !output.status.success() {
        return Err(Error::Tool {
            command: "lsblk".into(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    disks::parse_lsblk(&String::from_utf8_lossy(&output.stdout), &by_id_names)
}

fn by_id_names(device: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/dev/disk/by-id") else { return Vec::new() };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| std::fs::canonicalize(e.path()).is_ok_and(|p| p.to_str() == Some(device)))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
