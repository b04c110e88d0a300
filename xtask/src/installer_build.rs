//! Stage "installer build": compiles `truthdb-installer` (release) for the image.
//!
//! The binary is built on the host with the workspace's toolchain and links the host's glibc.
//! That is safe because a Debian/Ubuntu host the pipeline supports has a glibc no newer than
//! the image's (bookworm 2.36, trixie 2.41); the lb build stage proves it by running the
//! binary inside the finished image's root (`truthdb-installer --version`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::digest::Hasher;
use crate::run::Cmd;

pub struct InstallerBuildInputs {
    /// The workspace holding `installer/` and `Cargo.lock`.
    pub workspace: PathBuf,
    /// The version the installer reports (the image's, with any pre-release suffix).
    pub version: String,
    pub log: PathBuf,
}

impl InstallerBuildInputs {
    /// The project's installer, built as the project's version, logged with the other logs.
    pub fn of(project: &crate::project::Project) -> InstallerBuildInputs {
        InstallerBuildInputs {
            workspace: project.root.clone(),
            version: project.version.clone(),
            log: project.logs_dir().join("installer-build.log"),
        }
    }
}

pub struct InstallerBinary {
    pub path: PathBuf,
}

/// The installer's sources, for the image's inputs digest (no build needed to compute it).
pub fn source_digest(workspace: &Path) -> Result<String> {
    let installer = workspace.join("installer");
    if !installer.join("Cargo.toml").is_file() {
        bail!("the installer's sources are missing: no {}", installer.join("Cargo.toml").display());
    }
    let mut hasher = Hasher::new();
    hasher.tree("installer", &installer.join("src"))?;
    for file in ["installer/Cargo.toml", "Cargo.lock", "Cargo.toml"] {
        let path = workspace.join(file);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.field(file, text);
    }
    Ok(hasher.hex())
}

pub fn build(inputs: &InstallerBuildInputs) -> Result<InstallerBinary> {
    if let Some(dir) = inputs.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| inputs.workspace.join("target"));
    // The cargo that runs xtask, with its toolchain (sudo may have kept these for us).
    let mut cargo = Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for key in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(value) = std::env::var_os(key) {
            cargo = cargo.env(key, value);
        }
    }
    cargo
        .args(["build", "--release", "--locked", "--package", "truthdb-installer", "--target-dir"])
        .arg(&target_dir)
        .dir(&inputs.workspace)
        .env("TRUTHDB_VERSION", &inputs.version)
        .run_logged(&inputs.log, |_| {})
        .with_context(|| format!("building truthdb-installer (log: {})", inputs.log.display()))?;
    let path = target_dir.join("release/truthdb-installer");
    if !path.is_file() {
        bail!("cargo built no {}", path.display());
    }
    Ok(InstallerBinary { path })
}
