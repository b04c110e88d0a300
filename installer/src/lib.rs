//! The TruthDB OS installer engine: finds the disks it may install to, checks the install
//! config, plans the disk layout, and installs the appliance (see [`install`]).
//!
//! The engine never prints and never depends on a UI: the CLI (`src/main.rs`) and the
//! graphical front end call it, show its [`progress::Event`]s and present its errors as they
//! are. Every tool it runs is logged to the install log.

pub mod config;
pub mod disks;
pub mod error;
pub mod install;
pub mod medium;
pub mod mounts;
pub mod plan;
pub mod progress;
pub mod spec;
pub mod tool;
pub mod verify;

pub use error::{Error, Result};

/// The installer's version: the TruthDB OS version it was built as (`TRUTHDB_VERSION`, set by
/// `cargo xtask iso` for pre-releases), else the workspace version.
pub const VERSION: &str = match option_env!("TRUTHDB_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// The device the live system booted from (behind `/run/live/medium`), never offered.
pub fn live_medium_device() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (source, target) = (fields.next()?, fields.next()?);
        (target == medium::MEDIUM_MOUNT).then(|| source.to_owned())
    })
}

fn lsblk(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new("lsblk")
        .args(disks::LSBLK_ARGS)
        .args(args)
        .output()
        .map_err(|e| Error::Tool { command: "lsblk".into(), message: e.to_string() })?;
    if !output.status.success() {
        return Err(Error::Tool {
            command: format!("lsblk {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// All whole disks, from the real `lsblk`, with their `/dev/disk/by-id` names.
pub fn list_disks() -> Result<Vec<disks::Disk>> {
    disks::parse_lsblk(&lsblk(&[])?, &by_id_names)
}

/// One block device named by path (a disk, or the loop device of a disk image).
pub fn describe_device(path: &str) -> Result<disks::Disk> {
    disks::parse_lsblk_device(&lsblk(&["--nodeps", path])?, &by_id_names)
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
