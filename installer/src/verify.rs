//! Checks of what the install wrote: the copied tree against the image, the UKI, the
//! partition table. (File systems are checked with `fsck -n` by the install itself.)

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::tool::{Log, Tool, io_error};

/// How many regular files of the copy are compared byte for byte (by SHA-256), spread evenly
/// over the tree.
pub const SAMPLE_FILES: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Files, directories, symlinks and special files.
    pub entries: u64,
    pub regular_files: u64,
    /// Total size of the regular files.
    pub bytes: u64,
    /// Regular files whose contents were compared.
    pub hashed: u64,
}

impl fmt::Display for TreeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entries, {} files, {} MiB, {} files compared by SHA-256",
            self.entries,
            self.regular_files,
            self.bytes >> 20,
            self.hashed
        )
    }
}

fn walk_error(e: walkdir::Error) -> Error {
    Error::Tool { command: "walk the file tree".into(), message: e.to_string() }
}

/// Counts what is below `root` (not crossing into other file systems).
pub fn summarize(root: &Path) -> Result<TreeSummary> {
    let mut summary = TreeSummary::default();
    for entry in walkdir::WalkDir::new(root).same_file_system(true).min_depth(1) {
        let entry = entry.map_err(walk_error)?;
        summary.entries += 1;
        if entry.file_type().is_file() {
            summary.regular_files += 1;
            summary.bytes += entry.metadata().map_err(walk_error)?.len();
        }
    }
    Ok(summary)
}

fn sha256_of(path: &Path) -> Result<[u8; 32]> {
    let mut file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(|e| io_error(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// Every entry of `source` must be in `copy` with the same type, mode, owner and size, and a
/// sample of files must have the same contents.
pub fn compare_trees(source: &Path, copy: &Path, expected: &TreeSummary) -> Result<TreeSummary> {
    use std::os::unix::fs::MetadataExt;
    let every = (expected.regular_files / SAMPLE_FILES as u64).max(1);
    let mut seen = TreeSummary::default();
    let mismatch = |relative: &Path, what: &str| Error::Tool {
        command: "verify the copy".into(),
        message: format!("/{}: {what}", relative.display()),
    };
    for entry in walkdir::WalkDir::new(source).same_file_system(true).min_depth(1) {
        let entry = entry.map_err(walk_error)?;
        let relative = entry.path().strip_prefix(source).expect("below the source");
        let theirs = entry.path().symlink_metadata().map_err(|e| io_error(entry.path(), e))?;
        let ours = copy.join(relative).symlink_metadata().map_err(|_| mismatch(relative, "missing from the copy"))?;
        if theirs.file_type() != ours.file_type() {
            return Err(mismatch(relative, "is of another type in the copy"));
        }
        // Mount points in the copy (the ESP, the data partition) carry the mounted file
        // system's root mode and owner, not the image's.
        let is_mount_point = ours.dev() != copy.symlink_metadata().map(|m| m.dev()).unwrap_or(ours.dev());
        if !is_mount_point && (theirs.mode() != ours.mode() || theirs.uid() != ours.uid() || theirs.gid() != ours.gid())
        {
            return Err(mismatch(relative, "has another mode or owner in the copy"));
        }
        seen.entries += 1;
        if theirs.is_file() {
            seen.regular_files += 1;
            seen.bytes += ours.len();
            if ours.len() != theirs.len() {
                return Err(mismatch(
                    relative,
                    &format!("{} bytes in the copy, {} in the image", ours.len(), theirs.len()),
                ));
            }
            if seen.regular_files % every == 0 {
                if sha256_of(entry.path())? != sha256_of(&copy.join(relative))? {
                    return Err(mismatch(relative, "differs from the image (SHA-256)"));
                }
                seen.hashed += 1;
            }
        }
    }
    if seen.entries != expected.entries || seen.bytes != expected.bytes {
        return Err(Error::Tool {
            command: "verify the copy".into(),
            message: format!("the image changed while copying: expected {expected}, saw {seen}"),
        });
    }
    Ok(seen)
}

/// Bytes in use on the file systems mounted at or below `root`.
pub fn used_bytes_below(root: &Path) -> u64 {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| Path::new(m).starts_with(root))
        .filter_map(|m| used_bytes(Path::new(m)))
        .sum()
}

fn used_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed struct for the kernel to fill.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some((stat.f_blocks - stat.f_bfree) as u64 * stat.f_frsize as u64)
}

/// Two files hold the same bytes (a file and what was read back after writing it).
pub fn same_contents(written: &Path, read_back: &Path) -> Result<()> {
    if sha256_of(written)? != sha256_of(read_back)? {
        return Err(Error::Tool {
            command: format!("compare {} with {}", written.display(), read_back.display()),
            message: "what was read back differs from what was written".into(),
        });
    }
    Ok(())
}

/// A UKI is a PE file (`MZ`) holding the kernel, so larger than it, with a `.linux` section.
pub fn check_uki(uki: &Path, kernel: &Path) -> Result<()> {
    let bytes = std::fs::read(uki).map_err(|e| io_error(uki, e))?;
    let kernel_size = std::fs::metadata(kernel).map_err(|e| io_error(kernel, e))?.len();
    let problem = if !bytes.starts_with(b"MZ") {
        Some("not a PE/EFI executable")
    } else if (bytes.len() as u64) <= kernel_size {
        Some("smaller than the kernel it should contain")
    } else if !bytes.windows(6).any(|w| w == b".linux") {
        Some("has no .linux section")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::Tool { command: format!("check {}", uki.display()), message: problem.into() }),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
struct SfdiskDump {
    partitiontable: SfdiskTable,
}

#[derive(Deserialize)]
struct SfdiskTable {
    label: String,
    partitions: Vec<SfdiskPartition>,
}

#[derive(Deserialize)]
struct SfdiskPartition {
    #[serde(rename = "type")]
    kind: String,
    name: Option<String>,
}

/// The disk's partition table, as `sfdisk --json` reads it back, is the plan's.
pub fn check_partition_table(plan: &Plan, log: &Log) -> Result<()> {
    let json = Tool::new("sfdisk").args(["--json", &plan.disk.path]).run(log)?;
    table_matches(plan, &json)
}

fn table_matches(plan: &Plan, json: &str) -> Result<()> {
    let wrong = |message: String| Error::Tool { command: format!("sfdisk --json {}", plan.disk.path), message };
    let dump: SfdiskDump = serde_json::from_str(json).map_err(|e| wrong(e.to_string()))?;
    let table = dump.partitiontable;
    if table.label != "gpt" || table.partitions.len() != plan.partitions.len() {
        return Err(wrong(format!(
            "expected a GPT with {} partitions, found a {} table with {}",
            plan.partitions.len(),
            table.label,
            table.partitions.len()
        )));
    }
    for (planned, found) in plan.partitions.iter().zip(&table.partitions) {
        let kind_ok = found.kind.eq_ignore_ascii_case(crate::plan::type_guid(&planned.role));
        if !kind_ok || found.name.as_deref() != Some(planned.label) {
            return Err(wrong(format!("partition {} is not the planned {:?} partition", planned.device, planned.role)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_devices::Disk;
    use crate::plan::Layout;

    #[test]
    fn a_copy_is_checked_entry_by_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (source, copy) = (dir.path().join("source"), dir.path().join("copy"));
        for root in [&source, &copy] {
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::write(root.join("etc/a"), "same").unwrap();
            std::os::unix::fs::symlink("a", root.join("etc/b")).unwrap();
        }
        let expected = summarize(&source).unwrap();
        assert_eq!((expected.entries, expected.regular_files, expected.bytes), (3, 1, 4));
        assert_eq!(compare_trees(&source, &copy, &expected).unwrap().hashed, 1);

        std::fs::write(copy.join("etc/a"), "diff").unwrap();
        let err = compare_trees(&source, &copy, &expected).unwrap_err().to_string();
        assert!(err.contains("/etc/a: differs"), "{err}");
        std::fs::remove_file(copy.join("etc/b")).unwrap();
        let err = compare_trees(&source, &copy, &expected).unwrap_err().to_string();
        assert!(err.contains("/etc/b: missing"), "{err}");
    }

    #[test]
    fn the_partition_table_must_be_the_plans() {
        let disk = Disk {
            path: "/dev/vda".into(),
            by_id: vec![],
            model: None,
            serial: None,
            size_bytes: 20 << 30,
            transport: None,
            removable: false,
            read_only: false,
            children: vec![],
        };
        let plan = Plan::new(&disk, &Layout { data_partition: false, ..Layout::default() });
        let good = r#"{"partitiontable":{"label":"gpt","partitions":[
            {"node":"/dev/vda1","start":2048,"size":1048576,"type":"C12A7328-F81F-11D2-BA4B-00A0C93EC93B","name":"ESP"},
            {"node":"/dev/vda2","start":1050624,"size":9,"type":"4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709","name":"truthdb-root"}]}}"#;
        table_matches(&plan, good).unwrap();
        let swapped = good.replace("\"ESP\"", "\"truthdb-root\"");
        assert!(table_matches(&plan, &swapped).is_err());
        let dos = good.replace("\"gpt\"", "\"dos\"");
        assert!(table_matches(&plan, &dos).unwrap_err().to_string().contains("dos table"));
    }

    #[test]
    fn a_uki_must_be_a_pe_file_holding_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, vec![1u8; 100]).unwrap();
        let uki = dir.path().join("BOOTX64.EFI");
        let mut pe = b"MZ".to_vec();
        pe.extend(b".linux\0\0");
        pe.extend(vec![1u8; 100]);
        std::fs::write(&uki, &pe).unwrap();
        check_uki(&uki, &kernel).unwrap();
        std::fs::write(&uki, &pe[..50]).unwrap();
        assert!(check_uki(&uki, &kernel).unwrap_err().to_string().contains("smaller than the kernel"));
    }
}
