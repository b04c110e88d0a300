//! What the engine asks of the running system: the disks `lsblk` shows, their holders and
//! by-id names, the device the live system booted from, and the checks made right before the
//! first write. Re-exported at the crate root (`truthdb_installer::list_disks`, ...).

use crate::{Error, Result, block_devices, config, medium};

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
        .args(block_devices::LSBLK_ARGS)
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
pub fn list_disks() -> Result<Vec<block_devices::Disk>> {
    block_devices::parse_lsblk(&lsblk(&[])?, &by_id_names)
}

/// One block device named by path (a disk, or the loop device of a disk image), with its
/// partitions and holders (so the boot medium and in-use checks see them).
pub fn describe_device(path: &str) -> Result<block_devices::Disk> {
    block_devices::parse_lsblk_device(&lsblk(&[path])?, &by_id_names)
}

/// All disks, looked at again (every second, up to 30 s) until the selector's disk is there:
/// a disk named by id, serial or path may still be appearing (USB, a slow controller) when
/// the unattended install starts.
pub fn list_disks_for(selector: &config::DiskSelector) -> Result<Vec<block_devices::Disk>> {
    let patience = std::time::Duration::from_secs(30);
    block_devices::wait_for_disk(selector, patience, std::time::Duration::from_secs(1), &mut list_disks)
}

/// Kernel name -> holders, from /sys/class/block/*/holders.
fn read_holders() -> block_devices::Holders {
    let mut holders = block_devices::Holders::new();
    let Ok(devices) = std::fs::read_dir("/sys/class/block") else { return holders };
    for device in devices.flatten() {
        let Ok(entries) = std::fs::read_dir(device.path().join("holders")) else { continue };
        let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        if !names.is_empty() {
            holders.insert(device.file_name().to_string_lossy().into_owned(), names);
        }
    }
    holders
}

/// The disk's tree (partitions, holders) from the real `lsblk`; a disk that is gone or
/// unreadable is refused, since nothing may be written to a disk we cannot see.
fn disk_tree(disk: &block_devices::Disk) -> Result<String> {
    lsblk(&[&disk.path])
        .map_err(|e| Error::Refused { disk: disk.describe(), reason: format!("it cannot be read: {e}") })
}

/// Right before the first write: the disk at the chosen disk's path is still the one chosen
/// (serial, model, size, by-id names; a front end may have listed disks minutes earlier) and
/// nothing on it is in use (mounted, swap, LVM, LUKS, md, multipath).
pub fn recheck_before_write(chosen: &block_devices::Disk) -> Result<()> {
    let tree = disk_tree(chosen)?;
    let now = block_devices::parse_lsblk_device(&tree, &by_id_names)?;
    if let Some(reason) = block_devices::changed(chosen, &now) {
        return Err(Error::Refused { disk: chosen.describe(), reason });
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    let findings = block_devices::in_use(&tree, &mountinfo, &swaps, &read_holders())?;
    if !findings.is_empty() {
        return Err(Error::Refused {
            disk: chosen.describe(),
            reason: format!(
                "it is in use: {} (stop that use first; `wipefs --all` a member that is no longer needed)",
                findings.join("; ")
            ),
        });
    }
    Ok(())
}

/// The unattended path's guards (see [`medium::unattended_refusal`]): no install over an
/// existing one without `reinstall = true`, none on a BIOS-booted machine without
/// `allow_bios = true`.
pub fn unattended_guards(config: &config::InstallConfig, disk: &block_devices::Disk) -> Result<()> {
    let existing = block_devices::existing_install(&disk_tree(disk)?)?;
    let uefi = medium::booted_by_uefi(std::path::Path::new("/sys/firmware/efi"));
    match medium::unattended_refusal(config, uefi, existing.as_deref()) {
        Some(reason) => Err(Error::Refused { disk: disk.describe(), reason }),
        None => Ok(()),
    }
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
