//! The package store: every file the pipeline fetched from an apt repository (.debs and the
//! signed indexes), kept by SHA-256 in `<cache>/packages/sha256/<digest>`, so a locked build
//! needs no archive at all once its files are here. A plain directory of read-only files: copy
//! it to an air-gapped machine (with the project and its `packages.lock`) and build there.
//!
//! A file enters the store only under its own digest, and a locked file is taken from a source
//! only when its digest is the lock's; so what a locked build is served is what was locked.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::package_lock::{self, LockedFile, LockedPackage, PackageLock};
use crate::stages::checksums::sha256_file;
use crate::stages::fetch;

pub struct PackageStore {
    dir: PathBuf,
}

/// Where a locked file may come from when the store does not have it, in this order after the
/// store: snapshot.debian.org at the lock's archive state (`[mirrors] snapshot`), then the URL
/// it was recorded from (the configured mirror).
pub struct Sources<'a> {
    pub snapshot: Option<&'a str>,
    pub archive_mirror: &'a str,
    pub security_mirror: &'a str,
}

/// What [`PackageStore::fill`] did.
#[derive(Debug, Default, PartialEq)]
pub struct Filled {
    pub in_store: usize,
    pub fetched: usize,
    pub fetched_bytes: u64,
}

impl PackageStore {
    pub fn new(cache_dir: &Path) -> PackageStore {
        PackageStore { dir: cache_dir.join("packages/sha256") }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256.to_ascii_lowercase())
    }

    pub fn has(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Moves `file` (on the store's file system) into the store under its digest, which it
    /// returns. A file already there is kept and `file` removed.
    pub fn add(&self, file: &Path) -> Result<String> {
        let sha256 = sha256_file(file)?;
        self.add_as(file, &sha256)?;
        Ok(sha256)
    }

    fn add_as(&self, file: &Path, sha256: &str) -> Result<()> {
        let target = self.path(sha256);
        if target.is_file() {
            fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
            return Ok(());
        }
        crate::util::fsx::set_mode(file, 0o644)?;
        fs::rename(file, &target).with_context(|| format!("moving {} into the package store", file.display()))
    }

    /// A fresh temporary path in the store's directory (so [`add`](Self::add) is a rename).
    pub fn temp_path(&self) -> Result<PathBuf> {
        let temp = self.dir.join(".partial");
        fs::create_dir_all(&temp).with_context(|| format!("creating {}", temp.display()))?;
        let file = tempfile::Builder::new().prefix("fetch-").tempfile_in(&temp)?;
        let (_, path) = file.keep().context("keeping a temporary file")?;
        Ok(path)
    }

    /// Makes sure the store holds every file of `lock`, fetching what it lacks from `sources`
    /// (each checked against the lock's sha256 before it enters the store). Fails naming the
    /// first package no source has, and why each source did not, before anything is built.
    pub fn fill(
        &self,
        lock: &PackageLock,
        sources: &Sources,
        log: &Path,
        on_file: &mut dyn FnMut(&str),
    ) -> Result<Filled> {
        fs::create_dir_all(&self.dir).with_context(|| format!("creating the package store {}", self.dir.display()))?;
        let mut filled = Filled::default();
        for (what, file) in lock.files() {
            if self.has(&file.sha256) {
                filled.in_store += 1;
                continue;
            }
            on_file(&what);
            self.fetch(lock, &what, &file, sources, log)?;
            filled.fetched += 1;
            filled.fetched_bytes += file.size;
        }
        Ok(filled)
    }

    fn fetch(&self, lock: &PackageLock, what: &str, file: &LockedFile, sources: &Sources, log: &Path) -> Result<()> {
        let mut tried = vec![format!("the package store {}: no file {}", self.dir.display(), file.sha256)];
        let snapshot = match sources.snapshot {
            None => {
                tried.push("snapshot.debian.org: not configured ([mirrors] snapshot in appliance.toml)".to_owned());
                None
            }
            Some(base) => package_lock::snapshot_url(
                &file.url,
                base,
                &lock.snapshot_time,
                sources.archive_mirror,
                sources.security_mirror,
            )
            .or_else(|| {
                tried.push(format!("{base}: {} is not under a Debian mirror it archives", file.url));
                None
            }),
        };
        for url in snapshot.iter().chain(std::iter::once(&file.url)) {
            let temp = self.temp_path()?;
            let outcome = fetch::download(url, &temp, log).and_then(|()| {
                let actual = sha256_file(&temp)?;
                if actual != file.sha256 {
                    bail!("sha256 is {actual}, the lock says {}", file.sha256);
                }
                Ok(())
            });
            match outcome {
                Ok(()) => return self.add_as(&temp, &file.sha256),
                Err(error) => {
                    let _ = fs::remove_file(&temp);
                    tried.push(format!("{url}: {error:#}"));
                }
            }
        }
        bail!(
            "packages.lock: {what} is in no configured source (curl's messages: {}):\n  {}\n\
             Build from the archive as it is now with `cargo xtask lock`, or configure a source that has it.",
            log.display(),
            tried.join("\n  ")
        )
    }

    /// The lock a recorded build makes of what the apt proxy served: each .deb described by
    /// its own control fields (the version with its epoch), everything else an index, and the
    /// archive state named by the newest `Date:` of the InRelease files.
    /// `served` is what `lb build` fetched, `build_root` what making the build root fetched.
    pub fn lock_of_recording(
        &self,
        served: &BTreeMap<String, LockedFile>,
        build_root: &BTreeMap<String, LockedFile>,
        inputs: BTreeMap<String, String>,
    ) -> Result<PackageLock> {
        let mut lock = PackageLock { version: package_lock::FORMAT, inputs, ..PackageLock::default() };
        (lock.packages, lock.indexes) = self.sort_recording(served, &mut lock.snapshot_time)?;
        (lock.build_root_packages, lock.build_root_indexes) =
            self.sort_recording(build_root, &mut lock.snapshot_time)?;
        if lock.snapshot_time.is_empty() {
            bail!("the build fetched no InRelease file through the apt proxy: nothing to lock");
        }
        lock.check().context("the recorded lock")?;
        Ok(lock)
    }

    /// What was served, as packages (described by their own control fields) and indexes; the
    /// newest InRelease date raises `snapshot_time`.
    fn sort_recording(
        &self,
        served: &BTreeMap<String, LockedFile>,
        snapshot_time: &mut String,
    ) -> Result<(Vec<LockedPackage>, Vec<LockedFile>)> {
        let (mut packages, mut indexes) = (Vec::new(), Vec::new());
        for (url, file) in served {
            let path = self.path(&file.sha256);
            if package_lock::url_file_name(url).ends_with(".deb") {
                let deb = crate::stages::sbom::LocalDeb::read(&path)?;
                packages.push(LockedPackage {
                    name: deb.name,
                    version: deb.version,
                    architecture: deb.architecture,
                    url: url.clone(),
                    sha256: file.sha256.clone(),
                    size: file.size,
                });
                continue;
            }
            if url.ends_with("/InRelease") {
                let text = fs::read_to_string(&path).with_context(|| format!("reading {url} from the store"))?;
                let time = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Date:"))
                    .and_then(|d| package_lock::snapshot_time_of_release_date(d.trim()))
                    .with_context(|| format!("{url} has no Date: field in RFC 2822 UTC form"))?;
                if time > *snapshot_time {
                    *snapshot_time = time;
                }
            }
            indexes.push(file.clone());
        }
        Ok((packages, indexes))
    }

    /// The store's size in bytes and files (for BENCHMARKS.md).
    pub fn size(&self) -> (u64, usize) {
        let files: Vec<u64> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()))
            .collect();
        (files.iter().sum(), files.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::package_lock::FORMAT;
    use crate::util::run::Cmd;

    fn lock_of(url: &str, sha256: &str) -> PackageLock {
        PackageLock {
            version: FORMAT,
            snapshot_time: "20261130T002233Z".to_owned(),
            packages: vec![LockedPackage {
                name: "hello".to_owned(),
                version: "2.10-3".to_owned(),
                architecture: "amd64".to_owned(),
                url: url.to_owned(),
                sha256: sha256.to_owned(),
                size: 5,
            }],
            ..PackageLock::default()
        }
    }

    fn sources() -> Sources<'static> {
        Sources { snapshot: None, archive_mirror: "http://deb.debian.org/debian", security_mirror: "http://x/y" }
    }

    #[test]
    fn files_enter_the_store_by_their_digest_once() {
        let cache = tempfile::tempdir().unwrap();
        let store = PackageStore::new(cache.path());
        for _ in 0..2 {
            let temp = store.temp_path().unwrap();
            fs::write(&temp, "hello").unwrap();
            let sha = store.add(&temp).unwrap();
            assert_eq!(sha, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
            assert!(!temp.exists());
            assert_eq!(fs::read_to_string(store.path(&sha)).unwrap(), "hello");
        }
        assert_eq!(store.size(), (5, 1));
    }

    #[test]
    fn a_locked_file_is_fetched_only_with_the_locked_digest() {
        // curl reads file:// URLs as it does http:// ones: a mirror without a network.
        let cache = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        let deb = mirror.path().join("hello_2.10-3_amd64.deb");
        fs::write(&deb, "hello").unwrap();
        let url = format!("file://{}", deb.display());
        let log = cache.path().join("fetch.log");
        let store = PackageStore::new(cache.path());

        let mut lock = lock_of(&url, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        lock.packages[0].url = url.clone();
        let filled = store.fill(&lock, &sources(), &log, &mut |_| {}).unwrap();
        assert_eq!((filled.in_store, filled.fetched), (0, 1));
        let again = store.fill(&lock, &sources(), &log, &mut |_| {}).unwrap();
        assert_eq!((again.in_store, again.fetched), (1, 0));

        let wrong = lock_of(&url, &"0".repeat(64));
        let error = format!("{:#}", store.fill(&wrong, &sources(), &log, &mut |_| {}).unwrap_err());
        assert!(error.contains("packages.lock: hello 2.10-3 (amd64) is in no configured source"), "{error}");
        assert!(error.contains("the lock says 0000"), "{error}");
        assert!(error.contains("snapshot.debian.org: not configured"), "{error}");
        assert!(!store.has(&"0".repeat(64)));

        let gone = lock_of(&format!("file://{}/nothing_1_amd64.deb", mirror.path().display()), &"1".repeat(64));
        let error = format!("{:#}", store.fill(&gone, &sources(), &log, &mut |_| {}).unwrap_err());
        assert!(error.contains("nothing_1_amd64.deb: "), "{error}");
        let leftovers = fs::read_dir(store.dir().join(".partial")).unwrap().count();
        assert_eq!(leftovers, 0, "a failed fetch left a partial file");
    }

    #[test]
    fn a_recording_becomes_a_lock_with_epochs_and_the_archive_state() {
        let cache = tempfile::tempdir().unwrap();
        let store = PackageStore::new(cache.path());
        let tree = cache.path().join("deb");
        fs::create_dir_all(tree.join("DEBIAN")).unwrap();
        fs::write(
            tree.join("DEBIAN/control"),
            "Package: hello\nVersion: 1:2.10-3\nArchitecture: amd64\nMaintainer: t <t@example.org>\nDescription: t\n",
        )
        .unwrap();
        let deb = store.temp_path().unwrap();
        Cmd::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&tree).arg(&deb).read().unwrap();
        let size = fs::metadata(&deb).unwrap().len();
        let deb_sha = store.add(&deb).unwrap();
        let mut served = BTreeMap::new();
        let deb_url = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb";
        served.insert(deb_url.to_owned(), LockedFile { url: deb_url.to_owned(), sha256: deb_sha.clone(), size });
        for (suite, date) in
            [("trixie", "Sat, 21 Nov 2026 09:15:44 UTC"), ("trixie-updates", "Mon, 30 Nov 2026 20:11:02 UTC")]
        {
            let release = store.temp_path().unwrap();
            fs::write(&release, format!("-----BEGIN PGP SIGNED MESSAGE-----\nOrigin: Debian\nDate: {date}\n")).unwrap();
            let sha256 = store.add(&release).unwrap();
            let url = format!("http://deb.debian.org/debian/dists/{suite}/InRelease");
            served.insert(url.clone(), LockedFile { url, sha256, size: 1 });
        }
        let lock =
            store.lock_of_recording(&served, &BTreeMap::new(), [("auto/".to_owned(), "1".to_owned())].into()).unwrap();
        assert_eq!(lock.snapshot_time, "20261130T201102Z");
        assert_eq!(lock.indexes.len(), 2);
        assert_eq!(lock.packages.len(), 1);
        assert_eq!(lock.packages[0].describe(), "hello 1:2.10-3 (amd64)");
        assert_eq!(lock.packages[0].sha256, deb_sha);

        served.retain(|url, _| url.ends_with(".deb"));
        let error = format!("{:#}", store.lock_of_recording(&served, &BTreeMap::new(), BTreeMap::new()).unwrap_err());
        assert!(error.contains("no InRelease"), "{error}");
    }
}
