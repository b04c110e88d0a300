//! The install plan: one fixed GPT layout, computed and shown before anything is written.
//!
//! ESP (FAT32, 512 MiB) + root (ext4) [+ data (ext4), when the appliance keeps its database on
//! its own partition]. The partition table is written by `sfdisk` from [`Plan::sfdisk_script`].

use std::fmt;

use crate::block_devices::{Disk, human_size};

const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// GPT partition type GUIDs (UEFI spec; Discoverable Partitions Specification).
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const LINUX_DATA_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// The GPT partition names and file system labels of an install's root and data partitions
/// (the ESP's "ESP" is anybody's): how a disk that already holds TruthDB OS is recognised.
pub const ROOT_LABEL: &str = "truthdb-root";
pub const DATA_LABEL: &str = "truthdb-data";
pub const INSTALL_LABELS: &[&str] = &[ROOT_LABEL, DATA_LABEL];

/// What the layout depends on besides the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub esp_bytes: u64,
    /// Size of the root partition when there is a data partition (else root takes the rest).
    pub root_bytes: u64,
    pub data_partition: bool,
    /// The smallest data partition worth making.
    pub min_data_bytes: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Layout { esp_bytes: 512 * MIB, root_bytes: 8 * GIB, data_partition: true, min_data_bytes: 2 * GIB }
    }
}

impl Layout {
    /// This layout with a data partition of at least `gib` GiB (a payload's `min_data_gib`),
    /// never below the installer's own minimum.
    pub fn with_min_data_gib(self, gib: Option<u32>) -> Layout {
        let payload = gib.map_or(0, |gib| u64::from(gib) * GIB);
        Layout { min_data_bytes: self.min_data_bytes.max(payload), ..self }
    }

    /// The smallest disk this layout fits on (with room for the GPT at both ends).
    pub fn min_disk_bytes(&self) -> u64 {
        let data = if self.data_partition { self.min_data_bytes } else { 0 };
        self.esp_bytes + self.root_bytes + data + 2 * MIB
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Esp,
    Root,
    Data,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedPartition {
    pub role: Role,
    /// Device path once created, e.g. `/dev/vda1` or `/dev/nvme0n1p1`.
    pub device: String,
    /// `None`: the rest of the disk.
    pub size_bytes: Option<u64>,
    pub filesystem: &'static str,
    pub label: &'static str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub disk: Disk,
    pub partitions: Vec<PlannedPartition>,
}

/// The device name of partition `n` of `disk` (`/dev/vda` -> `/dev/vda1`,
/// `/dev/nvme0n1` -> `/dev/nvme0n1p1`).
pub fn partition_device(disk: &str, n: usize) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) { format!("{disk}p{n}") } else { format!("{disk}{n}") }
}

/// The GPT partition type of a role.
pub fn type_guid(role: &Role) -> &'static str {
    match role {
        Role::Esp => ESP_TYPE,
        Role::Root => ROOT_X86_64_TYPE,
        Role::Data => LINUX_DATA_TYPE,
    }
}

impl Plan {
    pub fn new(disk: &Disk, layout: &Layout) -> Plan {
        let mut partitions = vec![PlannedPartition {
            role: Role::Esp,
            device: partition_device(&disk.path, 1),
            size_bytes: Some(layout.esp_bytes),
            filesystem: "vfat",
            label: "ESP",
        }];
        partitions.push(PlannedPartition {
            role: Role::Root,
            device: partition_device(&disk.path, 2),
            size_bytes: layout.data_partition.then_some(layout.root_bytes),
            filesystem: "ext4",
            label: ROOT_LABEL,
        });
        if layout.data_partition {
            partitions.push(PlannedPartition {
                role: Role::Data,
                device: partition_device(&disk.path, 3),
                size_bytes: None,
                filesystem: "ext4",
                label: DATA_LABEL,
            });
        }
        Plan { disk: disk.clone(), partitions }
    }

    /// Input for `sfdisk <disk>`: a fresh GPT with the planned partitions.
    pub fn sfdisk_script(&self) -> String {
        let mut script = String::from("label: gpt\n");
        for p in &self.partitions {
            let kind = type_guid(&p.role);
            match p.size_bytes {
                Some(bytes) => {
                    script.push_str(&format!("size={}KiB, type={kind}, name=\"{}\"\n", bytes / 1024, p.label))
                }
                None => script.push_str(&format!("type={kind}, name=\"{}\"\n", p.label)),
            }
        }
        script
    }
}

/// The dry run: what will be erased and created.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ERASE {} and write a new GPT partition table:", self.disk.describe())?;
        for p in &self.partitions {
            let size = p.size_bytes.map(human_size).unwrap_or_else(|| "rest of the disk".into());
            writeln!(f, "  {:<16} {:<5} {:<13} {size}", p.device, p.filesystem, p.label)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(path: &str, size: u64) -> Disk {
        Disk {
            path: path.into(),
            by_id: vec![],
            model: Some("QEMU HARDDISK".into()),
            serial: Some("QM1".into()),
            size_bytes: size,
            transport: Some("virtio".into()),
            removable: false,
            read_only: false,
            children: vec![],
        }
    }

    #[test]
    fn nvme_partitions_get_a_p() {
        assert_eq!(partition_device("/dev/nvme0n1", 2), "/dev/nvme0n1p2");
        assert_eq!(partition_device("/dev/vda", 1), "/dev/vda1");
    }

    #[test]
    fn layout_with_data_partition() {
        let plan = Plan::new(&disk("/dev/vda", 20 * GIB), &Layout::default());
        assert_eq!(
            plan.sfdisk_script(),
            "label: gpt\n\
             size=524288KiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=\"ESP\"\n\
             size=8388608KiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=\"truthdb-root\"\n\
             type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"truthdb-data\"\n"
        );
        let shown = plan.to_string();
        assert!(shown.starts_with("ERASE /dev/vda (QEMU HARDDISK, serial QM1, 20.0 GiB)"), "{shown}");
        assert!(shown.contains("/dev/vda3") && shown.contains("rest of the disk"), "{shown}");
    }

    #[test]
    fn without_data_partition_root_takes_the_rest() {
        let layout = Layout { data_partition: false, ..Layout::default() };
        let plan = Plan::new(&disk("/dev/nvme0n1", 20 * GIB), &layout);
        assert_eq!(plan.partitions.len(), 2);
        assert_eq!(plan.partitions[1].size_bytes, None);
        assert!(layout.min_disk_bytes() < Layout::default().min_disk_bytes());
    }

    #[test]
    fn the_script_is_accepted_by_the_real_sfdisk() {
        // sfdisk writes a GPT into a sparse image file: proof the script is valid, no disk touched.
        let sfdisk = ["/usr/sbin/sfdisk", "/sbin/sfdisk"].into_iter().find(|p| std::path::Path::new(p).exists());
        let Some(sfdisk) = sfdisk else {
            panic!("sfdisk is not installed (apt-get install fdisk)");
        };
        // A private directory of its own (a fixed name under $TMPDIR could be made in advance
        // by another user, as a symlink to somewhere root then writes).
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        let file = std::fs::File::create(&image).unwrap();
        file.set_len(12 * GIB).unwrap();
        let plan = Plan::new(&disk(image.to_str().unwrap(), 12 * GIB), &Layout::default());
        let mut child = std::process::Command::new(sfdisk)
            .arg("--quiet")
            .arg(&image)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(plan.sfdisk_script().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dump = std::process::Command::new(sfdisk).arg("--dump").arg(&image).output().unwrap();
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert_eq!(dump.matches("type=").count(), 3, "{dump}");
        assert!(dump.contains("name=\"truthdb-data\""), "{dump}");
    }
}
