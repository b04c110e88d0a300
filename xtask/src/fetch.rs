//! Downloads pinned by SHA-256 (the kernel tarball, payload .debs): a file whose digest is not
//! the pinned one is deleted before anything reads it.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::run::Cmd;

/// Downloads `url` to `target` and checks it against `sha256`, pinned in `pinned_in`.
/// `what` names the file in messages ("the kernel source").
pub fn download_checked(what: &str, url: &str, sha256: &str, pinned_in: &str, target: &Path, log: &Path) -> Result<()> {
    Cmd::new("curl")
        .args(["--fail", "--location", "--silent", "--show-error", "--output"])
        .arg(target)
        .arg(url)
        .run_logged(log, |_| {})
        .with_context(|| format!("downloading {what} {url}"))?;
    let actual = crate::checksums::digest_file(target)?.sha256;
    if !actual.eq_ignore_ascii_case(sha256) {
        let _ = fs::remove_file(target);
        bail!("{what} {url}: sha256 is {actual}, but {pinned_in} pins {sha256}; refusing to use it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_sha256_is_refused_and_the_download_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux-6.12.1.tar");
        fs::write(&tarball, "not really a kernel").unwrap();
        let target = dir.path().join("download.tar");
        let log = dir.path().join("log");
        let url = format!("file://{}", tarball.display());
        let wrong = download_checked("the kernel source", &url, &"0".repeat(64), "kernel/kernel.toml", &target, &log);
        let msg = format!("{:#}", wrong.unwrap_err());
        assert!(msg.contains("refusing to use it") && msg.contains("kernel/kernel.toml pins 0000"), "{msg}");
        assert!(!target.exists(), "a download with the wrong sha256 was left behind");
        let good = crate::checksums::digest_file(&tarball).unwrap().sha256;
        download_checked("the kernel source", &url, &good, "kernel/kernel.toml", &target, &log).unwrap();
        assert!(target.exists());
    }
}
