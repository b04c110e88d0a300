//! Where things are: the project's inputs (the top-level folders) and the places xtask writes.
//!
//! Stages receive paths from here rather than building them, so the layout is written once.

pub mod appliance;
pub mod kernel_pin;
pub mod package_list;
pub mod package_lock;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::appliance::{Appliance, workspace_version};
use crate::project::kernel_pin::KernelPin;

/// The default cache, outside the repository, shared by every checkout on the machine.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/truthdb-os";

/// The global flags that choose the project and how a run shares it with others.
#[derive(clap::Args, Debug)]
pub struct ProjectArgs {
    /// Project directory (default: the workspace this xtask belongs to).
    #[arg(long, global = true, value_name = "DIR")]
    pub project: Option<PathBuf>,
    /// Label a pre-release build: version `<workspace version>-<SUFFIX>`, e.g. nightly.20261122.
    #[arg(long, global = true, value_name = "SUFFIX")]
    pub version_suffix: Option<String>,
    /// Fail at once when another run holds the work directory or a cache entry (default: wait).
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// Take the version from a release tag (vX.Y.Z or vX.Y.Z-PRE) instead of Cargo.toml, as the
    /// TruthDB organisation's release tooling does (it tags every repository alike).
    #[arg(long, global = true, value_name = "TAG", conflicts_with = "version_suffix")]
    pub release_tag: Option<String>,
    /// The payload profile to build: `lb-config/payloads/<NAME>.toml` (default: the one
    /// `[payload] profile` names in appliance.toml, postgresql).
    #[arg(long, global = true, value_name = "NAME")]
    pub payload: Option<String>,
}

impl ProjectArgs {
    pub fn load(&self) -> Result<Project> {
        let version = match (&self.release_tag, &self.version_suffix) {
            (Some(tag), _) => Version::FromTag(tag),
            (None, Some(suffix)) => Version::Suffixed(suffix),
            (None, None) => Version::Workspace,
        };
        Project::load(self.project.as_deref(), version, self.payload.as_deref())
    }
}

/// Where a run's version comes from.
#[derive(Clone, Copy, Debug)]
pub enum Version<'a> {
    /// The workspace version in Cargo.toml: local builds.
    Workspace,
    /// `<workspace version>-<suffix>`: nightly builds.
    Suffixed(&'a str),
    /// A release tag `vX.Y.Z[-PRE]`: releases driven by tags.
    FromTag(&'a str),
}

#[derive(Clone, Debug)]
pub struct Project {
    /// The repository root (holds the workspace `Cargo.toml`).
    pub root: PathBuf,
    /// The workspace version: the one version of everything.
    pub version: String,
    pub appliance: Appliance,
    /// `kernel/kernel.toml`: the kernel the image boots.
    pub kernel_pin: KernelPin,
}

impl Project {
    /// Holds the work directory's lock for as long as the guard lives: commands that write
    /// `target/truthdb-os/` take it (after any re-run under sudo, which would otherwise wait
    /// for its own parent).
    /// The ISO `cargo xtask iso` publishes into the default `dist/`.
    pub fn default_iso(&self) -> PathBuf {
        self.default_dist_dir().join(self.iso_file_name())
    }

    pub fn lock_work_dir(&self) -> Result<crate::util::lock::Lock> {
        crate::util::lock::work_dir(&self.work_dir())
    }

    /// The locks of a VM test that writes only `target/truthdb-os/<name>/`: such tests run
    /// side by side (`cargo xtask test` starts them together); builds wait for them.
    pub fn lock_work_subdir(&self, name: &str) -> Result<[crate::util::lock::Lock; 2]> {
        crate::util::lock::work_subdir(&self.work_dir(), name)
    }

    /// Loads the project at `root`, or at the workspace this xtask was built from. The
    /// version is the workspace's unless `version` says otherwise: `0.1.0` becomes
    /// `0.1.0-<suffix>` for a pre-release build (nightly images use `nightly.<date>`), or the
    /// release tag's.
    pub fn load(root: Option<&Path>, version: Version, payload: Option<&str>) -> Result<Project> {
        let root = match root {
            Some(root) => root.to_owned(),
            None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent").to_owned(),
        };
        let root = root.canonicalize().with_context(|| format!("project directory {}", root.display()))?;
        let workspace = workspace_version(&root.join("Cargo.toml"))?;
        let version = match version {
            Version::Workspace => workspace,
            Version::Suffixed(suffix) => {
                if suffix.is_empty()
                    || !suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.')
                {
                    crate::util::usage_error!(
                        "--version-suffix {suffix:?}: use lower-case letters, digits and dots, e.g. nightly.20261122"
                    );
                }
                format!("{workspace}-{suffix}")
            }
            Version::FromTag(tag) => match crate::project::appliance::version_from_tag(tag) {
                Ok(version) => version,
                Err(e) => crate::util::usage_error!("--release-tag: {e}"),
            },
        };
        let appliance = Appliance::load(&root.join("lb-config/appliance.toml"), &version, payload)?;
        let kernel_pin = KernelPin::load(&root.join("kernel/kernel.toml"))?;
        Ok(Project { root, version, appliance, kernel_pin })
    }

    /// minijinja templates and verbatim files mirroring live-build's `auto/` and `config/`.
    pub fn lb_config_dir(&self) -> PathBuf {
        self.root.join("lb-config")
    }
    pub fn hooks_dir(&self) -> PathBuf {
        self.root.join("hooks")
    }
    pub fn overlay_dir(&self) -> PathBuf {
        self.root.join("overlay")
    }
    /// The package lock `cargo xtask lock` records and `iso` builds from, when it exists.
    pub fn package_lock_path(&self) -> PathBuf {
        self.lb_config_dir().join("packages.lock")
    }
    pub fn packages_list(&self) -> PathBuf {
        self.root.join("packages.list")
    }
    /// `kernel/`: pin, config fragments, patches.
    pub fn kernel_dir(&self) -> PathBuf {
        self.root.join("kernel")
    }
    /// Everything xtask writes inside the repository lives under here (ignored by git).
    pub fn work_dir(&self) -> PathBuf {
        self.root.join("target/truthdb-os")
    }
    pub fn default_live_build_tree_dir(&self) -> PathBuf {
        self.work_dir().join("config")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.work_dir().join("logs")
    }
    /// The last KVM probe's result (`boot-test --accel auto` and `vm` record and read it).
    pub fn kvm_probe_file(&self) -> PathBuf {
        self.work_dir().join("kvm-probe")
    }
    /// `cargo xtask vm`'s files: its scratch disk, its KVM probe's serial log.
    pub fn vm_dir(&self) -> PathBuf {
        self.work_dir().join("vm")
    }
    pub fn default_dist_dir(&self) -> PathBuf {
        self.root.join("dist")
    }
    /// `<name>-<version>-<arch>`: the stem of every published file of this build.
    pub fn image_stem(&self) -> String {
        format!("{}-{}", self.appliance.image_name(&self.version), self.appliance.architecture)
    }
    pub fn iso_file_name(&self) -> String {
        self.appliance.iso_file_name(&self.version)
    }
}

/// The machine-wide cache directory: `$TRUTHDB_CACHE_DIR` or [`DEFAULT_CACHE_DIR`].
pub fn cache_dir() -> PathBuf {
    std::env::var_os("TRUTHDB_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| DEFAULT_CACHE_DIR.into())
}

/// `SOURCE_DATE_EPOCH`: the caller's if set (a rebuilder's), else the last commit's time.
pub fn source_date_epoch(root: &Path) -> Result<u64> {
    source_date_epoch_of(root, &[])
}

/// The git pathspecs of the kernel's inputs: `kernel/` less its documentation, so that a
/// README edit does not rebuild the kernel (18 minutes) with a new timestamp.
pub const KERNEL_INPUTS: [&str; 2] = ["kernel", ":(exclude,glob)kernel/**/*.md"];

/// Like [`source_date_epoch`], but the last commit that touched `paths` (git pathspecs): the
/// kernel's timestamp changes only when its inputs do, so unrelated commits do not rebuild it.
pub fn source_date_epoch_of(root: &Path, paths: &[&str]) -> Result<u64> {
    if let Some(value) = std::env::var_os("SOURCE_DATE_EPOCH") {
        let value = value.to_string_lossy();
        return value.trim().parse().with_context(|| format!("SOURCE_DATE_EPOCH={value:?} is not a number"));
    }
    let out = crate::util::run::Cmd::new("git")
        .args(["-c", "safe.directory=*", "log", "-1", "--format=%ct", "--"])
        .args(paths)
        .dir(root)
        .read()
        .context("reading the last commit's time for SOURCE_DATE_EPOCH (or set SOURCE_DATE_EPOCH)")?;
    let epoch: u64 = out.trim().parse().with_context(|| format!("git printed {out:?} as commit time"))?;
    // FAT (the EFI boot image) cannot store dates before 1980.
    if epoch < 315_532_800 {
        bail!("SOURCE_DATE_EPOCH {epoch} is before 1980, which FAT cannot store");
    }
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit in `repo` at `time` (seconds since the epoch) with `file` written.
    fn commit(repo: &Path, file: &str, time: u64) {
        std::fs::create_dir_all(repo.join(file).parent().unwrap()).unwrap();
        std::fs::write(repo.join(file), time.to_string()).unwrap();
        let git = |args: &[&str]| {
            let date = format!("@{time} +0000");
            crate::util::run::Cmd::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@t", "-c", "safe.directory=*"])
                .args(args)
                .env("GIT_AUTHOR_DATE", &date)
                .env("GIT_COMMITTER_DATE", &date)
                .dir(repo)
                .run()
                .unwrap()
        };
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", file]);
    }

    #[test]
    fn a_readme_edit_keeps_the_kernels_timestamp() {
        if std::env::var_os("SOURCE_DATE_EPOCH").is_some() {
            return; // the caller's timestamp wins, by design
        }
        let repo = tempfile::tempdir().unwrap();
        crate::util::run::Cmd::new("git").args(["init", "-q"]).dir(repo.path()).run().unwrap();
        commit(repo.path(), "kernel/config/10-x.config", 1_700_000_000);
        commit(repo.path(), "kernel/README.md", 1_700_000_100);
        commit(repo.path(), "kernel/patches/README.md", 1_700_000_200);
        assert_eq!(source_date_epoch_of(repo.path(), &KERNEL_INPUTS).unwrap(), 1_700_000_000);
        commit(repo.path(), "kernel/kernel.toml", 1_700_000_300);
        assert_eq!(source_date_epoch_of(repo.path(), &KERNEL_INPUTS).unwrap(), 1_700_000_300);
        assert_eq!(source_date_epoch(repo.path()).unwrap(), 1_700_000_300);
    }
}
