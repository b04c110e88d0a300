//! `SHA256SUMS` / `SHA512SUMS`: Debian's checksum files, in `sha256sum`'s format
//! (`<hex>  <name>`, sorted by name), so `sha256sum -c` reads them as well as `xtask verify`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256, Sha512};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The sums file's name, as on Debian's mirrors.
    pub fn sums_file(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA256SUMS",
            Algorithm::Sha512 => "SHA512SUMS",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// Both digests of one file, from a single read (an ISO is hundreds of MB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigests {
    pub sha256: String,
    pub sha512: String,
}

impl FileDigests {
    pub fn get(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Sha512 => &self.sha512,
        }
    }
}

pub fn digest_file(path: &Path) -> Result<FileDigests> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (mut a, mut b) = (Sha256::new(), Sha512::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        a.update(&buf[..n]);
        b.update(&buf[..n]);
    }
    Ok(FileDigests { sha256: hex::encode(a.finalize()), sha512: hex::encode(b.finalize()) })
}

/// The SHA-256 of one file alone (the SBOM's and repro-check's digests), streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// The text of a sums file for `files` (name, digests).
pub fn sums_text(algorithm: Algorithm, files: &[(String, FileDigests)]) -> String {
    let mut sorted: Vec<&(String, FileDigests)> = files.iter().collect();
    sorted.sort_by(|x, y| x.0.as_bytes().cmp(y.0.as_bytes()));
    sorted.iter().map(|(name, d)| format!("{}  {name}\n", d.get(algorithm))).collect()
}

/// Parses a sums file into (hex digest, file name) pairs.
pub fn parse_sums(algorithm: Algorithm, text: &str) -> Result<Vec<(String, String)>> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (digest, name) = line
            .split_once("  ")
            .or_else(|| line.split_once(" *"))
            .with_context(|| format!("{} line {}: not `<digest>  <file>`", algorithm.sums_file(), i + 1))?;
        if digest.len() != algorithm.hex_len() || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("{} line {}: {digest:?} is not a {} digest", algorithm.sums_file(), i + 1, algorithm.sums_file());
        }
        if name.contains('/') || name.starts_with('.') {
            bail!("{} line {}: {name:?} is not a plain file name", algorithm.sums_file(), i + 1);
        }
        entries.push((digest.to_ascii_lowercase(), name.to_owned()));
    }
    if entries.is_empty() {
        bail!("{} lists no files", algorithm.sums_file());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::run::Cmd;

    #[test]
    fn digests_match_known_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, "abc").unwrap();
        let d = digest_file(&path).unwrap();
        assert_eq!(d.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
    }

    #[test]
    fn sums_files_are_read_by_coreutils() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for name in ["b.iso", "a.packages"] {
            std::fs::write(dir.path().join(name), name).unwrap();
            files.push((name.to_owned(), digest_file(&dir.path().join(name)).unwrap()));
        }
        for (algorithm, tool) in [(Algorithm::Sha256, "sha256sum"), (Algorithm::Sha512, "sha512sum")] {
            let text = sums_text(algorithm, &files);
            assert!(text.starts_with(&format!("{}  a.packages\n", files[1].1.get(algorithm))), "{text}");
            std::fs::write(dir.path().join(algorithm.sums_file()), &text).unwrap();
            Cmd::new(tool).args(["--strict", "-c", algorithm.sums_file()]).dir(dir.path()).run().unwrap();
            assert_eq!(parse_sums(algorithm, &text).unwrap().len(), 2);
        }
    }

    #[test]
    fn malformed_sums_are_rejected() {
        assert!(parse_sums(Algorithm::Sha256, "abc  x.iso\n").is_err());
        assert!(parse_sums(Algorithm::Sha256, "").is_err());
        let path_escape = format!("{}  ../etc/passwd\n", "0".repeat(64));
        assert!(parse_sums(Algorithm::Sha256, &path_escape).is_err());
    }
}
