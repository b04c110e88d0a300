//! Stage "installer build": compiles the installer, `truthdb-installer` (the engine's CLI) and
//! `truthdb-installer-gui` (the graphical front end), release builds.
//!
//! For the image ([`build_for_image`]) both are compiled inside the build root, so they link
//! the glibc, libinput, libudev and libxkbcommon of the image's own Debian release whatever the
//! host runs. The compiler is the host's rustup toolchain, bind-mounted (Debian's rustc is
//! older than iced needs; rustup's binaries run on any glibc), and the crates are the host's
//! cargo registry, fetched beforehand, so the root needs no network for it. The lb build stage
//! then runs both binaries inside the finished image.
//!
//! In the builder image (`--container`, see container.rs) there is no rustup toolchain to bind
//! in: the compiler is Debian's own (rustc-web), which links against the builder's libraries.
//! The builder is made of the image's Debian release, so there the installer is compiled in the
//! builder itself, against the same glibc and libraries the build root would have.
//!
//! [`build`] compiles the engine alone for the host: `cargo xtask disk` runs it there.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::stages::build_root::BuildRoot;
use crate::stages::sandbox::RootCommand;
use crate::util::digest::Hasher;
use crate::util::run::Cmd;

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
    hasher.tree("installer-gui", &installer.join("gui/src"))?;
    for file in ["installer/Cargo.toml", "installer/gui/Cargo.toml", "Cargo.lock", "Cargo.toml"] {
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
    let own_exe = std::env::current_exe().ok();
    let target_dir = host_target_dir(std::env::var_os("CARGO_TARGET_DIR"), own_exe.as_deref(), &inputs.workspace);
    host_cargo()
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

/// Where the host's engine is compiled: `$CARGO_TARGET_DIR`, else the target directory of the
/// xtask that runs (a project copy, `repro-check`'s clean clone, `--project`, then shares its
/// compiled dependencies instead of compiling them all again: 1m03s against 12 s here; the
/// engine's own crates compile for each path), else the workspace's `target/`.
fn host_target_dir(cargo_target_dir: Option<std::ffi::OsString>, own_exe: Option<&Path>, workspace: &Path) -> PathBuf {
    if let Some(dir) = cargo_target_dir {
        return PathBuf::from(dir);
    }
    // cargo puts a binary at <target dir>/<profile>/<name> and marks the target dir's top with
    // CACHEDIR.TAG; an xtask installed anywhere else has no target dir to share.
    let own_target = own_exe.and_then(Path::parent).and_then(Path::parent);
    match own_target {
        Some(dir) if dir.join("CACHEDIR.TAG").is_file() => dir.to_path_buf(),
        _ => workspace.join("target"),
    }
}

/// In the builder image: compiled right there with Debian's toolchain, for an image of the
/// builder's own release only (a newer glibc than the image's would not run on it).
fn build_in_builder(
    inputs: &InstallerBuildInputs,
    root: &BuildRoot,
    cache_dir: &Path,
    builder_release: &str,
    image_suite: &str,
) -> Result<ImageInstaller> {
    // With the host's cache shared (`--cache-dir`), the installer the build root compiled from
    // these very sources is there already: the same program for the same release.
    let in_root = cache_dir.join("installer-target").join(&root.key);
    let same_sources = std::fs::read_to_string(in_root.join(BUILT_FROM)).ok() == Some(built_from(inputs)?);
    if let (true, Ok(binaries)) = (same_sources, ImageInstaller::built_in(&in_root)) {
        println!("installer: built in the build root from these sources and this version (cache); nothing compiled");
        return Ok(binaries);
    }
    if builder_release != image_suite {
        bail!(
            "the builder image is Debian {builder_release} but the image is {image_suite} (appliance.toml, \
             field `suite`): the installer would be linked against another release's libraries. Build \
             natively, or give the builder a {image_suite} base"
        );
    }
    let target = cache_dir.join("installer-target").join(format!("builder-{builder_release}"));
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    let cargo_home = cargo_home()?;
    host_cargo()
        .args([
            "build",
            "--release",
            "--locked",
            "--package",
            "truthdb-installer",
            "--package",
            "truthdb-installer-gui",
        ])
        .arg("--target-dir")
        .arg(&target)
        .dir(&inputs.workspace)
        .env("TRUTHDB_VERSION", &inputs.version)
        .env("CARGO_ENCODED_RUSTFLAGS", remap_path_prefixes(&inputs.workspace, &cargo_home))
        .run_logged(&inputs.log, |_| {})
        .with_context(|| format!("building the installer in the builder image (log: {})", inputs.log.display()))?;
    let binaries = ImageInstaller::built_in(&target)?;
    Ok(binaries)
}

/// The installer binaries for the image.
pub struct ImageInstaller {
    pub engine: PathBuf,
    pub gui: PathBuf,
}

impl ImageInstaller {
    /// Both release binaries in cargo's target directory `target`, or which one is missing.
    fn built_in(target: &Path) -> Result<ImageInstaller> {
        let binaries = ImageInstaller {
            engine: target.join("release/truthdb-installer"),
            gui: target.join("release/truthdb-installer-gui"),
        };
        for path in [&binaries.engine, &binaries.gui] {
            if !path.is_file() {
                bail!("cargo built no {}", path.display());
            }
        }
        Ok(binaries)
    }
}

/// The cargo that runs xtask (`cargo run` names it in $CARGO), with its toolchain's settings
/// (sudo may have kept these for us).
pub(crate) fn host_cargo() -> Cmd {
    toolchain_command(std::env::var_os("CARGO").map(PathBuf::from).unwrap_or_else(|| "cargo".into()))
}

/// The rustc next to that cargo.
fn host_rustc() -> Cmd {
    let next_to_cargo = std::env::var_os("CARGO").map(|c| PathBuf::from(c).with_file_name("rustc"));
    toolchain_command(next_to_cargo.filter(|p| p.is_file()).unwrap_or_else(|| "rustc".into()))
}

fn toolchain_command(program: PathBuf) -> Cmd {
    let mut cmd = Cmd::new(program);
    for key in ["CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(value) = std::env::var_os(key) {
            cmd = cmd.env(key, value);
        }
    }
    cmd
}

/// Cargo's home (its registry of downloaded crates): `CARGO_HOME`, else `~/.cargo`.
fn cargo_home() -> Result<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set: where is cargo's registry?")
}

/// Set in the builder image to the Debian release it is made of (xtask/container/Containerfile).
pub const BUILDER_ENV: &str = "TRUTHDB_OS_BUILDER";

/// Where [`build_for_image`] compiles, for the progress line.
pub fn compiled_in() -> &'static str {
    if std::env::var_os(BUILDER_ENV).is_some() { "the builder image" } else { "the build root" }
}

/// Builds both installer binaries inside `root`, or in the builder image when xtask runs there
/// (see the module comment). Cargo's target directory is kept in `cache_dir`, per build root,
/// so unchanged sources compile nothing.
pub fn build_for_image(
    inputs: &InstallerBuildInputs,
    root: &BuildRoot,
    cache_dir: &Path,
    image_suite: &str,
) -> Result<ImageInstaller> {
    if let Some(dir) = inputs.log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(release) = std::env::var_os(BUILDER_ENV) {
        return build_in_builder(inputs, root, cache_dir, &release.to_string_lossy(), image_suite);
    }
    let sysroot = host_rustc()
        .args(["--print", "sysroot"])
        .dir(&inputs.workspace)
        .read()
        .context("asking rustc for its toolchain (is rustup's Rust installed?)")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let cargo_home = cargo_home()?;
    // Network only here, on the host: the build in the root is --offline.
    host_cargo()
        .args(["fetch", "--locked"])
        .dir(&inputs.workspace)
        .env("CARGO_HOME", &cargo_home)
        .run_logged(&inputs.log, |_| {})
        .with_context(|| format!("cargo fetch (log: {})", inputs.log.display()))?;
    let target = cache_dir.join("installer-target").join(&root.key);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    RootCommand::new(
        &root.path,
        &[
            "/opt/rust/bin/cargo",
            "build",
            "--release",
            "--locked",
            "--offline",
            "--package",
            "truthdb-installer",
            "--package",
            "truthdb-installer-gui",
            "--target-dir",
            "/target",
        ],
    )
    .bind(&sysroot, "/opt/rust")
    .bind(&cargo_home, "/opt/cargo-home")
    .bind(&inputs.workspace, "/src")
    .bind(&target, "/target")
    .workdir("/src")
    .env("CARGO_HOME", "/opt/cargo-home")
    .env("RUSTC", "/opt/rust/bin/rustc")
    // Build scripts run `rustc` by name (libudev-sys probes a function with it).
    .env("PATH", format!("/opt/rust/bin:{}", crate::stages::sandbox::ROOT_PATH))
    .env("TRUTHDB_VERSION", inputs.version.clone())
    .to_cmd()?
    .run_logged(&inputs.log, |_| {})
    .with_context(|| format!("building the installer in the build root (log: {})", inputs.log.display()))?;
    let binaries = ImageInstaller::built_in(&target)?;
    let stamp = built_from(inputs)?;
    std::fs::write(target.join(BUILT_FROM), stamp)
        .with_context(|| format!("writing {}", target.join(BUILT_FROM).display()))?;
    Ok(binaries)
}

/// rustc flags that write the paths the build root's compile uses (`/src`, `/opt/cargo-home`)
/// into the binaries (panic messages, debug info) instead of where this checkout and cargo's
/// registry happen to be, so the binaries do not depend on them. Encoded for
/// `CARGO_ENCODED_RUSTFLAGS` (0x1f between flags), so a path may hold spaces.
pub fn remap_path_prefixes(workspace: &Path, cargo_home: &Path) -> String {
    [(workspace, "/src"), (cargo_home, "/opt/cargo-home")]
        .iter()
        .map(|(from, to)| format!("--remap-path-prefix={}={to}", from.display()))
        .collect::<Vec<_>>()
        .join("\u{1f}")
}

/// Beside a build root's installer target: what its release binaries were built from (the
/// sources' digest and the version), so the builder image can take them as they are.
const BUILT_FROM: &str = "built-from";

fn built_from(inputs: &InstallerBuildInputs) -> Result<String> {
    Ok(format!("sources {}\nversion {}\n", source_digest(&inputs.workspace)?, inputs.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_engine_is_compiled_in_the_running_xtask_s_target_dir() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("main/target");
        std::fs::create_dir_all(target.join("debug")).unwrap();
        std::fs::write(target.join("CACHEDIR.TAG"), "Signature: 8a477f597d28d172789f06886806bc55\n").unwrap();
        let exe = target.join("debug/xtask");
        let copy = dir.path().join("copy");
        assert_eq!(host_target_dir(None, Some(&exe), &copy), target);
        // CARGO_TARGET_DIR wins; an xtask outside a cargo target dir falls back to the project's.
        assert_eq!(host_target_dir(Some("/t".into()), Some(&exe), &copy), PathBuf::from("/t"));
        assert_eq!(host_target_dir(None, Some(&dir.path().join("bin/xtask")), &copy), copy.join("target"));
        assert_eq!(host_target_dir(None, None, &copy), copy.join("target"));
    }

    #[test]
    fn the_builder_s_paths_are_remapped_to_the_build_root_s() {
        let flags = remap_path_prefixes(Path::new("/home/me/my work/truthdb-os"), Path::new("/root/.cargo"));
        let flags: Vec<&str> = flags.split('\u{1f}').collect();
        assert_eq!(
            flags,
            [
                "--remap-path-prefix=/home/me/my work/truthdb-os=/src",
                "--remap-path-prefix=/root/.cargo=/opt/cargo-home"
            ]
        );
    }
}
