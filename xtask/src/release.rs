//! `cargo xtask release`: turns a published `dist/` into the file set of a GitHub Release,
//! after the checks a release must pass. The release workflow runs exactly this, then uploads
//! the directory; `--dry-run` runs it locally (a development signature is then allowed and the
//! tag need not exist or be on main).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::Project;
use crate::stages::publish::{self, BuildInfo};
use crate::stages::signing::DEVELOPMENT_KEY_FILE;
use crate::util::run::Cmd;

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The release tag (default: v<workspace version>). Must be exactly `v` + the version.
    #[arg(long)]
    pub tag: Option<String>,
    /// The published build to release (default: dist/).
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// Where to put the release's files (created; must not exist or be empty).
    #[arg(long, required_unless_present = "check_only")]
    pub out: Option<PathBuf>,
    /// Only check the tag (matches the version, is on origin/main); needs no build.
    #[arg(long)]
    pub check_only: bool,
    /// Public key the sums must verify with (required unless --dry-run).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Local rehearsal: allow a development signature, skip the "tag is on main" check.
    #[arg(long)]
    pub dry_run: bool,
}

/// The name of the file holding the signing key's fingerprint, published with the release.
pub const FINGERPRINT_FILE: &str = "SIGNING-KEY-FINGERPRINT.txt";

/// A release tag is `v` + the workspace version, nothing else; a `-suffix` makes it a
/// pre-release. Returns whether it is one.
pub fn check_tag(tag: &str, version: &str) -> Result<bool> {
    let expected = format!("v{version}");
    if tag != expected {
        bail!("tag {tag:?} does not match the workspace version in Cargo.toml: the tag must be {expected:?}");
    }
    let core = version.split(['-', '+']).next().unwrap_or("");
    if core.split('.').count() != 3 || !core.split('.').all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    {
        bail!("version {version:?} is not semver MAJOR.MINOR.PATCH[-PRERELEASE]");
    }
    Ok(version.contains('-'))
}

/// The ISO's name as the TruthDB organisation's release tooling expects it beside every
/// repository's assets: `truthdb-installer-v<version>.iso`, with `<that>.sha256`.
pub fn org_iso_name(version: &str) -> String {
    format!("truthdb-installer-v{version}.iso")
}

/// The files a release publishes, by name, for a build stem and version: Debian's image
/// layout, the key's fingerprint, and the ISO again under the organisation's name with its
/// own `.sha256` (the same bytes as the ISO SHA256SUMS lists, so the signed sums cover it too),
/// and the generic VM images the build published (`iso --vm-images`), and its package lock
/// when it was built from one (or recorded one).
pub fn release_file_names(stem: &str, version: &str, vm_images: &[String], with_lock: bool) -> Vec<String> {
    let mut names = vec![
        org_iso_name(version),
        format!("{}.sha256", org_iso_name(version)),
        format!("{stem}.hybrid.iso"),
        format!("{stem}.packages"),
        publish::build_info_name(stem),
        "SHA256SUMS".to_owned(),
        "SHA256SUMS.sign".to_owned(),
        "SHA512SUMS".to_owned(),
        "SHA512SUMS.sign".to_owned(),
        FINGERPRINT_FILE.to_owned(),
    ];
    names.extend(vm_images.iter().cloned());
    names.extend(crate::stages::sbom::file_names(stem));
    if with_lock {
        names.push(format!("{stem}{}", publish::PACKAGE_LOCK_SUFFIX));
    }
    names.sort();
    names
}

impl ReleaseArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        run(project, &self)
    }
}

fn run(project: &Project, args: &ReleaseArgs) -> Result<()> {
    let tag = args.tag.clone().unwrap_or_else(|| format!("v{}", project.version));
    let prerelease = check_tag(&tag, &project.version)?;
    if !args.dry_run {
        check_tag_on_main(&project.root, &tag)?;
    }
    if args.check_only {
        println!("tag {tag} matches version {}{}", project.version, if prerelease { " (pre-release)" } else { "" });
        return Ok(());
    }
    let out = args.out.as_deref().context("--out is required")?;
    let dist = args.dist.clone().unwrap_or_else(|| project.default_dist_dir());
    let stem = project.image_stem();
    let info_path = dist.join(publish::build_info_name(&stem));
    let info: BuildInfo = serde_json::from_str(
        &fs::read_to_string(&info_path)
            .with_context(|| format!("reading {} (run `cargo xtask iso` first)", info_path.display()))?,
    )
    .with_context(|| format!("parsing {}", info_path.display()))?;
    if info.version != project.version {
        bail!("{} is version {}, the release is {}", info_path.display(), info.version, project.version);
    }
    if info.development_signature && !args.dry_run {
        bail!("{} was signed with a development key: a release needs the release key", dist.display());
    }
    let key = match (&args.key, args.dry_run) {
        (Some(key), _) => key.clone(),
        (None, true) => dist.join(DEVELOPMENT_KEY_FILE),
        (None, false) => crate::util::usage_error!("--key <release public key> is required to check the signatures"),
    };
    publish::run_verify_command(&dist, Some(&key))?;
    check_asset_sizes(
        &dist,
        &[format!("{stem}.hybrid.iso")].iter().chain(&info.vm_images).cloned().collect::<Vec<_>>(),
    )?;

    if out.exists() && fs::read_dir(out)?.next().is_some() {
        bail!("{} is not empty: a release's files are never replaced", out.display());
    }
    // A development key's fingerprint is not in the build info (the key is new for every
    // build): the published key file names it.
    let fingerprint = if info.development_signature {
        let key = dist.join(crate::stages::signing::DEVELOPMENT_KEY_FILE);
        crate::stages::signing::key_file_fingerprints(&key)?
            .into_iter()
            .next()
            .with_context(|| format!("{} holds no key", key.display()))?
    } else {
        info.signing_key.clone()
    };
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let iso_name = format!("{stem}.hybrid.iso");
    let org_iso = org_iso_name(&project.version);
    let with_lock = dist.join(format!("{stem}{}", publish::PACKAGE_LOCK_SUFFIX)).is_file();
    for name in release_file_names(&stem, &project.version, &info.vm_images, with_lock) {
        let to = out.join(&name);
        if name == format!("{org_iso}.sha256") {
            // sha256sum's format, from the sums just verified.
            let algorithm = crate::stages::checksums::Algorithm::Sha256;
            let sums = fs::read_to_string(dist.join(algorithm.sums_file()))?;
            let (sha256, _) = crate::stages::checksums::parse_sums(algorithm, &sums)?
                .into_iter()
                .find(|(_, name)| *name == iso_name)
                .with_context(|| format!("SHA256SUMS lists no {iso_name}"))?;
            fs::write(&to, format!("{sha256}  {org_iso}\n"))?;
            continue;
        }
        if name == FINGERPRINT_FILE {
            let label = if info.development_signature { " (DEVELOPMENT key: not a release signature)" } else { "" };
            fs::write(&to, format!("{fingerprint}{label}\n"))?;
            continue;
        }
        let from = dist.join(if name == org_iso { &iso_name } else { &name });
        // A hard link costs nothing for a 300 MB image; copy across file systems.
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    println!("release {tag}{} for {fingerprint}:", if prerelease { " (pre-release)" } else { "" });
    for name in release_file_names(&stem, &project.version, &info.vm_images, with_lock) {
        println!("  {}", out.join(name).display());
    }
    Ok(())
}

/// GitHub refuses a release asset of 2 GiB or more.
const GITHUB_ASSET_LIMIT: u64 = 2 << 30;

/// Every image a release uploads fits GitHub's per-asset limit, or the release stops before
/// anything is assembled, naming the file.
fn check_asset_sizes(dist: &Path, names: &[String]) -> Result<()> {
    for name in names {
        let path = dist.join(name);
        let size = fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
        if size >= GITHUB_ASSET_LIMIT {
            bail!("{}: {size} bytes, at or over GitHub's 2 GiB limit for a release asset", path.display());
        }
    }
    Ok(())
}

/// Releases come from main: the tagged commit must be on `origin/main`.
fn check_tag_on_main(root: &Path, tag: &str) -> Result<()> {
    let git = || Cmd::new("git").args(["-c", "safe.directory=*"]).dir(root);
    let commit = git()
        .args(["rev-parse", "--verify", &format!("refs/tags/{tag}^{{commit}}")])
        .read()
        .with_context(|| format!("tag {tag} does not exist here"))?;
    git()
        .args(["merge-base", "--is-ancestor", commit.trim(), "origin/main"])
        .run()
        .with_context(|| format!("tag {tag} ({}) is not on origin/main: releases come from main", commit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_must_be_v_plus_the_workspace_version() {
        assert!(!check_tag("v0.1.0", "0.1.0").unwrap());
        assert!(check_tag("v0.2.0-rc.1", "0.2.0-rc.1").unwrap());
        for (tag, version) in [("0.1.0", "0.1.0"), ("v0.1.1", "0.1.0"), ("v0.1.0-rc.1", "0.1.0"), ("v0.1", "0.1")] {
            assert!(check_tag(tag, version).is_err(), "{tag} for {version} was accepted");
        }
    }

    #[test]
    fn an_image_over_github_s_asset_limit_stops_the_release() {
        let dist = tempfile::tempdir().unwrap();
        let small = dist.path().join("truthdb-os-0.1.0-amd64.qcow2");
        fs::write(&small, "image").unwrap();
        check_asset_sizes(dist.path(), &["truthdb-os-0.1.0-amd64.qcow2".into()]).unwrap();
        // Sparse: no disk space used.
        fs::File::create(dist.path().join("big.raw.zst")).unwrap().set_len(GITHUB_ASSET_LIMIT).unwrap();
        let msg = format!("{:#}", check_asset_sizes(dist.path(), &["big.raw.zst".into()]).unwrap_err());
        assert!(msg.contains("big.raw.zst") && msg.contains("2 GiB"), "{msg}");
    }

    #[test]
    fn the_file_set_is_the_debian_layout_plus_the_fingerprint_and_the_sbom() {
        let names = release_file_names("truthdb-os-0.1.0-amd64", "0.1.0", &[], false);
        assert_eq!(names.len(), 13);
        let locked = release_file_names("truthdb-os-0.1.0-amd64", "0.1.0", &[], true);
        assert!(locked.contains(&"truthdb-os-0.1.0-amd64.packages.lock".to_owned()), "{locked:?}");
        for document in ["spdx.json", "cdx.json", "intoto.jsonl"] {
            assert!(names.contains(&format!("truthdb-os-0.1.0-amd64.{document}")), "{document}");
        }
        let with_images =
            release_file_names("truthdb-os-0.1.0-amd64", "0.1.0", &["truthdb-os-0.1.0-amd64.qcow2".into()], false);
        assert!(with_images.contains(&"truthdb-os-0.1.0-amd64.qcow2".to_owned()) && with_images.len() == 14);
        assert!(names.contains(&"truthdb-installer-v0.1.0.iso".to_owned()));
        assert!(names.contains(&"truthdb-installer-v0.1.0.iso.sha256".to_owned()));
        assert!(names.contains(&"truthdb-os-0.1.0-amd64.hybrid.iso".to_owned()));
        assert!(names.contains(&"SHA512SUMS.sign".to_owned()));
        assert!(!names.iter().any(|n| n.contains("DEVELOPMENT")), "a release never ships the development key");
    }
}
