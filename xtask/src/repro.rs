//! `cargo xtask repro-check`: builds the image a second time, from a clean clone of the same
//! commit in its own work directory, and compares what the two builds published byte for byte.
//!
//! By default the second build has its own cache too (`target/truthdb-os/repro/cache`): a new
//! build root, installer build and chroot with its packages; only the kernel package is taken
//! from the machine's cache (`--with-kernel` builds it again as well, 17-29 minutes on 2 cores).
//! `--shared-cache` shares every cache, so only live-build's customisation and binary stage run
//! again: the suite's quick form. The signatures and a development key are new in every build
//! and are not compared. On a difference, diffoscope (Debian's `diffoscope-minimal`) says
//! where, and the command fails.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::doctor::{self, Purpose};
use crate::iso::{self, IsoArgs};
use crate::project::{self, Project};
use crate::stages::lb_build::Compression;
use crate::stages::{publish, sbom};
use crate::util::fsx;
use crate::util::host;
use crate::util::run::Cmd;

/// `cargo xtask repro-check`.
#[derive(Debug, clap::Args)]
pub struct ReproCheckArgs {
    /// Build the kernel package again in the second build's cache instead of taking the
    /// cached one (17-29 minutes on 2 cores, measured).
    #[arg(long, conflicts_with = "shared_cache")]
    pub with_kernel: bool,
    /// Share the machine's caches with the second build: only the customisation and the
    /// binary stage run again (what the test suite checks).
    #[arg(long)]
    pub shared_cache: bool,
    /// Squashfs compression of both builds (see `iso --compression`).
    #[arg(long, value_enum, default_value_t = Compression::Xz, conflicts_with = "against")]
    pub compression: Compression,
    /// Compare with the build already published in DIR (made from this commit) instead of
    /// building the first one into dist/; the second is built with its options (compression,
    /// VM images) as its build info records them.
    #[arg(long, value_name = "DIR")]
    pub against: Option<PathBuf>,
    /// Build (both times, or the second time with --against) from this package lock instead
    /// of the commit's lb-config/packages.lock.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

/// The published files two builds of one commit must agree on, byte for byte.
pub fn compared_files(stem: &str) -> Vec<String> {
    let mut names = vec![
        format!("{stem}.hybrid.iso"),
        format!("{stem}.packages"),
        publish::build_info_name(stem),
        "SHA256SUMS".to_owned(),
        "SHA512SUMS".to_owned(),
    ];
    names.extend(sbom::file_names(stem));
    names
}

/// [`compared_files`], and the package lock when the first build published one.
fn compared_files_of(first_dist: &Path, stem: &str) -> Vec<String> {
    let mut names = compared_files(stem);
    let lock = format!("{stem}{}", publish::PACKAGE_LOCK_SUFFIX);
    if first_dist.join(&lock).is_file() {
        names.push(lock);
    }
    names
}

/// How one file compared.
#[derive(Debug, PartialEq, Eq)]
pub enum Comparison {
    Same,
    Differs,
    Missing(String),
}

/// Compares each of `names` in `first` and `second`.
pub fn compare(first: &Path, second: &Path, names: &[String]) -> Result<Vec<(String, Comparison)>> {
    let mut out = Vec::new();
    for name in names {
        let (a, b) = (first.join(name), second.join(name));
        let result = match (a.is_file(), b.is_file()) {
            (false, _) => Comparison::Missing(a.display().to_string()),
            (_, false) => Comparison::Missing(b.display().to_string()),
            _ if crate::stages::checksums::sha256_file(&a)? == crate::stages::checksums::sha256_file(&b)? => {
                Comparison::Same
            }
            _ => Comparison::Differs,
        };
        out.push((name.clone(), result));
    }
    Ok(out)
}

impl ReproCheckArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        host::reexec_as_root_if_needed()?;
        doctor::ensure(&[Purpose::Build, Purpose::ReproCheck])?;
        let (commit, dirty) = sbom::git_state(&project.root);
        let commit = commit.context("repro-check rebuilds a git commit: the project is not a git checkout")?;
        if dirty {
            bail!(
                "the work tree has uncommitted changes: repro-check rebuilds commit {commit} from a clean clone, \
                 so commit or stash them first"
            );
        }
        // The second build runs in another directory: the lock by its absolute path.
        let lock = match &self.lock {
            Some(path) => {
                Some(fs::canonicalize(path).with_context(|| format!("{}: no such package lock", path.display()))?)
            }
            None => None,
        };
        let work = project.work_dir().join("repro");
        let clone = work.join("src");
        let dist = work.join("dist");
        let cache = if self.shared_cache { project::cache_dir() } else { work.join("cache") };
        let started = std::time::Instant::now();

        let stem = project.image_stem();
        let first_dist = match &self.against {
            Some(dir) => dir.clone(),
            None => {
                eprintln!("==> first build: `iso` in the project (nothing is rebuilt if dist/ is up to date)");
                let first_dist = project.default_dist_dir();
                let _lock = project.lock_work_dir()?;
                let args = IsoArgs {
                    compression: self.compression,
                    dist: Some(first_dist.clone()),
                    lock: lock.clone(),
                    ..IsoArgs::default()
                };
                iso::run(project, &args)?;
                first_dist
            }
        };
        let info_path = first_dist.join(publish::build_info_name(&stem));
        let first: publish::BuildInfo = serde_json::from_str(
            &fs::read_to_string(&info_path).with_context(|| format!("reading {}", info_path.display()))?,
        )
        .with_context(|| format!("parsing {}", info_path.display()))?;
        let compression = Compression::from_name(&first.squashfs_compression).with_context(|| {
            format!("{}: unknown squashfs_compression {:?}", info_path.display(), first.squashfs_compression)
        })?;

        eprintln!("==> second build: a clean clone of {commit} in {}", clone.display());
        for old in [&clone, &dist] {
            fsx::remove_if_present(old)?;
        }
        fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let git = |args: &[&str]| Cmd::new("git").args(["-c", "safe.directory=*"]).args(args);
        git(&["clone", "--quiet", "--no-checkout"])
            .arg(&project.root)
            .arg(&clone)
            .run()
            .context("cloning the project")?;
        git(&["checkout", "--quiet", &commit]).dir(&clone).run().with_context(|| format!("checking out {commit}"))?;
        if !self.shared_cache {
            fsx::remove_if_present(&cache)?;
            fs::create_dir_all(&cache)?;
            if !self.with_kernel {
                copy_kernel_cache(&project::cache_dir(), &cache)?;
            }
        }
        let exe = std::env::current_exe().context("finding xtask's own binary")?;
        let mut second = Cmd::new(exe)
            .arg("--project")
            .arg(&clone)
            .args(["iso", "--force", "--compression", compression.arg()])
            .arg("--dist")
            .arg(&dist)
            .env("TRUTHDB_CACHE_DIR", &cache);
        if !first.vm_images.is_empty() {
            second = second.arg("--vm-images");
        }
        if let Some(lock) = &lock {
            second = second.arg("--lock").arg(lock);
        }
        if let Some(epoch) = std::env::var_os("SOURCE_DATE_EPOCH") {
            second = second.env("SOURCE_DATE_EPOCH", epoch);
        }
        let built = second.run_inherit().context("the second build failed");
        // The clone's work tree (its build directory holds the whole chroot) is not kept; the
        // published files are, to compare by hand.
        let _ = fsx::remove_if_present(&clone);
        if !self.shared_cache {
            let _ = fsx::remove_if_present(&cache);
        }
        built?;

        // VM images are not reproducible yet (file system UUIDs and times): with them, the sums
        // that list them differ too, and neither is compared.
        let with_images = !first.vm_images.is_empty();
        let names: Vec<String> = compared_files_of(&first_dist, &stem)
            .into_iter()
            .filter(|n| !(with_images && n.starts_with("SHA")))
            .collect();
        if with_images {
            println!("  (not compared: {} and the sums listing them)", first.vm_images.join(", "));
        }
        let results = compare(&first_dist, &dist, &names)?;
        let mut differ = Vec::new();
        for (name, result) in &results {
            match result {
                Comparison::Same => println!("  same     {name}"),
                Comparison::Differs => {
                    println!("  DIFFERS  {name}");
                    differ.push(name.clone());
                }
                Comparison::Missing(path) => {
                    println!("  MISSING  {name} ({path})");
                    differ.push(name.clone());
                }
            }
        }
        let took = crate::util::progress::format_duration(started.elapsed());
        if differ.is_empty() {
            println!(
                "reproducible: two builds of {commit} published the same bytes ({} files compared) in {took}; \
                 the signatures{} differ by design",
                results.len(),
                if fs::metadata(dist.join(crate::stages::signing::DEVELOPMENT_KEY_FILE)).is_ok() {
                    " and the development key"
                } else {
                    ""
                }
            );
            return Ok(());
        }
        let report = work.join("diffoscope.txt");
        for name in differ.iter().filter(|n| !n.starts_with("SHA")) {
            let (a, b) = (first_dist.join(name), dist.join(name));
            if !(a.is_file() && b.is_file()) {
                continue;
            }
            eprintln!("==> diffoscope {name} (report: {})", report.display());
            // diffoscope exits 1 when the files differ, which is what we know already.
            let out = Cmd::new("diffoscope")
                .args([
                    "--text",
                    &report.display().to_string(),
                    "--max-report-size",
                    "2000000",
                    "--exclude-directory-metadata=recursive",
                ])
                .arg(&a)
                .arg(&b)
                .output_unchecked()?;
            if out.status.code() != Some(1) && !out.status.success() {
                eprintln!("diffoscope failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let text = fs::read_to_string(&report).unwrap_or_default();
            for line in text.lines().take(60) {
                println!("    {line}");
            }
            break;
        }
        bail!(
            "not reproducible: {} differ between two builds of {commit} (second build's files in {})",
            differ.join(", "),
            dist.display()
        )
    }
}

/// Copies the machine's cached kernel packages into the second build's cache, so that only
/// `--with-kernel` compiles one.
fn copy_kernel_cache(from: &Path, to: &Path) -> Result<()> {
    let kernels = from.join("kernels");
    if !kernels.is_dir() {
        bail!("no cached kernel in {}: build one first (`cargo xtask kernel`) or use --with-kernel", kernels.display());
    }
    fsx::copy_tree(&kernels, &to.join("kernels"), &[]).with_context(|| format!("copying {}", kernels.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_compared_by_content_and_a_missing_one_is_named() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for (dir, text) in [(a.path(), "x"), (b.path(), "x")] {
            fs::write(dir.join("same"), text).unwrap();
        }
        fs::write(a.path().join("other"), "1").unwrap();
        fs::write(b.path().join("other"), "2").unwrap();
        fs::write(a.path().join("only-a"), "1").unwrap();
        let names = ["same".to_owned(), "other".to_owned(), "only-a".to_owned()];
        let results = compare(a.path(), b.path(), &names).unwrap();
        assert_eq!(results[0].1, Comparison::Same);
        assert_eq!(results[1].1, Comparison::Differs);
        assert!(matches!(&results[2].1, Comparison::Missing(p) if p.ends_with("only-a")));
    }

    #[test]
    fn the_compared_set_is_the_published_set_less_signatures_and_keys() {
        let names = compared_files("truthdb-os-0.1.0-amd64");
        assert!(names.contains(&"truthdb-os-0.1.0-amd64.spdx.json".to_owned()));
        assert!(names.contains(&"SHA512SUMS".to_owned()));
        assert!(!names.iter().any(|n| n.ends_with(".sign") || n.contains("KEY")));
    }
}
