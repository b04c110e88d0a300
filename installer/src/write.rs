//! Writing a [`Plan`] into a disk image file without mounting anything.
//!
//! `sfdisk` writes the GPT into the file; each file system is then made at its partition's
//! byte offset: `mkfs.fat --offset` for the ESP (files copied in with `mcopy -i file@@offset`)
//! and `mkfs.ext4 -E offset=... -d <tree>` for the root, which copies a whole directory tree
//! (owners, modes, symlinks, hard links, xattrs) while creating the file system. No loop
//! device, no mount, so nothing can leak and building an image needs no privileges beyond
//! reading the tree. The file systems are checked afterwards with `e2fsck -n` and `mdir`.
//!
//! This is the engine's first writing step (used for disk images); the installer on a real
//! disk will run the same tools on partition devices.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::plan::{Plan, Role};

/// Where a partition landed in the image, in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    pub start: u64,
    pub size: u64,
}

/// The file systems made, by role, with the UUIDs fstab will name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenPartition {
    pub role: Role,
    pub extent: Extent,
    /// ext4 UUID, or FAT volume id as `XXXX-XXXX`.
    pub uuid: String,
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let tool_error = |message: String| Error::Tool { command: command.clone(), message };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(e.to_string()))?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| tool_error(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| tool_error(e.to_string()))?;
    if !out.status.success() {
        return Err(tool_error(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    #[serde(default = "default_sector_size")]
    sectorsize: u64,
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    start: u64,
    size: u64,
}

fn default_sector_size() -> u64 {
    512
}

/// Partition extents from `sfdisk --json`.
fn parse_extents(json: &str) -> Result<Vec<Extent>> {
    let dump: SfdiskDump = serde_json::from_str(json)
        .map_err(|e| Error::Tool { command: "sfdisk --json".into(), message: e.to_string() })?;
    let sector = dump.partitiontable.sectorsize;
    Ok(dump
        .partitiontable
        .partitions
        .iter()
        .map(|p| Extent { start: p.start * sector, size: p.size * sector })
        .collect())
}

/// A random UUID from the kernel.
fn new_uuid() -> Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|u| u.trim().to_owned())
        .map_err(|e| Error::Tool { command: "read /proc/sys/kernel/random/uuid".into(), message: e.to_string() })
}

/// Writes `plan` into the image file `image` (which must exist, at least as large as the
/// plan's disk): partition table, ESP with the files of `esp_tree`, root file system made from
/// `root_tree`, empty data file system. Then checks every file system read-only.
pub fn write_image(image: &Path, plan: &Plan, root_tree: &Path, esp_tree: &Path) -> Result<Vec<WrittenPartition>> {
    let image_str = image
        .to_str()
        .ok_or_else(|| Error::Refused { disk: image.display().to_string(), reason: "the path is not UTF-8".into() })?;
    run("sfdisk", &["--quiet", "--wipe", "always", image_str], Some(&plan.sfdisk_script()))?;
    let extents = parse_extents(&run("sfdisk", &["--json", image_str], None)?)?;
    if extents.len() != plan.partitions.len() {
        return Err(Error::Tool {
            command: format!("sfdisk {image_str}"),
            message: format!("made {} partitions, the plan has {}", extents.len(), plan.partitions.len()),
        });
    }
    let mut written = Vec::new();
    for (part, extent) in plan.partitions.iter().zip(extents) {
        let size_kib = format!("{}", extent.size / 1024);
        let uuid = match part.role {
            Role::Esp => {
                let volume_id = new_uuid()?.replace('-', "")[..8].to_uppercase();
                let offset = format!("--offset={}", extent.start / 512);
                run(
                    "mkfs.fat",
                    &["-F", "32", "-n", part.label, "-i", &volume_id, &offset, image_str, &size_kib],
                    None,
                )?;
                let target = format!("{image_str}@@{}", extent.start);
                let entries: Vec<String> = std::fs::read_dir(esp_tree)
                    .map_err(|e| Error::Tool {
                        command: format!("read {}", esp_tree.display()),
                        message: e.to_string(),
                    })?
                    .flatten()
                    .map(|e| e.path().display().to_string())
                    .collect();
                if !entries.is_empty() {
                    let mut args = vec!["-s", "-Q", "-i", target.as_str()];
                    args.extend(entries.iter().map(String::as_str));
                    args.push("::/");
                    run("mcopy", &args, None)?;
                }
                format!("{}-{}", &volume_id[..4], &volume_id[4..])
            }
            Role::Root | Role::Data => {
                let uuid = new_uuid()?;
                let offset = format!("offset={}", extent.start);
                let mut args = vec!["-F", "-q", "-t", "ext4", "-L", part.label, "-U", &uuid, "-E", &offset];
                let root = root_tree.display().to_string();
                if part.role == Role::Root {
                    args.extend(["-d", &root]);
                }
                let size = format!("{size_kib}k");
                args.extend([image_str, &size]);
                run("mke2fs", &args, None)?;
                uuid
            }
        };
        written.push(WrittenPartition { role: part.role.clone(), extent, uuid });
    }
    verify_image(image_str, &written)?;
    Ok(written)
}

/// Read-only checks of what [`write_image`] made.
fn verify_image(image: &str, written: &[WrittenPartition]) -> Result<()> {
    for part in written {
        match part.role {
            Role::Esp => {
                run("mdir", &["-i", &format!("{image}@@{}", part.extent.start), "::/"], None)?;
            }
            Role::Root | Role::Data => {
                run("e2fsck", &["-f", "-n", &format!("{image}?offset={}", part.extent.start)], None)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::Disk;
    use crate::plan::Layout;
    use std::os::unix::fs::{PermissionsExt, symlink};

    const MIB: u64 = 1 << 20;

    #[test]
    fn extents_come_from_sfdisk_json() {
        let json = r#"{"partitiontable": {"label":"gpt","sectorsize":512,"partitions":[
            {"node":"x1","start":2048,"size":1048576,"type":"C12A7328-F81F-11D2-BA4B-00A0C93EC93B"}]}}"#;
        assert_eq!(parse_extents(json).unwrap(), [Extent { start: 1 << 20, size: 512 << 20 }]);
    }

    #[test]
    fn an_image_gets_a_gpt_a_fat_esp_and_ext4_made_from_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/hostname"), "truthdb-os\n").unwrap();
        std::fs::write(root.join("etc/secret"), "s\n").unwrap();
        std::fs::set_permissions(root.join("etc/secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
        symlink("hostname", root.join("etc/name")).unwrap();
        let esp = dir.path().join("esp");
        std::fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
        std::fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), "MZ not really").unwrap();

        let image = dir.path().join("disk.img");
        let size = 200 * MIB;
        std::fs::File::create(&image).unwrap().set_len(size).unwrap();
        let disk = Disk {
            path: image.display().to_string(),
            by_id: vec![],
            model: None,
            serial: None,
            size_bytes: size,
            transport: None,
            removable: false,
            read_only: false,
            children: vec![],
        };
        let layout =
            Layout { esp_bytes: 64 * MIB, root_bytes: 64 * MIB, data_partition: true, min_data_bytes: 16 * MIB };
        let written = write_image(&image, &Plan::new(&disk, &layout), &root, &esp).unwrap();
        assert_eq!(written.len(), 3);
        assert_eq!(written[0].extent.size, 64 * MIB);
        assert!(written[2].extent.start > written[1].extent.start);

        // The real tools read back what was written.
        let esp_at = format!("{}@@{}", image.display(), written[0].extent.start);
        let listing = run("mdir", &["-i", &esp_at, "::/EFI/BOOT"], None).unwrap();
        assert!(listing.contains("BOOTX64") && listing.contains("EFI"), "{listing}");
        let root_at = format!("{}?offset={}", image.display(), written[1].extent.start);
        let stat = run("debugfs", &["-R", "stat /etc/secret", &root_at], None).unwrap();
        assert!(stat.contains("Mode:  0600"), "{stat}");
        let link = run("debugfs", &["-R", "stat /etc/name", &root_at], None).unwrap();
        assert!(link.contains("Fast link dest: \"hostname\""), "{link}");
        let label = run("debugfs", &["-R", "stats", &root_at], None).unwrap();
        assert!(label.contains("truthdb-root") && label.contains(&written[1].uuid), "{label}");
    }
}
