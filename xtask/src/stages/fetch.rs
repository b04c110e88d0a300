//! Downloads: one curl invocation for every file the pipeline fetches ([`download`]), and
//! downloads pinned by SHA-256 (the kernel tarball, payload .debs, an apt repository's
//! indexes): a file whose digest is not the pinned one is deleted before anything reads it.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::util::run::Cmd;

/// Downloads `url` to `target`, curl's messages appended to `log`.
pub fn download(url: &str, target: &Path, log: &Path) -> Result<()> {
    Cmd::new("curl")
        // Transient failures (time-outs, 408/429/5xx, refused connections) are tried again a
        // few times; a 404 or a host that does not resolve is final.
        .args(["--fail", "--location", "--silent", "--show-error"])
        .args(["--connect-timeout", "30", "--retry", "4", "--retry-delay", "3", "--retry-connrefused"])
        .arg("--output")
        .arg(target)
        .arg(url)
        .run_logged(log, |_| {})
}

/// Downloads `url` to `target` and checks it against `sha256`, pinned in `pinned_in`.
/// `what` names the file in messages ("the kernel source").
pub fn download_checked(what: &str, url: &str, sha256: &str, pinned_in: &str, target: &Path, log: &Path) -> Result<()> {
    download(url, target, log).with_context(|| format!("downloading {what} {url}"))?;
    let actual = crate::stages::checksums::digest_file(target)?.sha256;
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
        let good = crate::stages::checksums::digest_file(&tarball).unwrap().sha256;
        download_checked("the kernel source", &url, &good, "kernel/kernel.toml", &target, &log).unwrap();
        assert!(target.exists());
    }

    #[test]
    fn a_transient_server_error_is_tried_again() {
        use std::io::{Read, Write};
        // A server on the loopback that answers 503 twice, then the file.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for attempt in 0..3 {
                let (mut conn, _) = listener.accept().unwrap();
                let mut request = [0u8; 4096];
                let _ = conn.read(&mut request);
                let reply: &[u8] = if attempt < 2 {
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\npackage"
                };
                conn.write_all(reply).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x_1_amd64.deb");
        let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"package"));
        let url = format!("http://127.0.0.1:{port}/x_1_amd64.deb");
        download_checked("a payload package", &url, &sha, "test", &target, &dir.path().join("log")).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "package");
        server.join().unwrap();
    }
}
