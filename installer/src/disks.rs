//! Installable disks: what `lsblk` reports, minus the live medium we booted from, read-only
//! devices and disks too small for the image. Selection by the install config must match
//! exactly one of them.

use serde::Deserialize;

use crate::config::DiskSelector;
use crate::error::{Error, Result};

/// A whole disk, as a person choosing where to install needs to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// `/dev/vda`, `/dev/nvme0n1`, ...
    pub path: String,
    /// Stable names from `/dev/disk/by-id` (without the directory).
    pub by_id: Vec<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: u64,
    /// `sata`, `nvme`, `usb`, `virtio` (when lsblk knows it).
    pub transport: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    /// Kernel names of its partitions and their holders, to recognise the boot medium.
    pub children: Vec<String>,
}

impl Disk {
    /// One line for lists and errors: path, model, serial, size.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, serial {}, {})",
            self.path,
            self.model.as_deref().unwrap_or("unknown model"),
            self.serial.as_deref().unwrap_or("none"),
            human_size(self.size_bytes)
        )
    }
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[derive(Deserialize)]
struct LsblkOutput {
    blockdevices: Vec<LsblkDevice>,
}

#[derive(Deserialize)]
struct LsblkDevice {
    name: String,
    path: String,
    size: u64,
    model: Option<String>,
    serial: Option<String>,
    tran: Option<String>,
    rm: bool,
    ro: bool,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    children: Vec<LsblkDevice>,
}

/// The `lsblk` invocation whose JSON [`parse_lsblk`] reads.
pub const LSBLK_ARGS: &[&str] = &["--json", "--bytes", "--tree", "-o", "NAME,PATH,SIZE,MODEL,SERIAL,TRAN,RM,RO,TYPE"];

/// Whole disks from `lsblk` JSON. `by_id` maps a device path to its `/dev/disk/by-id` names.
pub fn parse_lsblk(json: &str, by_id: &dyn Fn(&str) -> Vec<String>) -> Result<Vec<Disk>> {
    let parsed: LsblkOutput = serde_json::from_str(json)
        .map_err(|e| Error::Tool { command: "lsblk --json".into(), message: e.to_string() })?;
    Ok(parsed.blockdevices.into_iter().filter(|d| d.kind == "disk" && d.size > 0).map(|d| to_disk(d, by_id)).collect())
}

/// The one device of `lsblk --nodeps <path>` JSON, whatever its type (a disk image's loop
/// device is a "loop", not a "disk").
pub fn parse_lsblk_device(json: &str, by_id: &dyn Fn(&str) -> Vec<String>) -> Result<Disk> {
    let parsed: LsblkOutput = serde_json::from_str(json)
        .map_err(|e| Error::Tool { command: "lsblk --json".into(), message: e.to_string() })?;
    let device = parsed
        .blockdevices
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tool { command: "lsblk --json".into(), message: "no device listed".into() })?;
    Ok(to_disk(device, by_id))
}

fn to_disk(d: LsblkDevice, by_id: &dyn Fn(&str) -> Vec<String>) -> Disk {
    let mut children = Vec::new();
    collect_names(&d.children, &mut children);
    Disk {
        by_id: by_id(&d.path),
        path: d.path,
        model: d.model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()),
        serial: d.serial.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
        size_bytes: d.size,
        transport: d.tran,
        removable: d.rm,
        read_only: d.ro,
        children,
    }
}

fn collect_names(devices: &[LsblkDevice], out: &mut Vec<String>) {
    for d in devices {
        out.push(d.name.clone());
        collect_names(&d.children, out);
    }
}

/// Why a disk cannot be installed to, if it cannot.
pub fn unsuitable(disk: &Disk, boot_medium: Option<&str>, min_bytes: u64) -> Option<String> {
    if let Some(medium) = boot_medium {
        let medium_name = medium.trim_start_matches("/dev/");
        if disk.path == medium || disk.children.iter().any(|c| c == medium_name) {
            return Some("it is the medium the live system booted from".into());
        }
    }
    if disk.read_only {
        return Some("it is read-only".into());
    }
    if disk.size_bytes < min_bytes {
        return Some(format!(
            "it holds {}, the appliance needs {}",
            human_size(disk.size_bytes),
            human_size(min_bytes)
        ));
    }
    None
}

/// The disks a person may choose from.
pub fn installable(disks: &[Disk], boot_medium: Option<&str>, min_bytes: u64) -> Vec<Disk> {
    disks.iter().filter(|d| unsuitable(d, boot_medium, min_bytes).is_none()).cloned().collect()
}

/// Resolves the install config's selector against all disks. A selector naming a disk that
/// exists but is unsuitable is refused with the reason, not reported as "no match".
pub fn select(selector: &DiskSelector, disks: &[Disk], boot_medium: Option<&str>, min_bytes: u64) -> Result<Disk> {
    let describe = || match selector {
        DiskSelector::ById(id) => format!("disk.by-id = {id:?}"),
        DiskSelector::Serial(serial) => format!("disk.serial = {serial:?}"),
        DiskSelector::Path(path) => format!("disk.path = {path:?}"),
        DiskSelector::Largest(_) => "disk.largest".to_owned(),
    };
    let matches: Vec<&Disk> = match selector {
        DiskSelector::ById(id) => {
            let id = id.trim_start_matches("/dev/disk/by-id/");
            disks.iter().filter(|d| d.by_id.iter().any(|b| b == id)).collect()
        }
        DiskSelector::Serial(serial) => disks.iter().filter(|d| d.serial.as_deref() == Some(serial.as_str())).collect(),
        DiskSelector::Path(path) => disks.iter().filter(|d| &d.path == path).collect(),
        DiskSelector::Largest(_) => {
            let candidates = installable(disks, boot_medium, min_bytes);
            let largest = candidates.iter().map(|d| d.size_bytes).max();
            return match candidates.iter().filter(|d| Some(d.size_bytes) == largest).collect::<Vec<_>>().as_slice() {
                [] => Err(Error::NoDisk { selector: describe(), candidates: Vec::new() }),
                [one] => Ok((*one).clone()),
                many => Err(Error::AmbiguousDisk {
                    selector: describe(),
                    matches: many.iter().map(|d| d.describe()).collect(),
                }),
            };
        }
    };
    match matches.as_slice() {
        [] => Err(Error::NoDisk {
            selector: describe(),
            candidates: installable(disks, boot_medium, min_bytes).iter().map(|d| d.describe()).collect(),
        }),
        [one] => match unsuitable(one, boot_medium, min_bytes) {
            Some(reason) => Err(Error::Refused { disk: one.describe(), reason }),
            None => Ok((*one).clone()),
        },
        many => {
            Err(Error::AmbiguousDisk { selector: describe(), matches: many.iter().map(|d| d.describe()).collect() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lsblk of a QEMU guest booted from a USB stick (sda) with two virtio disks.
    const LSBLK: &str = r#"{"blockdevices": [
      {"name":"sda","path":"/dev/sda","size":181403648,"model":"QEMU HARDDISK","serial":"1-0000:00:04.0-1","tran":"usb","rm":true,"ro":false,"type":"disk",
       "children":[{"name":"sda1","path":"/dev/sda1","size":181403648,"model":null,"serial":null,"tran":null,"rm":true,"ro":false,"type":"part"}]},
      {"name":"sr0","path":"/dev/sr0","size":1073741312,"model":"QEMU DVD-ROM","serial":"QM00003","tran":"sata","rm":true,"ro":false,"type":"rom"},
      {"name":"vda","path":"/dev/vda","size":21474836480,"model":null,"serial":"data-a","tran":"virtio","rm":false,"ro":false,"type":"disk"},
      {"name":"vdb","path":"/dev/vdb","size":21474836480,"model":null,"serial":"data-b","tran":"virtio","rm":false,"ro":false,"type":"disk"},
      {"name":"vdc","path":"/dev/vdc","size":1073741824,"model":null,"serial":"tiny","tran":"virtio","rm":false,"ro":false,"type":"disk"},
      {"name":"zram0","path":"/dev/zram0","size":0,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"disk"}
    ]}"#;

    const GIB: u64 = 1 << 30;

    fn disks() -> Vec<Disk> {
        parse_lsblk(LSBLK, &|path| if path == "/dev/vda" { vec!["virtio-data-a".into()] } else { vec![] }).unwrap()
    }

    #[test]
    fn only_whole_disks_with_a_size_are_listed() {
        let paths: Vec<String> = disks().into_iter().map(|d| d.path).collect();
        assert_eq!(paths, ["/dev/sda", "/dev/vda", "/dev/vdb", "/dev/vdc"]);
    }

    #[test]
    fn the_boot_medium_and_small_disks_are_not_offered() {
        let offered: Vec<String> =
            installable(&disks(), Some("/dev/sda1"), 4 * GIB).into_iter().map(|d| d.path).collect();
        assert_eq!(offered, ["/dev/vda", "/dev/vdb"]);
    }

    #[test]
    fn selectors_match_exactly_one_disk_or_say_why_not() {
        let all = disks();
        let pick = |s: DiskSelector| select(&s, &all, Some("/dev/sda1"), 4 * GIB);
        assert_eq!(pick(DiskSelector::Serial("data-b".into())).unwrap().path, "/dev/vdb");
        assert_eq!(pick(DiskSelector::ById("/dev/disk/by-id/virtio-data-a".into())).unwrap().path, "/dev/vda");
        let medium = pick(DiskSelector::Path("/dev/sda".into())).unwrap_err().to_string();
        assert!(medium.contains("booted from"), "{medium}");
        let small = pick(DiskSelector::Serial("tiny".into())).unwrap_err().to_string();
        assert!(small.contains("the appliance needs 4.0 GiB"), "{small}");
        let none = pick(DiskSelector::Serial("nope".into())).unwrap_err().to_string();
        assert!(none.contains("no installable disk matches disk.serial") && none.contains("/dev/vda"), "{none}");
        let tie = pick(DiskSelector::Largest(true)).unwrap_err().to_string();
        assert!(tie.contains("matches 2 disks"), "{tie}");
    }

    #[test]
    fn largest_picks_the_one_biggest_disk() {
        let mut all = disks();
        all[2].size_bytes += GIB;
        assert_eq!(select(&DiskSelector::Largest(true), &all, Some("/dev/sda1"), 4 * GIB).unwrap().path, "/dev/vdb");
    }
}
