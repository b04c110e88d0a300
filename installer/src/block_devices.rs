//! Installable disks: what `lsblk` reports, minus the live medium we booted from, read-only
//! devices and disks too small for the image. Selection by the install config must match
//! exactly one of them.

use serde::{Deserialize, Serialize};

use crate::config::DiskSelector;
use crate::error::{Error, Result};

/// A whole disk, as a person choosing where to install needs to see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
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
    /// The kernel's name (`dm-0` where `name` is `vg-root`): what /proc/swaps and
    /// /sys/class/block use.
    kname: Option<String>,
    path: String,
    /// `major:minor`, what /proc/self/mountinfo names a mounted file system's device by.
    #[serde(rename = "maj:min")]
    maj_min: Option<String>,
    size: u64,
    model: Option<String>,
    serial: Option<String>,
    tran: Option<String>,
    rm: bool,
    ro: bool,
    #[serde(rename = "type")]
    kind: String,
    fstype: Option<String>,
    label: Option<String>,
    partlabel: Option<String>,
    #[serde(default)]
    children: Vec<LsblkDevice>,
}

/// The `lsblk` invocation whose JSON [`parse_lsblk`], [`in_use`] and [`existing_install`] read.
pub const LSBLK_ARGS: &[&str] = &[
    "--json",
    "--bytes",
    "--tree",
    "-o",
    "NAME,KNAME,PATH,MAJ:MIN,SIZE,MODEL,SERIAL,TRAN,RM,RO,TYPE,FSTYPE,LABEL,PARTLABEL",
];

/// Whole disks from `lsblk` JSON. `by_id` maps a device path to its `/dev/disk/by-id` names.
pub fn parse_lsblk(json: &str, by_id: &dyn Fn(&str) -> Vec<String>) -> Result<Vec<Disk>> {
    let parsed: LsblkOutput = serde_json::from_str(json)
        .map_err(|e| Error::Tool { command: "lsblk --json".into(), message: e.to_string() })?;
    Ok(parsed.blockdevices.into_iter().filter(|d| d.kind == "disk" && d.size > 0).map(|d| to_disk(d, by_id)).collect())
}

/// The one device of `lsblk <path>` JSON, whatever its type (a disk image's loop
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

/// One disk in `truthdb-installer disks --json`: the disk's fields, whether it may be
/// installed to, and if not, why not.
#[derive(Debug, Serialize)]
pub struct Listed<'a> {
    #[serde(flatten)]
    pub disk: &'a Disk,
    pub installable: bool,
    /// Why the disk is not offered (boot medium, read-only, too small); null when it is.
    pub why_not: Option<String>,
}

/// Every disk with whether it may be installed to, and why not (what `disks --json` prints).
pub fn listing<'a>(disks: &'a [Disk], boot_medium: Option<&str>, min_bytes: u64) -> Vec<Listed<'a>> {
    disks
        .iter()
        .map(|disk| {
            let why_not = unsuitable(disk, boot_medium, min_bytes);
            Listed { disk, installable: why_not.is_none(), why_not }
        })
        .collect()
}

/// Removable media and USB disks (sticks, backup disks) are never picked by size.
pub fn removable_or_usb(disk: &Disk) -> bool {
    disk.removable || disk.transport.as_deref() == Some("usb")
}

fn describe_selector(selector: &DiskSelector) -> String {
    match selector {
        DiskSelector::ById(id) => format!("disk.by-id = {id:?}"),
        DiskSelector::Serial(serial) => format!("disk.serial = {serial:?}"),
        DiskSelector::Path(path) => format!("disk.path = {path:?}"),
        DiskSelector::Largest(_) => "disk.largest".to_owned(),
    }
}

/// The disks a selector naming one disk (by-id, serial, path) names; none for `largest`.
pub fn matching<'a>(selector: &DiskSelector, disks: &'a [Disk]) -> Vec<&'a Disk> {
    match selector {
        DiskSelector::ById(id) => {
            let id = id.trim_start_matches("/dev/disk/by-id/");
            disks.iter().filter(|d| d.by_id.iter().any(|b| b == id)).collect()
        }
        DiskSelector::Serial(serial) => disks.iter().filter(|d| d.serial.as_deref() == Some(serial.as_str())).collect(),
        DiskSelector::Path(path) => disks.iter().filter(|d| &d.path == path).collect(),
        DiskSelector::Largest(_) => Vec::new(),
    }
}

/// Resolves the install config's selector against all disks. A selector naming a disk that
/// exists but is unsuitable is refused with the reason, not reported as "no match".
/// `largest` chooses among fixed, non-USB disks only: a USB stick or backup disk left plugged
/// in is erased only when named.
pub fn select(selector: &DiskSelector, disks: &[Disk], boot_medium: Option<&str>, min_bytes: u64) -> Result<Disk> {
    if let DiskSelector::Largest(_) = selector {
        let installable = installable(disks, boot_medium, min_bytes);
        let candidates: Vec<&Disk> = installable.iter().filter(|d| !removable_or_usb(d)).collect();
        let largest = candidates.iter().map(|d| d.size_bytes).max();
        return match candidates.iter().filter(|d| Some(d.size_bytes) == largest).collect::<Vec<_>>().as_slice() {
            [] => Err(Error::NoDisk {
                selector: "disk.largest (removable and USB disks are used only when named by by-id, serial or path)"
                    .into(),
                candidates: installable.iter().map(|d| d.describe()).collect(),
            }),
            [one] => Ok((**one).clone()),
            many => Err(Error::AmbiguousDisk {
                selector: describe_selector(selector),
                matches: many.iter().map(|d| d.describe()).collect(),
            }),
        };
    }
    match matching(selector, disks).as_slice() {
        [] => Err(Error::NoDisk {
            selector: describe_selector(selector),
            candidates: installable(disks, boot_medium, min_bytes).iter().map(|d| d.describe()).collect(),
        }),
        [one] => match unsuitable(one, boot_medium, min_bytes) {
            Some(reason) => Err(Error::Refused { disk: one.describe(), reason }),
            None => Ok((*one).clone()),
        },
        many => Err(Error::AmbiguousDisk {
            selector: describe_selector(selector),
            matches: many.iter().map(|d| d.describe()).collect(),
        }),
    }
}

/// Kernel name -> the kernel names of its holders (`/sys/class/block/<name>/holders`): the
/// device-mapper (LVM, LUKS, multipath) and md devices built on it.
pub type Holders = std::collections::HashMap<String, Vec<String>>;

fn parse_tree(lsblk_json: &str) -> Result<LsblkDevice> {
    let parsed: LsblkOutput = serde_json::from_str(lsblk_json)
        .map_err(|e| Error::Tool { command: "lsblk --json".into(), message: e.to_string() })?;
    parsed
        .blockdevices
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tool { command: "lsblk --json".into(), message: "no device listed".into() })
}

fn flatten<'a>(device: &'a LsblkDevice, out: &mut Vec<&'a LsblkDevice>) {
    out.push(device);
    for child in &device.children {
        flatten(child, out);
    }
}

/// Undoes the octal escapes of /proc/self/mountinfo and /proc/swaps (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Signatures of a device that belongs to something larger (a volume group, an encrypted
/// volume, an array, a path set, a pool): erasing it breaks that, even when it is not active
/// here, since the rest of it may be on other disks.
fn member_of(fstype: &str) -> Option<&'static str> {
    Some(match fstype {
        "LVM2_member" => "an LVM physical volume",
        "crypto_LUKS" => "a LUKS volume",
        "linux_raid_member" => "an md RAID member",
        "isw_raid_member" | "ddf_raid_member" => "a firmware RAID member",
        "mpath_member" => "a multipath member",
        "zfs_member" => "a ZFS pool member",
        _ => return None,
    })
}

/// What on the disk of `lsblk_json` (`lsblk` with [`LSBLK_ARGS`] and the disk's path: its
/// tree of partitions and holders) is in use, one finding each; empty when nothing is.
///
/// Decided by device numbers (mountinfo names a mounted device by `major:minor`, whatever
/// path it was mounted by), `/proc/swaps`, the kernel's holders (device mapper and md built on
/// a device) and member signatures. `holders` maps kernel names to their holders' kernel names
/// (see [`Holders`]).
pub fn in_use(lsblk_json: &str, mountinfo: &str, swaps: &str, holders: &Holders) -> Result<Vec<String>> {
    let tree = parse_tree(lsblk_json)?;
    let mut nodes = Vec::new();
    flatten(&tree, &mut nodes);
    let kname = |d: &LsblkDevice| d.kname.clone().unwrap_or_else(|| d.name.clone());
    // Mount entries: (device number, source, mount point).
    let mounts: Vec<(String, String, String)> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let source = right.split(' ').nth(1)?;
            Some((left.get(2)?.to_string(), unescape(source), unescape(left.get(4)?)))
        })
        .collect();
    let swapped: Vec<String> =
        swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(unescape).collect();

    let mut findings = Vec::new();
    for node in &nodes {
        let kernel_name = kname(node);
        let names_it = |path: &str| path == node.path || path.strip_prefix("/dev/") == Some(kernel_name.as_str());
        // btrfs reports an anonymous device number: its source path still names the device.
        let mount_points: Vec<&str> = mounts
            .iter()
            .filter(|(dev, source, _)| node.maj_min.as_deref() == Some(dev.as_str()) || names_it(source))
            .map(|(_, _, at)| at.as_str())
            .collect();
        if !mount_points.is_empty() {
            findings.push(format!("{} is mounted on {}", node.path, mount_points.join(", ")));
        }
        if swapped.iter().any(|s| names_it(s)) {
            findings.push(format!("{} is in use as swap", node.path));
        }
        // The kernel's holders, and what lsblk shows built on it (partitions are not holders).
        let mut held_by: Vec<String> = holders.get(&kernel_name).cloned().unwrap_or_default();
        for child in node.children.iter().filter(|c| c.kind != "part") {
            let child = kname(child);
            if !held_by.contains(&child) {
                held_by.push(child);
            }
        }
        if !held_by.is_empty() {
            findings.push(format!(
                "{} is held by {} (device mapper or md: LVM, LUKS, RAID or multipath)",
                node.path,
                held_by.join(", ")
            ));
        }
        if let Some(what) = node.fstype.as_deref().and_then(member_of) {
            findings.push(format!("{} is {what}", node.path));
        }
    }
    Ok(findings)
}

/// Evidence that the disk of `lsblk_json` (its tree, as for [`in_use`]) already holds a
/// TruthDB OS install: a partition named, or a file system labelled, as the installer names
/// them (see [`crate::plan::INSTALL_LABELS`]).
pub fn existing_install(lsblk_json: &str) -> Result<Option<String>> {
    let tree = parse_tree(lsblk_json)?;
    let mut nodes = Vec::new();
    flatten(&tree, &mut nodes);
    Ok(nodes.iter().find_map(|node| {
        fn ours(label: &Option<String>) -> Option<&str> {
            label.as_deref().filter(|l| crate::plan::INSTALL_LABELS.contains(l))
        }
        let (what, label) = match (ours(&node.partlabel), ours(&node.label)) {
            (Some(label), _) => ("a partition named", label),
            (None, Some(label)) => ("a file system labelled", label),
            (None, None) => return None,
        };
        Some(format!("it already holds TruthDB OS ({} is {what} {label:?})", node.path))
    }))
}

/// How the disk now at the chosen disk's path differs from the one chosen (serial, model,
/// size, by-id names), if it does. New by-id names are not a difference: udev may add some.
pub fn changed(chosen: &Disk, now: &Disk) -> Option<String> {
    let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
    let mut differences = Vec::new();
    if chosen.serial != now.serial {
        differences.push(format!("serial {}, now {}", or_none(&chosen.serial), or_none(&now.serial)));
    }
    if chosen.model != now.model {
        differences.push(format!("model {}, now {}", or_none(&chosen.model), or_none(&now.model)));
    }
    if chosen.size_bytes != now.size_bytes {
        differences.push(format!("size {}, now {}", human_size(chosen.size_bytes), human_size(now.size_bytes)));
    }
    let lost: Vec<&str> = chosen.by_id.iter().filter(|b| !now.by_id.contains(b)).map(String::as_str).collect();
    if !lost.is_empty() {
        differences.push(format!("/dev/disk/by-id/{} no longer names it", lost.join(", ")));
    }
    (!differences.is_empty())
        .then(|| format!("{} is no longer the disk that was chosen ({})", chosen.path, differences.join("; ")))
}

/// Lists disks (with `list`) until the selector names one or `patience` has passed, and
/// returns the last list. A disk named by id, serial or path may still be appearing (USB,
/// a slow controller) when the unattended install starts; `largest` names no disk in
/// particular, so it takes the first list.
pub fn wait_for_disk(
    selector: &DiskSelector,
    patience: std::time::Duration,
    poll: std::time::Duration,
    list: &mut dyn FnMut() -> Result<Vec<Disk>>,
) -> Result<Vec<Disk>> {
    if matches!(selector, DiskSelector::Largest(_)) {
        return list();
    }
    let started = std::time::Instant::now();
    loop {
        let disks = list()?;
        if !matching(selector, &disks).is_empty() || started.elapsed() >= patience {
            return Ok(disks);
        }
        std::thread::sleep(poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_listing_has_every_disk_with_whether_and_why_not() {
        let all = parse_lsblk(LSBLK, &|_| Vec::new()).unwrap();
        let listed = listing(&all, Some("/dev/sda"), 10 << 30);
        let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&listed).unwrap()).unwrap();
        let disks = json.as_array().expect("an array");
        assert_eq!(disks.len(), all.len(), "every disk, the refused ones too: {json}");
        let by_path = |path: &str| disks.iter().find(|d| d["path"] == path).unwrap_or_else(|| panic!("{path}: {json}"));
        let medium = by_path("/dev/sda");
        assert_eq!(medium["installable"], false);
        assert!(medium["why_not"].as_str().unwrap().contains("booted from"), "{medium}");
        let target = by_path("/dev/vda");
        assert_eq!(target["installable"], true);
        assert!(target["why_not"].is_null(), "{target}");
        for field in ["by_id", "model", "serial", "size_bytes", "transport", "removable", "read_only", "children"] {
            assert!(target.get(field).is_some(), "no {field}: {target}");
        }
        assert!(target["size_bytes"].as_u64().unwrap() > 0, "{target}");
    }

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

    // --- Removable and USB disks: only when named.

    /// A server with one internal disk, a bigger USB stick, a bigger USB backup disk (not
    /// flagged removable) and an SD card in a reader.
    const LSBLK_WITH_USB: &str = r#"{"blockdevices": [
      {"name":"nvme0n1","path":"/dev/nvme0n1","size":256060514304,"model":"Samsung SSD","serial":"S4EW1","tran":"nvme","rm":false,"ro":false,"type":"disk"},
      {"name":"sdb","path":"/dev/sdb","size":512110190592,"model":"Cruzer","serial":"4C530001","tran":"usb","rm":true,"ro":false,"type":"disk"},
      {"name":"sdc","path":"/dev/sdc","size":4000787030016,"model":"Backup Plus","serial":"NA8F1","tran":"usb","rm":false,"ro":false,"type":"disk"},
      {"name":"mmcblk0","path":"/dev/mmcblk0","size":1000204886016,"model":null,"serial":"0x1234","tran":null,"rm":true,"ro":false,"type":"disk"}
    ]}"#;

    fn usb_disks() -> Vec<Disk> {
        parse_lsblk(LSBLK_WITH_USB, &|path| {
            if path == "/dev/sdc" { vec!["usb-Seagate_Backup_NA8F1-0:0".into()] } else { vec![] }
        })
        .unwrap()
    }

    #[test]
    fn largest_never_picks_a_removable_or_usb_disk() {
        let all = usb_disks();
        assert_eq!(select(&DiskSelector::Largest(true), &all, None, 4 * GIB).unwrap().path, "/dev/nvme0n1");
        let only_usb: Vec<Disk> = all.iter().filter(|d| d.path != "/dev/nvme0n1").cloned().collect();
        let none = select(&DiskSelector::Largest(true), &only_usb, None, 4 * GIB).unwrap_err().to_string();
        assert!(none.contains("no installable disk matches disk.largest") && none.contains("named"), "{none}");
    }

    #[test]
    fn a_removable_or_usb_disk_named_explicitly_is_allowed() {
        let all = usb_disks();
        let pick = |s: DiskSelector| select(&s, &all, None, 4 * GIB).unwrap().path;
        assert_eq!(pick(DiskSelector::Serial("4C530001".into())), "/dev/sdb");
        assert_eq!(pick(DiskSelector::Path("/dev/mmcblk0".into())), "/dev/mmcblk0");
        assert_eq!(pick(DiskSelector::ById("usb-Seagate_Backup_NA8F1-0:0".into())), "/dev/sdc");
    }

    #[test]
    fn a_stable_selector_waits_for_its_disk_a_bounded_time() {
        use std::time::{Duration, Instant};
        let all = usb_disks();
        // The disk shows up on the third look.
        let mut looks = 0;
        let found = wait_for_disk(
            &DiskSelector::Serial("NA8F1".into()),
            Duration::from_secs(5),
            Duration::from_millis(1),
            &mut || {
                looks += 1;
                Ok(if looks < 3 { all[..1].to_vec() } else { all.clone() })
            },
        )
        .unwrap();
        assert_eq!((looks, found.len()), (3, 4));
        // Never there: given up after the patience, with the last list.
        let started = Instant::now();
        let mut looks = 0;
        let last = wait_for_disk(
            &DiskSelector::Serial("gone".into()),
            Duration::from_millis(50),
            Duration::from_millis(5),
            &mut || {
                looks += 1;
                Ok(all.clone())
            },
        )
        .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50) && looks > 2 && last.len() == 4, "{looks}");
        // `largest` names no particular disk: nothing to wait for.
        let mut looks = 0;
        wait_for_disk(&DiskSelector::Largest(true), Duration::from_secs(5), Duration::from_millis(1), &mut || {
            looks += 1;
            Ok(vec![])
        })
        .unwrap();
        assert_eq!(looks, 1);
    }

    // --- In use: decided by device numbers, swaps and holders.

    /// `lsblk /dev/sda`: an LVM system disk, root and swap on logical volumes.
    const SDA_LVM: &str = r#"{"blockdevices": [
      {"name":"sda","kname":"sda","path":"/dev/sda","maj:min":"8:0","size":21474836480,"model":"QEMU HARDDISK","serial":"QM1","tran":"sata","rm":false,"ro":false,"type":"disk","fstype":null,"label":null,"partlabel":null,
       "children":[
        {"name":"sda1","kname":"sda1","path":"/dev/sda1","maj:min":"8:1","size":536870912,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"vfat","label":null,"partlabel":null},
        {"name":"sda2","kname":"sda2","path":"/dev/sda2","maj:min":"8:2","size":20935720960,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"LVM2_member","label":null,"partlabel":null,
         "children":[
          {"name":"vg-root","kname":"dm-0","path":"/dev/mapper/vg-root","maj:min":"254:0","size":19327352832,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"lvm","fstype":"ext4","label":null,"partlabel":null},
          {"name":"vg-swap","kname":"dm-1","path":"/dev/mapper/vg-swap","maj:min":"254:1","size":1073741824,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"lvm","fstype":"swap","label":null,"partlabel":null}
         ]}
       ]}
    ]}"#;

    /// `lsblk /dev/vdb`: two plain partitions, the second a swap partition.
    const VDB_PLAIN: &str = r#"{"blockdevices": [
      {"name":"vdb","kname":"vdb","path":"/dev/vdb","maj:min":"253:16","size":21474836480,"model":null,"serial":"data-b","tran":"virtio","rm":false,"ro":false,"type":"disk","fstype":null,"label":null,"partlabel":null,
       "children":[
        {"name":"vdb1","kname":"vdb1","path":"/dev/vdb1","maj:min":"253:17","size":20401094656,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"btrfs","label":null,"partlabel":null},
        {"name":"vdb2","kname":"vdb2","path":"/dev/vdb2","maj:min":"253:18","size":1073741824,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"swap","label":null,"partlabel":null}
       ]}
    ]}"#;

    /// `lsblk /dev/sdc`: a LUKS partition, opened.
    const SDC_LUKS: &str = r#"{"blockdevices": [
      {"name":"sdc","kname":"sdc","path":"/dev/sdc","maj:min":"8:32","size":21474836480,"model":"DISK","serial":"C1","tran":"sata","rm":false,"ro":false,"type":"disk","fstype":null,"label":null,"partlabel":null,
       "children":[
        {"name":"sdc1","kname":"sdc1","path":"/dev/sdc1","maj:min":"8:33","size":21473787904,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"crypto_LUKS","label":null,"partlabel":null,
         "children":[
          {"name":"luks-7f1c","kname":"dm-2","path":"/dev/mapper/luks-7f1c","maj:min":"254:2","size":21457010688,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"crypt","fstype":null,"label":null,"partlabel":null}
         ]}
       ]}
    ]}"#;

    /// `lsblk /dev/sdd`: one half of a RAID 1.
    const SDD_MD: &str = r#"{"blockdevices": [
      {"name":"sdd","kname":"sdd","path":"/dev/sdd","maj:min":"8:48","size":21474836480,"model":"DISK","serial":"D1","tran":"sata","rm":false,"ro":false,"type":"disk","fstype":null,"label":null,"partlabel":null,
       "children":[
        {"name":"sdd1","kname":"sdd1","path":"/dev/sdd1","maj:min":"8:49","size":21473787904,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"linux_raid_member","label":"host:0","partlabel":null,
         "children":[
          {"name":"md0","kname":"md0","path":"/dev/md0","maj:min":"9:0","size":21455962112,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"raid1","fstype":"ext4","label":null,"partlabel":null}
         ]}
       ]}
    ]}"#;

    /// `lsblk /dev/sde`: one path of a multipath SAN disk.
    const SDE_MULTIPATH: &str = r#"{"blockdevices": [
      {"name":"sde","kname":"sde","path":"/dev/sde","maj:min":"8:64","size":107374182400,"model":"SAN LUN","serial":"3600a0b8","tran":"fc","rm":false,"ro":false,"type":"disk","fstype":"mpath_member","label":null,"partlabel":null,
       "children":[
        {"name":"mpatha","kname":"dm-3","path":"/dev/mapper/mpatha","maj:min":"254:3","size":107374182400,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"mpath","fstype":null,"label":null,"partlabel":null}
       ]}
    ]}"#;

    /// `lsblk /dev/loop0`, as `--disk` sees a disk image (a loop device, not a disk).
    const LOOP_WITH_PARTS: &str = r#"{"blockdevices": [
      {"name":"loop0","kname":"loop0","path":"/dev/loop0","maj:min":"7:0","size":12884901888,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"loop","fstype":null,"label":null,"partlabel":null,
       "children":[
        {"name":"loop0p1","kname":"loop0p1","path":"/dev/loop0p1","maj:min":"259:0","size":536870912,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"vfat","label":"ESP","partlabel":"ESP"},
        {"name":"loop0p2","kname":"loop0p2","path":"/dev/loop0p2","maj:min":"259:1","size":8589934592,"model":null,"serial":null,"tran":null,"rm":false,"ro":false,"type":"part","fstype":"ext4","label":"truthdb-root","partlabel":"truthdb-root"}
       ]}
    ]}"#;

    /// A blank disk.
    const VDC_BLANK: &str = r#"{"blockdevices": [
      {"name":"vdc","kname":"vdc","path":"/dev/vdc","maj:min":"253:32","size":21474836480,"model":null,"serial":"blank","tran":"virtio","rm":false,"ro":false,"type":"disk","fstype":null,"label":null,"partlabel":null}
    ]}"#;

    /// The live system's own mounts: nothing of the disks above.
    const MOUNTINFO_LIVE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 0:25 / / rw,noatime - overlay overlay rw,lowerdir=/run/live/rootfs/filesystem.squashfs/
30 27 11:0 / /run/live/medium ro,noatime shared:9 - iso9660 /dev/sr0 ro
31 27 7:1 / /run/live/rootfs/filesystem.squashfs ro,noatime - squashfs /dev/loop1 ro
";
    const NO_SWAPS: &str = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

    fn holders(pairs: &[(&str, &str)]) -> Holders {
        let mut map = Holders::new();
        for (device, holder) in pairs {
            map.entry(device.to_string()).or_default().push(holder.to_string());
        }
        map
    }

    fn findings(lsblk: &str, mountinfo: &str, swaps: &str, held: &[(&str, &str)]) -> String {
        in_use(lsblk, mountinfo, swaps, &holders(held)).unwrap().join("; ")
    }

    #[test]
    fn nothing_in_use_on_a_blank_or_idle_disk() {
        assert_eq!(findings(VDC_BLANK, MOUNTINFO_LIVE, NO_SWAPS, &[]), "");
        assert_eq!(findings(VDB_PLAIN, MOUNTINFO_LIVE, NO_SWAPS, &[]), "");
        assert_eq!(findings(LOOP_WITH_PARTS, MOUNTINFO_LIVE, NO_SWAPS, &[]), "");
    }

    #[test]
    fn a_mounted_partition_is_in_use() {
        let mounted = format!("{MOUNTINFO_LIVE}40 27 253:17 / /mnt/old\\040data rw - btrfs /dev/vdb1 rw\n");
        let found = findings(VDB_PLAIN, &mounted, NO_SWAPS, &[]);
        assert!(found.contains("/dev/vdb1 is mounted on /mnt/old data"), "{found}");
    }

    #[test]
    fn a_mount_is_recognised_by_its_device_number_not_its_name() {
        // Mounted as /dev/mapper/vg-root, which lsblk calls vg-root.
        let mounted = format!("{MOUNTINFO_LIVE}41 27 254:0 / /target rw - ext4 /dev/mapper/vg-root rw\n");
        let found = findings(SDA_LVM, &mounted, NO_SWAPS, &[("sda2", "dm-0"), ("sda2", "dm-1")]);
        assert!(found.contains("/dev/mapper/vg-root is mounted on /target"), "{found}");
        // The same device under a name that matches nothing lsblk says (a udev alias).
        let aliased = format!("{MOUNTINFO_LIVE}41 27 254:0 / /target rw - ext4 /dev/disk/by-uuid/1234 rw\n");
        let found = findings(SDA_LVM, &aliased, NO_SWAPS, &[]);
        assert!(found.contains("/dev/mapper/vg-root is mounted on /target"), "{found}");
        // A whole-disk file system.
        let whole = format!("{MOUNTINFO_LIVE}42 27 253:32 / /srv rw - ext4 /dev/vdc rw\n");
        assert!(findings(VDC_BLANK, &whole, NO_SWAPS, &[]).contains("/dev/vdc is mounted on /srv"));
    }

    #[test]
    fn btrfs_mounts_are_recognised_by_their_source() {
        // btrfs reports an anonymous device number (0:NN) in mountinfo.
        let mounted = format!("{MOUNTINFO_LIVE}43 27 0:45 / /data rw - btrfs /dev/vdb1 rw,subvol=/\n");
        assert!(findings(VDB_PLAIN, &mounted, NO_SWAPS, &[]).contains("/dev/vdb1 is mounted on /data"));
    }

    #[test]
    fn active_swap_is_in_use() {
        let partition = format!("{NO_SWAPS}/dev/vdb2                               partition\t1048572\t\t0\t\t-2\n");
        let found = findings(VDB_PLAIN, MOUNTINFO_LIVE, &partition, &[]);
        assert!(found.contains("/dev/vdb2 is in use as swap"), "{found}");
        // Swap on a logical volume is listed by its kernel name.
        let on_lvm = format!("{NO_SWAPS}/dev/dm-1                               partition\t1048572\t\t0\t\t-2\n");
        let found = findings(SDA_LVM, MOUNTINFO_LIVE, &on_lvm, &[("sda2", "dm-0"), ("sda2", "dm-1")]);
        assert!(found.contains("/dev/mapper/vg-swap is in use as swap"), "{found}");
        // A swap file on another disk is not this disk's business.
        let file = format!("{NO_SWAPS}/swapfile                               file\t1048572\t\t0\t\t-2\n");
        assert_eq!(findings(VDB_PLAIN, MOUNTINFO_LIVE, &file, &[]), "");
    }

    #[test]
    fn lvm_luks_md_and_multipath_members_are_in_use() {
        // Active: the kernel lists holders.
        let lvm = findings(SDA_LVM, MOUNTINFO_LIVE, NO_SWAPS, &[("sda2", "dm-0"), ("sda2", "dm-1")]);
        assert!(lvm.contains("/dev/sda2 is held by dm-0, dm-1"), "{lvm}");
        let luks = findings(SDC_LUKS, MOUNTINFO_LIVE, NO_SWAPS, &[("sdc1", "dm-2")]);
        assert!(luks.contains("/dev/sdc1 is held by dm-2"), "{luks}");
        let md = findings(SDD_MD, MOUNTINFO_LIVE, NO_SWAPS, &[("sdd1", "md0")]);
        assert!(md.contains("/dev/sdd1 is held by md0"), "{md}");
        let multipath = findings(SDE_MULTIPATH, MOUNTINFO_LIVE, NO_SWAPS, &[("sde", "dm-3")]);
        assert!(multipath.contains("/dev/sde is held by dm-3"), "{multipath}");
        // Inactive (no holders): the member signature alone, since the rest of the volume
        // group, array or path set may be elsewhere.
        assert!(findings(SDA_LVM, MOUNTINFO_LIVE, NO_SWAPS, &[]).contains("/dev/sda2 is an LVM physical volume"));
        assert!(findings(SDC_LUKS, MOUNTINFO_LIVE, NO_SWAPS, &[]).contains("/dev/sdc1 is a LUKS volume"));
        assert!(findings(SDD_MD, MOUNTINFO_LIVE, NO_SWAPS, &[]).contains("/dev/sdd1 is an md RAID member"));
        assert!(findings(SDE_MULTIPATH, MOUNTINFO_LIVE, NO_SWAPS, &[]).contains("/dev/sde is a multipath member"));
        // Holders the lsblk tree does not show (lsblk run before the mapping was made).
        let late = findings(VDB_PLAIN, MOUNTINFO_LIVE, NO_SWAPS, &[("vdb1", "dm-7")]);
        assert!(late.contains("/dev/vdb1 is held by dm-7"), "{late}");
    }

    #[test]
    fn a_disk_images_partitions_are_seen() {
        // `--disk /dev/loop0`: the loop device's own partitions count.
        let mounted = format!("{MOUNTINFO_LIVE}44 27 259:1 / /mnt rw - ext4 /dev/loop0p2 rw\n");
        assert!(findings(LOOP_WITH_PARTS, &mounted, NO_SWAPS, &[]).contains("/dev/loop0p2 is mounted on /mnt"));
        let disk = parse_lsblk_device(LOOP_WITH_PARTS, &|_| vec![]).unwrap();
        assert_eq!(disk.children, ["loop0p1", "loop0p2"]);
    }

    // --- An install already there; the disk changed since it was chosen.

    #[test]
    fn an_existing_install_is_recognised_by_its_labels() {
        let found = existing_install(LOOP_WITH_PARTS).unwrap().unwrap();
        assert!(found.contains("/dev/loop0p2") && found.contains("truthdb-root"), "{found}");
        // A file system label alone (the partition table rewritten by hand).
        let fs_label_only = LOOP_WITH_PARTS.replace(r#""partlabel":"truthdb-root""#, r#""partlabel":null"#);
        assert!(existing_install(&fs_label_only).unwrap().unwrap().contains("truthdb-root"));
        let data = VDB_PLAIN.replace(r#""fstype":"btrfs","label":null"#, r#""fstype":"ext4","label":"truthdb-data""#);
        assert!(existing_install(&data).unwrap().unwrap().contains("/dev/vdb1"));
        // An ESP alone is anybody's.
        let esp_only = LOOP_WITH_PARTS.replace("truthdb-root", "other");
        assert_eq!(existing_install(&esp_only).unwrap(), None);
        assert_eq!(existing_install(VDC_BLANK).unwrap(), None);
        assert_eq!(existing_install(SDA_LVM).unwrap(), None);
    }

    #[test]
    fn a_disk_that_changed_since_it_was_chosen_is_noticed() {
        let chosen = parse_lsblk_device(VDB_PLAIN, &|_| vec!["virtio-data-b".into()]).unwrap();
        assert_eq!(changed(&chosen, &chosen.clone()), None);
        // New partitions or by-id names appearing are not a different disk.
        let mut same = parse_lsblk_device(VDC_BLANK.replace("vdc", "vdb").as_str(), &|_| {
            vec!["virtio-data-b".into(), "wwn-0x5000".into()]
        })
        .unwrap();
        same.serial = chosen.serial.clone();
        assert_eq!(changed(&chosen, &same), None);
        let mut other = chosen.clone();
        other.serial = Some("data-c".into());
        assert!(changed(&chosen, &other).unwrap().contains("serial data-b, now data-c"));
        let mut other = chosen.clone();
        other.size_bytes /= 2;
        assert!(changed(&chosen, &other).unwrap().contains("size 20.0 GiB, now 10.0 GiB"));
        let mut other = chosen.clone();
        other.by_id = vec!["virtio-data-c".into()];
        assert!(changed(&chosen, &other).unwrap().contains("virtio-data-b"));
        let mut other = chosen.clone();
        other.model = Some("Cruzer".into());
        assert!(changed(&chosen, &other).unwrap().contains("model"));
    }
}
