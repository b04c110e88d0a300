//! Content digests: the cache keys of the build root and the "nothing changed" check of `iso`.
//!
//! A digest covers what a file tree *is* (relative paths, file types, permission bits, file
//! contents, symlink targets) and nothing incidental (mtimes, inode numbers, owners), so two
//! checkouts of the same commit give the same key.

use std::fs;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// An incremental SHA-256 over labelled fields, so that ("ab", "c") and ("a", "bc") differ.
#[derive(Clone, Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Adds one field: its label, its length and its bytes.
    pub fn field(&mut self, label: &str, value: impl AsRef<[u8]>) -> &mut Hasher {
        let value = value.as_ref();
        self.0.update(label.as_bytes());
        self.0.update([0]);
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    /// Adds every entry of the tree under `dir`, in a stable order.
    pub fn tree(&mut self, label: &str, dir: &Path) -> Result<&mut Hasher> {
        self.field("tree", label);
        for entry in walkdir::WalkDir::new(dir).follow_links(false).sort_by_file_name() {
            let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
            let rel = entry.path().strip_prefix(dir).expect("walkdir stays under its root");
            let meta =
                entry.path().symlink_metadata().with_context(|| format!("reading {}", entry.path().display()))?;
            self.field("path", rel.as_os_str().as_encoded_bytes());
            self.field("mode", crate::util::fsx::mode(&meta).to_le_bytes());
            let kind = entry.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(entry.path())?;
                self.field("symlink", target.as_os_str().as_encoded_bytes());
            } else if kind.is_file() {
                self.file_contents(entry.path())?;
            } else if kind.is_dir() {
                self.field("dir", "");
            } else {
                self.field("special", "");
            }
        }
        Ok(self)
    }

    fn file_contents(&mut self, path: &Path) -> Result<()> {
        let mut file = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let len = file.metadata()?.len();
        self.0.update(b"file\0");
        self.0.update(len.to_le_bytes());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.0.update(&buf[..n]);
        }
        Ok(())
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// The digest of one tree.
pub fn tree_digest(dir: &Path) -> Result<String> {
    Ok(Hasher::new().tree("root", dir)?.hex())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn sample(dir: &Path) {
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/a"), "alpha").unwrap();
        symlink("/dev/null", dir.join("etc/masked")).unwrap();
    }

    #[test]
    fn same_content_gives_same_digest_regardless_of_location() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        sample(a.path());
        sample(b.path());
        assert_eq!(tree_digest(a.path()).unwrap(), tree_digest(b.path()).unwrap());
    }

    #[test]
    fn content_mode_and_symlink_target_each_change_the_digest() {
        let dir = tempfile::tempdir().unwrap();
        sample(dir.path());
        let before = tree_digest(dir.path()).unwrap();

        fs::write(dir.path().join("etc/a"), "alphb").unwrap();
        let after_content = tree_digest(dir.path()).unwrap();
        assert_ne!(before, after_content);

        fs::set_permissions(dir.path().join("etc/a"), fs::Permissions::from_mode(0o700)).unwrap();
        let after_mode = tree_digest(dir.path()).unwrap();
        assert_ne!(after_content, after_mode);

        fs::remove_file(dir.path().join("etc/masked")).unwrap();
        symlink("/dev/zero", dir.path().join("etc/masked")).unwrap();
        assert_ne!(after_mode, tree_digest(dir.path()).unwrap());
    }

    #[test]
    fn fields_are_length_prefixed() {
        let one = Hasher::new().field("x", "ab").field("x", "c").hex();
        let two = Hasher::new().field("x", "a").field("x", "bc").hex();
        assert_ne!(one, two);
    }
}
