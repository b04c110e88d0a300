//! Stage "sign/checksum": writes the release file set into `dist/`, Debian's image layout.
//!
//! ```text
//! dist/<name>-<version>-amd64.hybrid.iso
//! dist/<name>-<version>-amd64.packages          packages installed in the image
//! dist/<name>-<version>-amd64.build-info.json   version, inputs digest, signing key
//! dist/<name>-<version>-amd64.spdx.json         SBOM, SPDX 2.3 (see `sbom`)
//! dist/<name>-<version>-amd64.cdx.json          SBOM, CycloneDX 1.5
//! dist/<name>-<version>-amd64.intoto.jsonl      SLSA v1 provenance of the ISO
//! dist/SHA256SUMS, SHA512SUMS                   over the files above (and any VM images)
//! dist/SHA256SUMS.sign, SHA512SUMS.sign         detached armored OpenPGP signatures
//! dist/DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc      only when no release key was given
//! ```
//!
//! Everything is assembled in `dist/.staging-<pid>/` (same file system) and renamed into place
//! file by file, payload first and signatures last; a failure before that leaves `dist/` as it
//! was. An image is therefore never half-written in `dist/`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::stages::checksums::{self, Algorithm};
use crate::stages::signing::{self, DEVELOPMENT_KEY_FILE, Signer};
use crate::util::fsx;

/// Describes a published build; `iso` compares it to decide whether anything changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    pub name: String,
    pub version: String,
    /// The version as Debian spells it (a pre-release's `-` is `~`, so it sorts before the
    /// release), as TruthDB's own packages are versioned from the same tag.
    #[serde(default)]
    pub debian_version: String,
    /// The payload profile the image runs (`lb-config/payloads/<payload>.toml`).
    #[serde(default)]
    pub payload: String,
    pub suite: String,
    pub architecture: String,
    pub source_date_epoch: u64,
    /// Digest over everything the image is built from (see `iso::ImageInputs`).
    pub inputs_digest: String,
    pub config_digest: String,
    pub build_root_key: String,
    /// `uname -r` of the image's kernel, and the cache key it was built under.
    pub kernel_release: String,
    pub kernel_key: String,
    /// The live system's squashfs compression (`iso --compression`).
    pub squashfs_compression: String,
    /// The key of the chroot's package set (see `chroot_cache`).
    pub packages_key: String,
    /// Fingerprint of the key that signed the sums; empty for a development key, which is new
    /// for every build (its fingerprint is in the published key file), so that two builds of
    /// one commit write the same build info.
    pub signing_key: String,
    pub development_signature: bool,
    /// The generic VM images published beside the ISO (`iso --vm-images`), by file name.
    #[serde(default)]
    pub vm_images: Vec<String>,
}

/// The files of one release, by role.
pub struct Artifacts<'a> {
    pub iso: &'a Path,
    pub installed_packages: &'a Path,
    /// Generic VM images, already named as published (`<stem>.qcow2`, `<stem>.raw.zst`).
    pub vm_images: &'a [PathBuf],
    /// The SBOM and provenance documents, already named as published (see `sbom::file_names`).
    pub documents: &'a [PathBuf],
    /// `<name>-<version>-<arch>`: the stem of every published payload file.
    pub stem: &'a str,
}

pub fn build_info_name(stem: &str) -> String {
    format!("{stem}.build-info.json")
}

/// Publishes into `dist`. The ISO is moved (not copied) when on the same file system.
pub fn publish(
    artifacts: &Artifacts,
    info: &BuildInfo,
    signer: &Signer,
    dist: &Path,
    on_step: &mut dyn FnMut(&str),
) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dist).with_context(|| format!("creating {}", dist.display()))?;
    let staging = dist.join(format!(".staging-{}", std::process::id()));
    fsx::remove_if_present(&staging)?;
    fs::create_dir(&staging)?;
    let result = stage_release(artifacts, info, signer, &staging, on_step).and_then(|names| {
        on_step("moving into place");
        move_into_place(&staging, dist, &names)
    });
    let _ = fsx::remove_if_present(&staging);
    result
}

fn stage_release(
    artifacts: &Artifacts,
    info: &BuildInfo,
    signer: &Signer,
    staging: &Path,
    on_step: &mut dyn FnMut(&str),
) -> Result<Vec<String>> {
    let iso_name = format!("{}.hybrid.iso", artifacts.stem);
    let packages_name = format!("{}.packages", artifacts.stem);
    let info_name = build_info_name(artifacts.stem);
    move_or_copy(artifacts.iso, &staging.join(&iso_name))?;
    fs::copy(artifacts.installed_packages, staging.join(&packages_name))
        .with_context(|| format!("copying {}", artifacts.installed_packages.display()))?;
    fs::write(staging.join(&info_name), serde_json::to_string_pretty(info)? + "\n")?;
    let mut names = vec![iso_name, packages_name, info_name];
    for image in artifacts.vm_images {
        let name = image.file_name().context("a VM image path has a file name")?.to_string_lossy().into_owned();
        if !is_release_file(&name) {
            bail!("{name}: not a VM image name publish knows (<stem>.qcow2, <stem>.raw.zst)");
        }
        move_or_copy(image, &staging.join(&name))?;
        names.push(name);
    }
    for document in artifacts.documents {
        let name = document.file_name().context("a document path has a file name")?.to_string_lossy().into_owned();
        if !is_release_file(&name) {
            bail!(
                "{name}: not a document name publish knows (<stem>.spdx.json, .cdx.json, .intoto.jsonl, .packages.lock)"
            );
        }
        fs::copy(document, staging.join(&name)).with_context(|| format!("copying {}", document.display()))?;
        names.push(name);
    }

    on_step("checksums");
    let mut digests = Vec::new();
    for name in &names {
        digests.push((name.clone(), checksums::digest_file(&staging.join(name))?));
    }
    on_step("signing");
    for algorithm in Algorithm::ALL {
        let sums = staging.join(algorithm.sums_file());
        fs::write(&sums, checksums::sums_text(algorithm, &digests))?;
        signer.sign_detached(&sums)?;
        names.push(algorithm.sums_file().to_owned());
        names.push(format!("{}.sign", algorithm.sums_file()));
    }
    if signer.is_development {
        signer.export_public_key(&staging.join(DEVELOPMENT_KEY_FILE))?;
        names.push(DEVELOPMENT_KEY_FILE.to_owned());
    }
    Ok(names)
}

fn move_or_copy(from: &Path, to: &Path) -> Result<()> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Renames staged files into `dist` (payload first, sums and signatures last), then removes
/// files of an earlier release that the new set does not have, so the sums describe `dist/`.
fn move_into_place(staging: &Path, dist: &Path, names: &[String]) -> Result<Vec<PathBuf>> {
    let mut published = Vec::new();
    for name in names {
        let to = dist.join(name);
        fs::rename(staging.join(name), &to).with_context(|| format!("moving {name} into {}", dist.display()))?;
        published.push(to);
    }
    for entry in fs::read_dir(dist)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !names.contains(&name) && is_release_file(&name) {
            fs::remove_file(entry.path()).with_context(|| format!("removing stale {}", entry.path().display()))?;
        }
    }
    Ok(published)
}

/// Files `publish` owns in `dist/` (others, e.g. a user's notes, are left alone).
fn is_release_file(name: &str) -> bool {
    name.ends_with(".hybrid.iso")
        || name.ends_with(".qcow2")
        || name.ends_with(".raw.zst")
        || name.ends_with(".packages")
        || name.ends_with(".build-info.json")
        || DOCUMENT_SUFFIXES.iter().any(|suffix| name.ends_with(suffix))
        || name.starts_with("SHA256SUMS")
        || name.starts_with("SHA512SUMS")
        || name == DEVELOPMENT_KEY_FILE
}

/// The build info of what `dist` holds, if it is complete and its files match their sums.
pub fn published_build(dist: &Path, stem: &str) -> Option<BuildInfo> {
    let text = fs::read_to_string(dist.join(build_info_name(stem))).ok()?;
    let info: BuildInfo = serde_json::from_str(&text).ok()?;
    verify_sums(dist, &[Algorithm::Sha256]).ok()?;
    Some(info)
}

/// The SBOM and provenance documents' endings (`sbom::file_names`), and the package lock's,
/// published beside a build made from one (or recording one).
const DOCUMENT_SUFFIXES: [&str; 4] = [".spdx.json", ".cdx.json", ".intoto.jsonl", PACKAGE_LOCK_SUFFIX];

/// `<stem>.packages.lock`: the package lock a build was made from, as published.
pub const PACKAGE_LOCK_SUFFIX: &str = ".packages.lock";

/// Files a user downloads and runs: each must be covered by every sums file, or a directory
/// whose image was left out of the sums would verify and ship unchecked.
pub fn is_image_artifact(name: &str) -> bool {
    [".hybrid.iso", ".packages", ".build-info.json", ".qcow2", ".raw", ".raw.zst", ".raw.xz", ".img"]
        .iter()
        .chain(&DOCUMENT_SUFFIXES)
        .any(|suffix| name.ends_with(suffix))
}

/// Checks every file listed in the given sums files, and that the lists are complete: every
/// image artifact in `dir` is listed in each of them and no list is empty. Returns the names
/// checked.
pub fn verify_sums(dir: &Path, algorithms: &[Algorithm]) -> Result<Vec<String>> {
    let mut artifacts: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_image_artifact(name))
        .collect();
    artifacts.sort();
    let mut checked = Vec::new();
    // digest_file computes both digests in one read: an image is read once, not per sums file.
    let mut digests: std::collections::HashMap<String, checksums::FileDigests> = Default::default();
    for &algorithm in algorithms {
        let sums_path = dir.join(algorithm.sums_file());
        let text = fs::read_to_string(&sums_path).with_context(|| format!("reading {}", sums_path.display()))?;
        let listed = checksums::parse_sums(algorithm, &text)?;
        if listed.is_empty() {
            bail!("{} lists no files: there is nothing to verify", sums_path.display());
        }
        for artifact in &artifacts {
            if !listed.iter().any(|(_, name)| name == artifact) {
                bail!(
                    "{artifact} is not listed in {} (in {}): it would not be checked; every image file \
                     must be in both sums files",
                    algorithm.sums_file(),
                    dir.display()
                );
            }
        }
        for (expected, name) in listed {
            if !digests.contains_key(&name) {
                let digest = checksums::digest_file(&dir.join(&name))
                    .with_context(|| format!("{} lists {name}, which cannot be read", algorithm.sums_file()))?;
                digests.insert(name.clone(), digest);
            }
            let actual = &digests[&name];
            if actual.get(algorithm) != expected {
                bail!(
                    "{name}: {} mismatch (expected {expected}, got {})",
                    algorithm.sums_file(),
                    actual.get(algorithm)
                );
            }
            if !checked.contains(&name) {
                checked.push(name);
            }
        }
    }
    checked.extend(verify_aliases(dir, &digests)?);
    Ok(checked)
}

/// An ISO published again under another name (a release's `truthdb-installer-v<version>.iso`
/// with its `.sha256`, for the TruthDB organisation's tooling): it must hold the same bytes as
/// an image the sums list (so their signatures cover it too) and match its `.sha256`.
fn verify_aliases(
    dir: &Path,
    listed: &std::collections::HashMap<String, checksums::FileDigests>,
) -> Result<Vec<String>> {
    let mut checked = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sidecar = dir.join(format!("{name}.sha256"));
        if !name.ends_with(".iso") || is_image_artifact(&name) || !sidecar.is_file() {
            continue;
        }
        let digest = checksums::digest_file(&dir.join(&name))?;
        let said = fs::read_to_string(&sidecar).with_context(|| format!("reading {}", sidecar.display()))?;
        if said.split_whitespace().next() != Some(digest.sha256.as_str()) {
            bail!("{name}: its .sha256 says {}, the file is {}", said.trim(), digest.sha256);
        }
        if !listed.values().any(|d| d.sha256 == digest.sha256) {
            bail!("{name} holds bytes no image in the sums files has: it is not covered by their signatures");
        }
        checked.push(name);
    }
    Ok(checked)
}

/// `cargo xtask verify DIR`: sums and signatures, as a user checks a download.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Directory holding the ISO, the sums and the .sign files.
    #[arg(default_value = "dist")]
    dir: PathBuf,
    /// Public key (armored) to check signatures with; defaults to the development key
    /// published beside development builds.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Print the result as JSON on stdout (`"ok": false` and the error when it fails).
    #[arg(long)]
    json: bool,
}

impl VerifyArgs {
    pub fn run(self) -> Result<()> {
        if !self.json {
            return run_verify_command(&self.dir, self.key.as_deref()).map(drop);
        }
        match verify(&self.dir, self.key.as_deref(), &mut |_| {}) {
            Ok(verified) => {
                println!("{}", serde_json::to_string_pretty(&verified)?);
                Ok(())
            }
            Err(e) => {
                let failed = serde_json::json!({"dir": self.dir, "ok": false, "error": format!("{e:#}")});
                println!("{}", serde_json::to_string_pretty(&failed)?);
                Err(e)
            }
        }
    }
}

/// What `verify` found: every file checked against both sums, and who signed them.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub dir: PathBuf,
    pub ok: bool,
    /// Files whose SHA-256 and SHA-512 match the sums.
    pub files: Vec<String>,
    /// `SHA256SUMS.sign` / `SHA512SUMS.sign` and the fingerprint of the key that made each.
    pub signatures: Vec<Signature>,
    /// Checked against the throwaway development key published beside the files.
    pub development_key: bool,
}

#[derive(Debug, Serialize)]
pub struct Signature {
    pub file: String,
    pub fingerprint: String,
}

/// `cargo xtask verify DIR`, as text on stdout.
pub fn run_verify_command(dir: &Path, key: Option<&Path>) -> Result<Verified> {
    let verified = verify(dir, key, &mut |line| println!("{line}"))?;
    if verified.development_key {
        println!(
            "WARNING: signed with a throwaway DEVELOPMENT key ({DEVELOPMENT_KEY_FILE}), NOT a release key: \
             this proves the files match each other, not who made them"
        );
    }
    println!("verified {} file(s) in {}", verified.files.len(), dir.display());
    Ok(verified)
}

/// Checks the sums and their signatures in `dir`, telling `say` each result as it comes.
fn verify(dir: &Path, key: Option<&Path>, say: &mut dyn FnMut(String)) -> Result<Verified> {
    let checked = verify_sums(dir, &Algorithm::ALL)?;
    for name in &checked {
        say(format!("OK  {name}  (SHA256, SHA512)"));
    }
    let development_key = dir.join(DEVELOPMENT_KEY_FILE);
    let key: PathBuf = match key {
        Some(key) => key.to_owned(),
        None if development_key.is_file() => development_key.clone(),
        None => bail!(
            "no public key given: pass --key <release key .asc> (the directory has no {DEVELOPMENT_KEY_FILE} either)"
        ),
    };
    let development = key == development_key;
    let mut signatures = Vec::new();
    for algorithm in Algorithm::ALL {
        let sums = dir.join(algorithm.sums_file());
        let sig = dir.join(format!("{}.sign", algorithm.sums_file()));
        if !sig.is_file() {
            bail!("{} is missing: the sums are unsigned", sig.display());
        }
        let fingerprint = signing::verify_detached(&sig, &sums, &key)?;
        say(format!("OK  {}.sign  good signature by {fingerprint}", algorithm.sums_file()));
        signatures.push(Signature { file: format!("{}.sign", algorithm.sums_file()), fingerprint });
    }
    Ok(Verified { dir: dir.to_owned(), ok: true, files: checked, signatures, development_key: development })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::signing::KeySource;

    fn info() -> BuildInfo {
        BuildInfo {
            name: "truthdb-os".into(),
            version: "0.1.0".into(),
            debian_version: "0.1.0".into(),
            payload: "postgresql".into(),
            suite: "trixie".into(),
            architecture: "amd64".into(),
            source_date_epoch: 1_700_000_000,
            inputs_digest: "abc".into(),
            config_digest: "def".into(),
            build_root_key: "0123".into(),
            kernel_release: "6.12.117-truthdb".into(),
            kernel_key: "4567".into(),
            squashfs_compression: "xz".into(),
            packages_key: "89ab".into(),
            signing_key: String::new(),
            development_signature: true,
            vm_images: vec![],
        }
    }

    #[test]
    fn vm_images_are_published_in_the_sums_and_an_older_release_s_go() {
        let build = tempfile::tempdir().unwrap();
        let dist = tempfile::tempdir().unwrap();
        // Images of another build in dist/ are not this release's: they go.
        fs::write(dist.path().join("truthdb-os-0.0.9-amd64.qcow2"), "old").unwrap();
        let (iso, packages) = fake_build(build.path());
        let images =
            [build.path().join("truthdb-os-0.1.0-amd64.qcow2"), build.path().join("truthdb-os-0.1.0-amd64.raw.zst")];
        for image in &images {
            fs::write(image, vec![3u8; 1024]).unwrap();
        }
        let signer = Signer::new(&KeySource::Development).unwrap();
        let info = BuildInfo {
            vm_images: vec!["truthdb-os-0.1.0-amd64.qcow2".into(), "truthdb-os-0.1.0-amd64.raw.zst".into()],
            ..info()
        };
        let artifacts = Artifacts {
            iso: &iso,
            installed_packages: &packages,
            vm_images: &images,
            documents: &[],
            stem: "truthdb-os-0.1.0-amd64",
        };
        publish(&artifacts, &info, &signer, dist.path(), &mut |_| {}).unwrap();
        assert!(!dist.path().join("truthdb-os-0.0.9-amd64.qcow2").exists());
        let checked = verify_sums(dist.path(), &[Algorithm::Sha256, Algorithm::Sha512]).unwrap();
        for name in ["truthdb-os-0.1.0-amd64.qcow2", "truthdb-os-0.1.0-amd64.raw.zst"] {
            assert!(checked.contains(&name.to_owned()), "{name} not checked: {checked:?}");
        }
        assert_eq!(published_build(dist.path(), "truthdb-os-0.1.0-amd64"), Some(info));
        // A changed image fails verify.
        fs::write(dist.path().join("truthdb-os-0.1.0-amd64.raw.zst"), "changed").unwrap();
        let msg = format!("{:#}", verify_sums(dist.path(), &[Algorithm::Sha256]).unwrap_err());
        assert!(msg.contains("truthdb-os-0.1.0-amd64.raw.zst: SHA256SUMS mismatch"), "{msg}");
    }

    fn fake_build(dir: &Path) -> (PathBuf, PathBuf) {
        let iso = dir.join("truthdb-os-0.1.0-amd64.hybrid.iso");
        let packages = dir.join("truthdb-os-0.1.0-amd64.packages");
        fs::write(&iso, vec![7u8; 4096]).unwrap();
        fs::write(&packages, "live-boot\t1:20250225\n").unwrap();
        (iso, packages)
    }

    #[test]
    fn publishes_the_debian_layout_and_it_verifies() {
        let build = tempfile::tempdir().unwrap();
        let dist = tempfile::tempdir().unwrap();
        fs::write(dist.path().join("truthdb-os-0.0.9-amd64.hybrid.iso"), "old").unwrap();
        fs::write(dist.path().join("NOTES.txt"), "mine").unwrap();
        let (iso, packages) = fake_build(build.path());
        let signer = Signer::new(&KeySource::Development).unwrap();
        let artifacts = Artifacts {
            iso: &iso,
            installed_packages: &packages,
            vm_images: &[],
            documents: &[],
            stem: "truthdb-os-0.1.0-amd64",
        };
        publish(&artifacts, &info(), &signer, dist.path(), &mut |_| {}).unwrap();

        let mut names: Vec<String> =
            fs::read_dir(dist.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc",
                "NOTES.txt",
                "SHA256SUMS",
                "SHA256SUMS.sign",
                "SHA512SUMS",
                "SHA512SUMS.sign",
                "truthdb-os-0.1.0-amd64.build-info.json",
                "truthdb-os-0.1.0-amd64.hybrid.iso",
                "truthdb-os-0.1.0-amd64.packages",
            ]
        );
        let verified = run_verify_command(dist.path(), None).unwrap();
        assert_eq!(published_build(dist.path(), "truthdb-os-0.1.0-amd64"), Some(info()));
        // What `verify --json` prints: every payload file, both signatures, the key's kind.
        let json = serde_json::to_value(&verified).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["files"].as_array().unwrap().len(), 3, "{json}");
        let signed: Vec<&str> =
            json["signatures"].as_array().unwrap().iter().map(|s| s["file"].as_str().unwrap()).collect();
        assert_eq!(signed, ["SHA256SUMS.sign", "SHA512SUMS.sign"]);
        assert_eq!(json["development_key"], true);

        // The release's second name for the ISO: the same bytes, with its own .sha256.
        let alias = dist.path().join("truthdb-installer-v0.1.0.iso");
        fs::copy(dist.path().join("truthdb-os-0.1.0-amd64.hybrid.iso"), &alias).unwrap();
        let sha256 = checksums::digest_file(&alias).unwrap().sha256;
        fs::write(
            dist.path().join("truthdb-installer-v0.1.0.iso.sha256"),
            format!("{sha256}  truthdb-installer-v0.1.0.iso\n"),
        )
        .unwrap();
        let names = verify_sums(dist.path(), &[Algorithm::Sha256, Algorithm::Sha512]).unwrap();
        assert!(names.contains(&"truthdb-installer-v0.1.0.iso".to_owned()), "{names:?}");
        fs::write(&alias, "other bytes").unwrap();
        let msg = format!("{:#}", verify_sums(dist.path(), &[Algorithm::Sha256]).unwrap_err());
        assert!(msg.contains("truthdb-installer-v0.1.0.iso: its .sha256 says"), "{msg}");
        let other = checksums::digest_file(&alias).unwrap().sha256;
        fs::write(
            dist.path().join("truthdb-installer-v0.1.0.iso.sha256"),
            format!("{other}  truthdb-installer-v0.1.0.iso\n"),
        )
        .unwrap();
        let msg = format!("{:#}", verify_sums(dist.path(), &[Algorithm::Sha256]).unwrap_err());
        assert!(msg.contains("not covered by their signatures"), "{msg}");
        fs::remove_file(&alias).unwrap();
        fs::remove_file(dist.path().join("truthdb-installer-v0.1.0.iso.sha256")).unwrap();

        // A corrupted image is caught by the sums.
        fs::write(dist.path().join("truthdb-os-0.1.0-amd64.hybrid.iso"), "corrupt").unwrap();
        let msg = format!("{:#}", run_verify_command(dist.path(), None).unwrap_err());
        assert!(msg.contains("truthdb-os-0.1.0-amd64.hybrid.iso: SHA256SUMS mismatch"), "{msg}");
        assert_eq!(published_build(dist.path(), "truthdb-os-0.1.0-amd64"), None);
    }

    /// A fake build published into a new directory with a development key.
    fn publish_fake() -> (tempfile::TempDir, Signer) {
        let build = tempfile::tempdir().unwrap();
        let dist = tempfile::tempdir().unwrap();
        let (iso, packages) = fake_build(build.path());
        let signer = Signer::new(&KeySource::Development).unwrap();
        let artifacts = Artifacts {
            iso: &iso,
            installed_packages: &packages,
            vm_images: &[],
            documents: &[],
            stem: "truthdb-os-0.1.0-amd64",
        };
        publish(&artifacts, &info(), &signer, dist.path(), &mut |_| {}).unwrap();
        (dist, signer)
    }

    #[test]
    fn tampered_sums_fail_the_signature_check() {
        let (dist, _signer) = publish_fake();
        // Rewrite the sums consistently for a swapped payload: only the signature can tell.
        let payload = dist.path().join("truthdb-os-0.1.0-amd64.packages");
        fs::write(&payload, "evil\n").unwrap();
        for algorithm in Algorithm::ALL {
            let mut files = Vec::new();
            for name in [
                "truthdb-os-0.1.0-amd64.build-info.json",
                "truthdb-os-0.1.0-amd64.hybrid.iso",
                "truthdb-os-0.1.0-amd64.packages",
            ] {
                files.push((name.to_owned(), checksums::digest_file(&dist.path().join(name)).unwrap()));
            }
            fs::write(dist.path().join(algorithm.sums_file()), checksums::sums_text(algorithm, &files)).unwrap();
        }
        let msg = format!("{:#}", run_verify_command(dist.path(), None).unwrap_err());
        assert!(msg.contains("bad signature"), "{msg}");
    }

    /// Rewrites both sums files to list only `keep` (with their true digests) and signs them
    /// again with `signer`: sums and signatures are then consistent, and only completeness can
    /// catch what is missing.
    fn relist(dist: &Path, signer: &Signer, keep: &[(&str, &[Algorithm])]) {
        for algorithm in Algorithm::ALL {
            let files: Vec<_> = keep
                .iter()
                .filter(|(_, algorithms)| algorithms.contains(&algorithm))
                .map(|(name, _)| (name.to_string(), checksums::digest_file(&dist.join(name)).unwrap()))
                .collect();
            let sums = dist.join(algorithm.sums_file());
            fs::write(&sums, checksums::sums_text(algorithm, &files)).unwrap();
            signer.sign_detached(&sums).unwrap();
        }
    }

    #[test]
    fn verify_requires_every_artifact_listed_in_both_sums_and_every_signature() {
        const ISO: &str = "truthdb-os-0.1.0-amd64.hybrid.iso";
        const PACKAGES: &str = "truthdb-os-0.1.0-amd64.packages";
        const INFO: &str = "truthdb-os-0.1.0-amd64.build-info.json";
        let both: &[Algorithm] = &Algorithm::ALL;
        let publish_fresh = || {
            let (dist, signer) = publish_fake();
            run_verify_command(dist.path(), None).unwrap();
            (dist, signer)
        };
        let refused = |dist: &Path, expected: &str| {
            let msg = format!("{:#}", run_verify_command(dist, None).unwrap_err());
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        };

        // The ISO is in the directory but listed in neither sums file: it would ship unchecked.
        let (dist, signer) = publish_fresh();
        relist(dist.path(), &signer, &[(PACKAGES, both), (INFO, both)]);
        refused(dist.path(), &format!("{ISO} is not listed in SHA256SUMS"));

        // Listed in one sums file only.
        let (dist, signer) = publish_fresh();
        relist(dist.path(), &signer, &[(ISO, &[Algorithm::Sha256]), (PACKAGES, both), (INFO, both)]);
        refused(dist.path(), &format!("{ISO} is not listed in SHA512SUMS"));

        // A listed file that is not there.
        let (dist, _signer) = publish_fresh();
        fs::remove_file(dist.path().join(PACKAGES)).unwrap();
        refused(dist.path(), &format!("lists {PACKAGES}, which cannot be read"));

        // A signature that is not there.
        let (dist, _signer) = publish_fresh();
        fs::remove_file(dist.path().join("SHA512SUMS.sign")).unwrap();
        refused(dist.path(), "SHA512SUMS.sign is missing");

        // Sums that list nothing verify nothing.
        let (dist, signer) = publish_fresh();
        for name in [ISO, PACKAGES, INFO] {
            fs::remove_file(dist.path().join(name)).unwrap();
        }
        relist(dist.path(), &signer, &[]);
        refused(dist.path(), "lists no files");
    }

    #[test]
    fn a_failed_publish_leaves_dist_as_it_was() {
        let dist = tempfile::tempdir().unwrap();
        fs::write(dist.path().join("SHA256SUMS"), "previous\n").unwrap();
        let signer = Signer::new(&KeySource::Development).unwrap();
        let missing = Path::new("/nonexistent/x.iso");
        let artifacts = Artifacts {
            iso: missing,
            installed_packages: missing,
            vm_images: &[],
            documents: &[],
            stem: "truthdb-os-0.1.0-amd64",
        };
        assert!(publish(&artifacts, &info(), &signer, dist.path(), &mut |_| {}).is_err());
        let names: Vec<_> = fs::read_dir(dist.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["SHA256SUMS"]);
        assert_eq!(fs::read_to_string(dist.path().join("SHA256SUMS")).unwrap(), "previous\n");
    }
}
