//! `lb-config/packages.lock`: every file the image's build fetched from apt repositories, by
//! URL and sha256, like Cargo.lock for the Debian side.
//!
//! A lock is recorded, not resolved: `cargo xtask lock` builds the image in a fresh chroot with
//! live-build's downloads (debootstrap's and apt's, every stage) going through the pipeline's
//! apt proxy ([`crate::stages::apt_proxy`]), which keeps what it fetched. That is exact where a
//! resolver would have to guess what live-build asks for: the signed `InRelease` files and the
//! indexes apt read (the archive state), and every .deb, the boot loaders' packages of the
//! binary stage included. A locked build serves exactly those files back from the package
//! store ([`crate::stages::package_store`]) and nothing else, so apt sees the archive as it was
//! and verifies it with Debian's own keys, and the image's apt lists are those of the lock.
//!
//! The lock names the inputs it was recorded from (a digest each, the chroot cache's idea of
//! "what decides the packages"): when one changes, the lock is stale and the build says which.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The lock format's version; a lock of another version is refused.
pub const FORMAT: u32 = 1;

const HEADER: &str = "\
# packages.lock: every file the image's build fetched from apt repositories (the signed
# indexes, so the archive state, and every .deb), by URL and sha256. Written by
# `cargo xtask lock`; `cargo xtask iso` builds from it, serving only these files from the
# package store. Do not edit it: change packages.list or the manifest and run `cargo xtask lock`.
";

/// One `packages.lock`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PackageLock {
    pub version: u32,
    /// The archive state as snapshot.debian.org names it: the newest `Date:` of the locked
    /// `InRelease` files, `YYYYMMDDTHHMMSSZ`.
    pub snapshot_time: String,
    /// A digest of each input the fetched files depend on ([`crate::stages::chroot_cache`]).
    pub inputs: BTreeMap<String, String>,
    /// Indexes and anything else fetched that is not a package: `InRelease`, `Packages`,
    /// `Sources`, `Translation-*`, by-hash files.
    #[serde(default, rename = "index")]
    pub indexes: Vec<LockedFile>,
    #[serde(default, rename = "package")]
    pub packages: Vec<LockedPackage>,
    /// The build root's files (debootstrap on the host, then apt in the root): the tools that
    /// run live-build and compile the kernel and the installer.
    #[serde(default, rename = "build_root_index")]
    pub build_root_indexes: Vec<LockedFile>,
    #[serde(default, rename = "build_root_package")]
    pub build_root_packages: Vec<LockedPackage>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct LockedFile {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

impl LockedPackage {
    /// `name version (arch)`, how messages name a package.
    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.name, self.version, self.architecture)
    }

    pub fn file(&self) -> LockedFile {
        LockedFile { url: self.url.clone(), sha256: self.sha256.clone(), size: self.size }
    }
}

impl PackageLock {
    pub fn read(path: &Path) -> Result<PackageLock> {
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let lock: PackageLock =
            toml::from_str(&text).with_context(|| format!("{}: not a package lock", path.display()))?;
        lock.check().with_context(|| format!("{} is not consistent", path.display()))?;
        Ok(lock)
    }

    /// The lock as written: sorted, so the same build gives the same bytes.
    pub fn to_text(&self) -> Result<String> {
        let mut sorted = self.clone();
        sorted.indexes.sort();
        sorted.packages.sort();
        sorted.build_root_indexes.sort();
        sorted.build_root_packages.sort();
        Ok(format!("{HEADER}{}", toml::to_string(&sorted).context("serialising the package lock")?))
    }

    /// Written next to `path` and renamed over it.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::util::fsx::write_atomically(path, self.to_text()?.as_bytes())
    }

    /// Every file, the image's and the build root's, packages first, with what to call it in
    /// a message.
    pub fn files(&self) -> impl Iterator<Item = (String, LockedFile)> + '_ {
        self.image_files().chain(self.build_root_files())
    }

    /// The files of the image's build (what `lb build` fetches).
    pub fn image_files(&self) -> impl Iterator<Item = (String, LockedFile)> + '_ {
        let packages = self.packages.iter().map(|p| (p.describe(), p.file()));
        let indexes = self.indexes.iter().map(|f| (format!("index {}", f.url), f.clone()));
        packages.chain(indexes)
    }

    /// The files of the build root (what debootstrap and apt fetch to make it).
    pub fn build_root_files(&self) -> impl Iterator<Item = (String, LockedFile)> + '_ {
        let packages =
            self.build_root_packages.iter().map(|p| (format!("build root package {}", p.describe()), p.file()));
        let indexes = self.build_root_indexes.iter().map(|f| (format!("build root index {}", f.url), f.clone()));
        packages.chain(indexes)
    }

    /// The lock's own digest (what a build from it is keyed by).
    pub fn digest(&self) -> Result<String> {
        Ok(crate::util::digest::Hasher::new().field("packages.lock", self.to_text()?).hex())
    }

    /// What a hand edit breaks: the format, digests, and a package whose URL is not the pool
    /// file of its name, version and architecture (Debian's pool names leave the epoch out).
    pub fn check(&self) -> Result<()> {
        if self.version != FORMAT {
            bail!("version = {} (this xtask reads version {FORMAT}); run `cargo xtask lock`", self.version);
        }
        for (what, file) in self.files() {
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("{what}: sha256 {:?} is not a SHA-256 digest", file.sha256);
            }
            if !(file.url.starts_with("http://") || file.url.starts_with("https://")) {
                bail!("{what}: url {:?} is not an http(s) URL", file.url);
            }
        }
        for package in self.packages.iter().chain(&self.build_root_packages) {
            let expected = pool_file_name(&package.name, &package.version, &package.architecture);
            let actual = url_file_name(&package.url);
            if actual != expected {
                bail!(
                    "package {}: its url names {actual}, but name, version and architecture say {expected}",
                    package.describe()
                );
            }
        }
        Ok(())
    }

    /// The inputs that differ from `current` (added and removed ones too), empty when fresh.
    pub fn stale_inputs(&self, current: &BTreeMap<String, String>) -> Vec<String> {
        let mut names: Vec<&String> = self.inputs.keys().chain(current.keys()).collect();
        names.sort();
        names.dedup();
        names.into_iter().filter(|n| self.inputs.get(*n) != current.get(*n)).cloned().collect()
    }

    /// The locked versions of each of the image's packages by name and architecture, for
    /// comparing an installed system with. A package can have two: debootstrap installs the
    /// suite's, then the chroot's upgrade the security suite's (libssl3t64 3.5.9-1~deb13u1 and
    /// 3.5.10-1~deb13u1 in one build), and a replay needs both files.
    pub fn versions(&self) -> LockedVersions<'_> {
        versions_of(&self.packages)
    }

    /// The same for the build root's packages.
    pub fn build_root_versions(&self) -> LockedVersions<'_> {
        versions_of(&self.build_root_packages)
    }
}

/// Every version a lock has of a package, by (name, architecture).
pub type LockedVersions<'a> = BTreeMap<(&'a str, &'a str), Vec<&'a str>>;

fn versions_of(packages: &[LockedPackage]) -> LockedVersions<'_> {
    let mut versions = LockedVersions::new();
    for p in packages {
        versions.entry((p.name.as_str(), p.architecture.as_str())).or_default().push(p.version.as_str());
    }
    versions
}

impl PackageLock {
    /// Which of the installed packages in a root's dpkg `status` differ from `locked`, as
    /// `name version (...)` phrases; the packages named in `ours` (installed from our own
    /// .debs) are left out.
    pub fn differences(status: &str, locked: &LockedVersions, ours: &[String]) -> Vec<String> {
        let mut differ = Vec::new();
        for paragraph in crate::util::deb822::paragraphs(status) {
            let get = |name: &str| crate::util::deb822::field(&paragraph, name).unwrap_or_default();
            if !get("Status").ends_with(" installed") {
                continue;
            }
            let (name, version, arch) = (get("Package"), get("Version"), get("Architecture"));
            match locked.get(&(name, arch)) {
                Some(at) if at.contains(&version) => {}
                Some(at) => differ.push(format!("{name} {version} (the lock has {})", at.join(" and "))),
                None if ours.iter().any(|o| o == name) => {}
                None => differ.push(format!("{name} {version} (not in the lock)")),
            }
        }
        differ
    }
}

/// The file name Debian's pool gives a package: `name_version_arch.deb`, the version without
/// its epoch.
pub fn pool_file_name(name: &str, version: &str, architecture: &str) -> String {
    let version = version.split_once(':').map_or(version, |(_, rest)| rest);
    format!("{name}_{version}_{architecture}.deb")
}

/// The last path segment of `url`, percent-decoded (apt asks for `%3a` where a version has `:`).
pub fn url_file_name(url: &str) -> String {
    percent_decode(url.rsplit('/').next().unwrap_or_default())
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) =
                std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where snapshot.debian.org keeps `url` as it was at `time`, if `url` is under one of the
/// Debian mirrors it archives: `archive` (archive `debian`) or `security` (`debian-security`).
pub fn snapshot_url(url: &str, snapshot: &str, time: &str, archive: &str, security: &str) -> Option<String> {
    let snapshot = snapshot.trim_end_matches('/');
    for (mirror, name) in [(security, "debian-security"), (archive, "debian")] {
        let mirror = mirror.trim_end_matches('/');
        if let Some(rest) = url.strip_prefix(mirror).and_then(|r| r.strip_prefix('/')) {
            return Some(format!("{snapshot}/archive/{name}/{time}/{rest}"));
        }
    }
    None
}

/// An InRelease's `Date:` (RFC 2822, as the archive writes it: `Sat, 21 Nov 2026 09:15:44 UTC`)
/// as snapshot.debian.org's `YYYYMMDDTHHMMSSZ`.
pub fn snapshot_time_of_release_date(date: &str) -> Option<String> {
    let words: Vec<&str> = date.split_whitespace().collect();
    let [_, day, month, year, time, zone] = words.as_slice() else {
        return None;
    };
    if !matches!(*zone, "UTC" | "GMT" | "+0000") {
        return None;
    }
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let day: u32 = day.parse().ok()?;
    let year: u32 = year.parse().ok()?;
    let hms: Vec<u32> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    Some(format!("{year:04}{month:02}{day:02}T{h:02}{m:02}{s:02}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> PackageLock {
        PackageLock {
            version: FORMAT,
            snapshot_time: "20261130T002233Z".to_owned(),
            inputs: [("auto/".to_owned(), "a1".to_owned()), ("config/package-lists".to_owned(), "b2".to_owned())]
                .into(),
            indexes: vec![LockedFile {
                url: "http://deb.debian.org/debian/dists/trixie/InRelease".to_owned(),
                sha256: "1".repeat(64),
                size: 140420,
            }],
            packages: vec![
                LockedPackage {
                    name: "passwd".to_owned(),
                    version: "1:4.17.4-2".to_owned(),
                    architecture: "amd64".to_owned(),
                    url: "http://deb.debian.org/debian/pool/main/s/shadow/passwd_4.17.4-2_amd64.deb".to_owned(),
                    sha256: "2".repeat(64),
                    size: 1000,
                },
                LockedPackage {
                    name: "bash".to_owned(),
                    version: "5.2.37-2+b5".to_owned(),
                    architecture: "amd64".to_owned(),
                    url: "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.37-2%2bb5_amd64.deb".to_owned(),
                    sha256: "3".repeat(64),
                    size: 2000,
                },
            ],
            ..PackageLock::default()
        }
    }

    #[test]
    fn a_lock_is_written_sorted_and_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("packages.lock");
        let lock = sample();
        lock.write(&path).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# packages.lock"));
        assert!(text.find("name = \"bash\"").unwrap() < text.find("name = \"passwd\"").unwrap(), "{text}");
        let read = PackageLock::read(&path).unwrap();
        assert_eq!(read.to_text().unwrap(), text);
        assert_eq!(read.digest().unwrap(), lock.digest().unwrap());
    }

    #[test]
    fn a_version_edited_without_its_url_is_refused_naming_the_package() {
        let mut lock = sample();
        lock.packages[1].version = "9.9-1".to_owned();
        let error = format!("{:#}", lock.check().unwrap_err());
        assert!(error.contains("package bash 9.9-1 (amd64)"), "{error}");
        assert!(error.contains("bash_5.2.37-2+b5_amd64.deb") && error.contains("bash_9.9-1_amd64.deb"), "{error}");
        let mut lock = sample();
        lock.version = 2;
        assert!(format!("{:#}", lock.check().unwrap_err()).contains("version = 2"));
        let mut lock = sample();
        lock.indexes[0].sha256 = "xyz".to_owned();
        assert!(format!("{:#}", lock.check().unwrap_err()).contains("is not a SHA-256 digest"));
        sample().check().unwrap();
    }

    #[test]
    fn stale_inputs_are_named() {
        let lock = sample();
        let mut current = lock.inputs.clone();
        assert!(lock.stale_inputs(&current).is_empty());
        current.insert("config/package-lists".to_owned(), "changed".to_owned());
        current.insert("config/archives".to_owned(), "new".to_owned());
        assert_eq!(lock.stale_inputs(&current), ["config/archives", "config/package-lists"]);
    }

    #[test]
    fn snapshot_urls_follow_the_mirror_a_file_came_from() {
        let at = "20261130T002233Z";
        let (archive, security) = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security/");
        assert_eq!(
            snapshot_url(
                "http://deb.debian.org/debian/pool/main/b/bash/bash_5.2.37-2_amd64.deb",
                "https://snapshot.debian.org/",
                at,
                archive,
                security
            )
            .as_deref(),
            Some(
                "https://snapshot.debian.org/archive/debian/20261130T002233Z/pool/main/b/bash/bash_5.2.37-2_amd64.deb"
            )
        );
        assert_eq!(
            snapshot_url(
                "http://deb.debian.org/debian-security/dists/trixie-security/InRelease",
                "https://snapshot.debian.org",
                at,
                archive,
                security
            )
            .as_deref(),
            Some(
                "https://snapshot.debian.org/archive/debian-security/20261130T002233Z/dists/trixie-security/InRelease"
            )
        );
        assert_eq!(
            snapshot_url(
                "http://127.0.0.1:8080/debian/pool/x.deb",
                "https://snapshot.debian.org",
                at,
                archive,
                security
            ),
            None
        );
    }

    #[test]
    fn release_dates_become_snapshot_times() {
        assert_eq!(snapshot_time_of_release_date("Sat, 21 Nov 2026 09:15:44 UTC").as_deref(), Some("20261121T091544Z"));
        assert_eq!(snapshot_time_of_release_date("Mon, 7 Dec 2026 00:22:33 UTC").as_deref(), Some("20261207T002233Z"));
        assert_eq!(snapshot_time_of_release_date("yesterday"), None);
    }

    #[test]
    fn pool_names_drop_the_epoch_and_urls_are_decoded() {
        assert_eq!(pool_file_name("passwd", "1:4.17.4-2", "amd64"), "passwd_4.17.4-2_amd64.deb");
        assert_eq!(
            url_file_name("http://h/pool/main/b/bash/bash_5.2.37-2%2bb5_amd64.deb"),
            "bash_5.2.37-2+b5_amd64.deb"
        );
        assert_eq!(url_file_name("http://h/a%3ab_1.deb"), "a:b_1.deb");
        assert_eq!(url_file_name("http://h/50%"), "50%");
    }

    #[test]
    fn an_installed_root_is_compared_with_the_lock_by_name_architecture_and_version() {
        let lock = sample();
        let status = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.37-2+b5\n\n\
                      Package: passwd\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:4.17.4-1\n\n\
                      Package: linux-image-6.12-truthdb\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n\n\
                      Package: extra\nStatus: install ok installed\nArchitecture: all\nVersion: 2\n";
        let differ = PackageLock::differences(status, &lock.versions(), &["linux-image-6.12-truthdb".to_owned()]);
        assert_eq!(differ, ["passwd 1:4.17.4-1 (the lock has 1:4.17.4-2)", "extra 2 (not in the lock)"]);
        // A package locked at two versions (the suite's, then the security suite's upgrade):
        // either one installed is the lock's, whichever the file lists first.
        let mut two = sample();
        let mut upgrade = two.packages.iter().find(|p| p.name == "passwd").unwrap().clone();
        upgrade.version = "1:4.17.4-1".into();
        for at_end in [true, false] {
            let mut lock = two.clone();
            if at_end {
                lock.packages.push(upgrade.clone())
            } else {
                lock.packages.insert(0, upgrade.clone())
            }
            let differ = PackageLock::differences(status, &lock.versions(), &["linux-image-6.12-truthdb".to_owned()]);
            assert_eq!(differ, ["extra 2 (not in the lock)"], "upgrade listed at the end: {at_end}");
        }
        two.packages.push(LockedPackage { version: "1:4.17.4-3".into(), ..upgrade });
        let differ = PackageLock::differences(status, &two.versions(), &["linux-image-6.12-truthdb".to_owned()]);
        assert_eq!(differ[0], "passwd 1:4.17.4-1 (the lock has 1:4.17.4-2 and 1:4.17.4-3)");
        // The build root's packages are their own section.
        assert!(
            PackageLock::differences(
                "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.37-2+b5\n",
                &lock.build_root_versions(),
                &[]
            )
            .len()
                == 1
        );
        let mut with_root = sample();
        with_root.build_root_packages.push(LockedPackage {
            name: "debootstrap".into(),
            version: "1.0.141".into(),
            architecture: "all".into(),
            url: "http://deb.debian.org/debian/pool/main/d/debootstrap/debootstrap_1.0.141_all.deb".into(),
            sha256: "4".repeat(64),
            size: 1,
        });
        assert_eq!(with_root.files().count(), 4);
        assert_eq!(with_root.build_root_files().count(), 1);
        with_root.build_root_packages[0].version = "1.0.140".into();
        assert!(format!("{:#}", with_root.check().unwrap_err()).contains("package debootstrap 1.0.140 (all)"));
    }
}
