//! Stage "apt sources": the manifest's extra apt repositories, checked before anything is
//! built, so that a repository this machine cannot reach, or one not signed by the key in the
//! project, fails in seconds naming its URL instead of half-way through live-build.
//!
//! For each repository: `dists/<suite>/InRelease` is fetched and verified with the
//! repository's key alone (`signing::verify_clearsigned`), then each component's `Packages`
//! index for the image's architecture is fetched and checked against the sha256 the signed
//! `InRelease` gives (`fetch::download_checked`). What
//! comes back is which packages each repository offers: the package check looks there for
//! the names Debian does not have.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::appliance::AptRepository;
use crate::stages::{fetch, signing};
use crate::util::run::Cmd;

/// The packages the extra repositories offer: name -> the repository's name.
#[derive(Debug, Default)]
pub struct RepositoryPackages {
    pub by_package: BTreeMap<String, String>,
}

/// Checks every repository (see the module doc), in `work` (a scratch directory).
pub fn check(
    repositories: &[AptRepository],
    lb_config_dir: &Path,
    architecture: &str,
    work: &Path,
) -> Result<RepositoryPackages> {
    let mut found = RepositoryPackages::default();
    for repository in repositories {
        let dir = work.join(&repository.name);
        crate::util::fsx::remove_if_present(&dir)?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let names = check_one(repository, &lb_config_dir.join(&repository.key), architecture, &dir)
            .with_context(|| format!("apt repository {:?} ({})", repository.name, repository.url))?;
        for name in names {
            found.by_package.entry(name).or_insert_with(|| repository.name.clone());
        }
    }
    Ok(found)
}

fn check_one(repository: &AptRepository, key: &Path, architecture: &str, dir: &Path) -> Result<Vec<String>> {
    let base = format!("{}/dists/{}", repository.url.trim_end_matches('/'), repository.suite);
    let log = dir.join("fetch.log");
    let in_release = dir.join("InRelease");
    let url = format!("{base}/InRelease");
    fetch::download(&url, &in_release, &log)
        .with_context(|| format!("cannot fetch {url} (this build needs the repository reachable)"))?;
    let signed = dir.join("Release");
    signing::verify_clearsigned(&in_release, key, &signed).context("its InRelease is not signed by the key")?;
    let release = fs::read_to_string(&signed).with_context(|| format!("reading {}", signed.display()))?;
    let sums = sha256_sums(&release);
    let mut names = Vec::new();
    for component in &repository.components {
        let index = format!("{component}/binary-{architecture}/Packages");
        let Some((file, sha256)) = ["", ".xz", ".gz"]
            .iter()
            .find_map(|ext| sums.get(&format!("{index}{ext}")).map(|sha| (format!("{index}{ext}"), sha)))
        else {
            bail!(
                "its Release lists no {index} index: is {component:?} a component of suite {:?} for {architecture}?",
                repository.suite
            );
        };
        let local = dir.join(file.replace('/', "_"));
        fetch::download_checked("the index", &format!("{base}/{file}"), sha256, "its signed InRelease", &local, &log)?;
        let text = match file.rsplit('.').next() {
            Some("xz") => Cmd::new("xz").arg("-dc").arg(&local).read()?,
            Some("gz") => Cmd::new("gzip").arg("-dc").arg(&local).read()?,
            _ => fs::read_to_string(&local).with_context(|| format!("reading {}", local.display()))?,
        };
        names.extend(package_names(&text));
    }
    Ok(names)
}

/// The `SHA256:` section of a Release file: path -> sha256.
fn sha256_sums(release: &str) -> BTreeMap<String, String> {
    let mut sums = BTreeMap::new();
    let mut in_section = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            in_section = line.trim_end() == "SHA256:";
            continue;
        }
        if in_section && let [sha, _size, path] = line.split_whitespace().collect::<Vec<_>>()[..] {
            sums.insert(path.to_owned(), sha.to_owned());
        }
    }
    sums
}

/// The `Package:` names of a Packages index.
fn package_names(index: &str) -> Vec<String> {
    index.lines().filter_map(|line| line.strip_prefix("Package:")).map(|name| name.trim().to_owned()).collect()
}

/// Where the stage keeps what it fetched.
pub fn work_dir(project_work_dir: &Path) -> PathBuf {
    project_work_dir.join("apt-sources")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key committed for TruthDB's repository is the one lb-config/apt-keys/README.md names.
    #[test]
    fn the_truthdb_repository_key_is_the_documented_one() {
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-config/apt-keys/truthdb.asc");
        let home = tempfile::tempdir().unwrap();
        let listing = Cmd::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(&key)
            .read()
            .unwrap();
        let fingerprints: Vec<&str> =
            listing.lines().filter(|l| l.starts_with("fpr:")).filter_map(|l| l.split(':').nth(9)).collect();
        assert_eq!(fingerprints, ["2F66196F410C15A9D1127309EBF9AA44EB5302E2"], "{listing}");
    }

    #[test]
    fn the_sha256_section_and_package_names_are_read() {
        let release = "Origin: TruthDB\nSuite: trixie\nMD5Sum:\n 0123 10 main/binary-amd64/Packages\n 4567 0 main/source/Sources\nSHA256:\n \
                       aaaa 10 main/binary-amd64/Packages\n bbbb 5 main/binary-amd64/Packages.xz\n";
        let sums = sha256_sums(release);
        assert_eq!(sums.get("main/binary-amd64/Packages").map(String::as_str), Some("aaaa"));
        assert_eq!(sums.get("main/binary-amd64/Packages.xz").map(String::as_str), Some("bbbb"));
        assert_eq!(sums.get("main/binary-amd64/Packages").map(String::as_str), Some("aaaa"), "MD5 does not win");
        assert!(!sums.contains_key("main/source/Sources"), "the MD5Sum section is not read: {sums:?}");
        assert_eq!(sums.len(), 2);
        let index = "Package: truthdb-server\nVersion: 1\n\nPackage: truthdb-cli\nVersion: 1\n";
        assert_eq!(package_names(index), ["truthdb-server", "truthdb-cli"]);
    }
}
