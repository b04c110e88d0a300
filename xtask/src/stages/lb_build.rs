//! Stage "lb build": runs live-build on a rendered configuration inside a build root.
//!
//! The build directory (`target/truthdb-os/build/`) keeps live-build's package cache between
//! runs (`cache/`); everything else in it is recreated from the rendered config each time, so
//! no state from an earlier, perhaps failed, build leaks into this one. The directory is bind
//! mounted at `/build` in the build root's private namespace (see [`crate::stages::sandbox`]).
//!
//! `lb build` runs as its stages and helpers in live-build's own order, split in two where the
//! package set is complete: the chroot at that point is cached by its inputs
//! ([`crate::stages::chroot_cache`]), so a change to the overlay, a hook or the installer re-runs only
//! the customisation and the binary stage.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::package_lock::PackageLock;
use crate::stages::build_root::BuildRoot;
use crate::stages::chroot_cache::{self, ChrootCache, PackagesKey, Restored};
use crate::stages::installer_build::ImageInstaller;
use crate::stages::kernel::KernelPackage;
use crate::stages::render::LiveBuildTree;
use crate::stages::sandbox::RootCommand;
use crate::util::fsx;

pub struct LbBuildInputs<'a> {
    pub root: &'a BuildRoot,
    pub tree: &'a LiveBuildTree,
    /// Host directory for live-build's work tree and package cache.
    pub build_dir: PathBuf,
    /// `<image_name>-<arch>`: live-build's output files start with this.
    pub image_stem: String,
    pub source_date_epoch: u64,
    pub log: PathBuf,
    /// The kernel package to install instead of Debian's (`linux-image-<release>_*.deb`);
    /// the image's `/live/vmlinuz` and initrd must be its release's.
    pub kernel: &'a KernelPackage,
    /// The payload's own .deb files, installed like the kernel.
    pub payload_debs: Vec<PathBuf>,
    /// The installer binaries, installed as `/usr/bin/truthdb-installer` and
    /// `/usr/bin/truthdb-installer-gui`.
    pub installer: &'a ImageInstaller,
    /// The version the installer must report when run inside the image.
    pub version: String,
    /// The live system's squashfs compression.
    pub compression: Compression,
    /// Where cached chroots are kept (`None`: always build the chroot, keep nothing).
    pub chroot_cache: Option<ChrootCache>,
    /// Build the chroot even when the cache has one for these inputs (and replace it).
    pub fresh_chroot: bool,
    /// The apt proxy every download goes through (`http_proxy` for live-build).
    pub apt_proxy: String,
    /// A locked build's lock: a cached chroot is used only if its packages are the lock's.
    pub lock: Option<&'a PackageLock>,
    /// Start without live-build's own caches (`cache/`: its .debs and its bootstrap stage),
    /// so that every file the build needs is fetched, and so recorded: `cargo xtask lock`.
    pub without_live_build_cache: bool,
}

/// The squashfs compression of the live system (`lb config --chroot-squashfs-compression-*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// xz, live-build's default: the smallest image. Release builds use it.
    #[default]
    Xz,
    /// zstd at level 3: much faster to build and to read at boot, a somewhat bigger image.
    /// For development builds.
    Zstd,
    /// lz4: the fastest to build, the biggest image. For development builds.
    Lz4,
}

impl Compression {
    /// How the build info and the progress name it.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd-3",
            Compression::Lz4 => "lz4",
        }
    }

    /// The compression a build info names (see [`Compression::name`]).
    pub fn from_name(name: &str) -> Option<Compression> {
        [Compression::Xz, Compression::Zstd, Compression::Lz4].into_iter().find(|c| c.name() == name)
    }

    /// How `iso --compression` spells it.
    pub fn arg(self) -> &'static str {
        match self {
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    fn lb_config_args(self) -> Vec<&'static str> {
        match self {
            // live-build's default; passing nothing keeps `lb config` exactly as rendered.
            Compression::Xz => vec![],
            Compression::Zstd => {
                vec!["--chroot-squashfs-compression-type", "zstd", "--chroot-squashfs-compression-level", "3"]
            }
            Compression::Lz4 => vec!["--chroot-squashfs-compression-type", "lz4"],
        }
    }
}

/// How the chroot with its packages was had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChrootSource {
    /// Restored from the cache.
    Cached,
    /// Built; the reason it was not in the cache.
    Built(String),
}

/// What live-build produced.
#[derive(Clone, Debug)]
pub struct BuiltImage {
    pub iso: PathBuf,
    /// live-build's list of the packages installed in the image (`dpkg -l` style).
    pub installed_packages: PathBuf,
    pub chroot: ChrootSource,
    /// The finished chroot, as it went into the squashfs (the SBOM reads its package database).
    pub chroot_dir: PathBuf,
    /// The payload's own .deb files that were installed.
    pub payload_debs: Vec<PathBuf>,
    /// The key of the chroot's packages (see [`crate::stages::chroot_cache`]).
    pub packages_key: String,
}

/// live-build's top-level stages, in order.
const STAGES: [&str; 5] = ["bootstrap", "chroot", "installer", "binary", "source"];

/// Where live-build is, read from its log lines: it logs every helper it starts as
/// `[date] lb <helper> [args]`. Returns (stage, helper); the helper is `None` for a stage's
/// own line.
pub fn phase_of(line: &str) -> Option<(&str, Option<&str>)> {
    let helper = line.strip_prefix('[')?.split("] lb ").nth(1)?.split_whitespace().next()?;
    if STAGES.contains(&helper) {
        return Some((helper, None));
    }
    let stage = STAGES.iter().find(|s| helper.strip_prefix(**s).is_some_and(|rest| rest.starts_with('_')))?;
    Some((stage, Some(helper)))
}

/// Runs `lb config` and `lb build`. `on_progress(stage, helper)` follows live-build's stages.
pub fn build(inputs: &LbBuildInputs, on_progress: &mut dyn FnMut(&str, Option<&str>)) -> Result<BuiltImage> {
    if inputs.without_live_build_cache {
        fsx::remove_if_present(&inputs.build_dir.join("cache"))?;
    }
    prepare_build_dir(&inputs.build_dir, &inputs.tree.dir)?;
    // live-build installs every .deb in config/packages.chroot/ from a local repository; only
    // the image package goes there (no headers, -dbg or libc-dev).
    let local_debs = inputs.build_dir.join("config/packages.chroot");
    fsx::refuse_symlinks_on_path(&inputs.build_dir, &local_debs)?;
    fs::create_dir_all(&local_debs)?;
    for deb in std::iter::once(&inputs.kernel.deb).chain(&inputs.payload_debs) {
        let deb_name = deb.file_name().context("package has no file name")?;
        fsx::refuse_symlinks_on_path(&inputs.build_dir, &local_debs.join(deb_name))?;
        fs::copy(deb, local_debs.join(deb_name))
            .with_context(|| format!("copying {} into config/packages.chroot", deb.display()))?;
    }
    let bin = inputs.build_dir.join("config/includes.chroot/usr/bin");
    fsx::refuse_symlinks_on_path(&inputs.build_dir, &bin)?;
    fs::create_dir_all(&bin)?;
    for (binary, name) in
        [(&inputs.installer.engine, "truthdb-installer"), (&inputs.installer.gui, "truthdb-installer-gui")]
    {
        // The overlay may hold symlinks (kept as links): never copy through one onto the host.
        fsx::refuse_symlinks_on_path(&inputs.build_dir, &bin.join(name))?;
        fs::copy(binary, bin.join(name))
            .with_context(|| format!("copying {} into config/includes.chroot", binary.display()))?;
        fsx::set_mode(&bin.join(name), 0o755)?;
    }
    let packages_key = PackagesKey::of(&inputs.build_dir, &inputs.root.key)?;
    let epoch = inputs.source_date_epoch.to_string();
    let lb = |argv: &[&str]| {
        RootCommand::new(&inputs.root.path, argv)
            .bind(&inputs.build_dir, "/build")
            .workdir("/build")
            .env("SOURCE_DATE_EPOCH", epoch.clone())
            .env("http_proxy", inputs.apt_proxy.clone())
            .to_cmd()
    };
    // Helpers of one stage run inside another (binary installs tools with chroot_* helpers),
    // so the stage is taken from the stage lines, except that the split scripts run lb
    // chroot's helpers without its stage line: its first helper starts it.
    let mut stage = String::new();
    let mut on_line = |line: &str| match phase_of(line) {
        Some((new_stage, None)) => {
            stage = new_stage.to_owned();
            on_progress(&stage, None);
        }
        Some((helper_stage, Some(helper))) => {
            if helper_stage == "chroot" && (stage.is_empty() || stage == "bootstrap") {
                stage = "chroot".to_owned();
                on_progress(&stage, None);
            }
            if !stage.is_empty() {
                on_progress(&stage, Some(helper));
            }
        }
        None => {}
    };
    let mut config = vec!["lb", "config"];
    config.extend(inputs.compression.lb_config_args());
    lb(&config)?.run_logged(&inputs.log, &mut on_line).context("lb config failed")?;

    let restored = match &inputs.chroot_cache {
        Some(_) if inputs.fresh_chroot => Restored::Miss("--fresh-chroot".to_owned()),
        Some(cache) => {
            let local = local_package_names(&local_debs)?;
            cache.restore(&packages_key, &inputs.build_dir, &|chroot| match inputs.lock {
                Some(lock) => chroot_differs_from_lock(chroot, lock, &local),
                None => Ok(None),
            })?
        }
        None => Restored::Miss("the chroot cache is off".to_owned()),
    };
    let chroot = match restored {
        Restored::Hit => ChrootSource::Cached,
        Restored::Miss(why) => {
            lb(&["sh", "-c", chroot_cache::PACKAGES_SCRIPT])?
                .run_logged(&inputs.log, &mut on_line)
                .context("lb build failed while installing the packages")?;
            if let Some(cache) = &inputs.chroot_cache {
                cache.save(&packages_key, &inputs.build_dir).context("saving the chroot to the cache")?;
            }
            ChrootSource::Built(why)
        }
    };
    lb(&["sh", "-c", chroot_cache::CUSTOMISE_SCRIPT])?
        .run_logged(&inputs.log, &mut on_line)
        .context("lb build failed")?;

    let iso = inputs.build_dir.join(format!("{}.hybrid.iso", inputs.image_stem));
    let installed_packages = inputs.build_dir.join(format!("{}.packages", inputs.image_stem));
    for (what, path) in [("ISO", &iso), ("package manifest", &installed_packages)] {
        if !path.is_file() {
            bail!("lb build finished but produced no {what} at {} (see {})", path.display(), inputs.log.display());
        }
    }
    check_boot_files(&inputs.build_dir.join("binary/live"), &inputs.kernel.release)?;
    // Prove the installer runs on the image's own libraries (and that the image has them all:
    // libinput, libudev, libxkbcommon for the GUI).
    for name in ["truthdb-installer", "truthdb-installer-gui"] {
        let said = lb(&["chroot", "/build/chroot", &format!("/usr/bin/{name}"), "--version"])?
            .read()
            .with_context(|| format!("{name} does not run inside the image (a library missing from packages.list?)"))?;
        if said.trim() != format!("{name} {}", inputs.version) {
            bail!("{name} in the image reports {:?}, expected version {}", said.trim(), inputs.version);
        }
    }
    Ok(BuiltImage {
        iso,
        installed_packages,
        chroot,
        chroot_dir: inputs.build_dir.join("chroot"),
        payload_debs: inputs.payload_debs.clone(),
        packages_key: packages_key.hex,
    })
}

/// The names of the packages in `config/packages.chroot/` (ours, not the archive's).
fn local_package_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(package) = name.strip_suffix(".deb").and_then(|n| n.split('_').next()) {
            names.push(package.to_owned());
        }
    }
    Ok(names)
}

/// Why a cached chroot is not the one a locked build would make, if it is not: a package
/// dpkg has installed in it that the lock has at another version or not at all (the packages
/// in `local` are ours, installed from `config/packages.chroot/`).
pub fn chroot_differs_from_lock(chroot: &Path, lock: &PackageLock, local: &[String]) -> Result<Option<String>> {
    let status_path = chroot.join("var/lib/dpkg/status");
    let status = fs::read_to_string(&status_path).with_context(|| format!("reading {}", status_path.display()))?;
    let differ = PackageLock::differences(&status, &lock.versions(), local);
    Ok(describe_differences("the cached chroot's packages are not packages.lock's", &differ))
}

/// `what (N differ: the first three, ...)`, or nothing when nothing differs.
pub fn describe_differences(what: &str, differ: &[String]) -> Option<String> {
    if differ.is_empty() {
        return None;
    }
    let shown: Vec<&str> = differ.iter().take(3).map(String::as_str).collect();
    Some(format!(
        "{what} ({} differ: {}{})",
        differ.len(),
        shown.join(", "),
        if differ.len() > shown.len() { ", ..." } else { "" }
    ))
}

/// live-build only warns when the initrd is missing; an image without one cannot boot. Also
/// proves the kernel in `/live` is ours: live-build copies it from `chroot/boot/`, where the
/// package we installed put `vmlinuz-<release>`.
fn check_boot_files(live: &Path, release: &str) -> Result<()> {
    let names: Vec<String> = fs::read_dir(live)
        .with_context(|| format!("reading {}", live.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
    if !has("vmlinuz") {
        bail!("the image has no kernel in live/ (found: {})", names.join(", "));
    }
    if !has("initrd.img") {
        bail!("the image has no initrd in live/ for kernel {release} (found: {})", names.join(", "));
    }
    let foreign: Vec<&String> = names.iter().filter(|n| n.starts_with("vmlinuz-") && !n.ends_with(release)).collect();
    if !foreign.is_empty() {
        bail!("live/ holds a kernel other than {release}: {foreign:?}");
    }
    Ok(())
}

/// Empties the build directory except live-build's package cache, then puts the rendered
/// configuration in.
pub(crate) fn prepare_build_dir(build_dir: &Path, config_dir: &Path) -> Result<()> {
    fs::create_dir_all(build_dir).with_context(|| format!("creating {}", build_dir.display()))?;
    let mounted = fsx::mounts_under(build_dir)?;
    if !mounted.is_empty() {
        bail!("{} has mounts below it ({}); unmount them first", build_dir.display(), mounted.join(", "));
    }
    for entry in fs::read_dir(build_dir)? {
        let entry = entry?;
        if entry.file_name() != "cache" {
            fsx::remove_if_present(&entry.path())?;
        }
    }
    fsx::copy_tree(config_dir, build_dir, &["cache"]).context("copying the rendered config into the build directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_read_from_live_build_log_lines() {
        assert_eq!(phase_of("[2026-11-22 07:00:00] lb chroot "), Some(("chroot", None)));
        assert_eq!(
            phase_of("[2026-11-22 07:00:01] lb bootstrap_debootstrap "),
            Some(("bootstrap", Some("bootstrap_debootstrap")))
        );
        assert_eq!(
            phase_of("[2026-11-22 07:01:00] lb chroot_install-packages install"),
            Some(("chroot", Some("chroot_install-packages")))
        );
        assert_eq!(phase_of("[2026-11-22 07:09:00] lb binary_iso"), Some(("binary", Some("binary_iso"))));
        assert_eq!(phase_of("[2026-11-22 07:09:00] lb config noauto"), None);
        assert_eq!(phase_of("P: Begin installing packages..."), None);
    }

    #[test]
    fn boot_files_must_include_an_initrd_and_only_our_kernel() {
        let live = tempfile::tempdir().unwrap();
        fs::write(live.path().join("vmlinuz"), "k").unwrap();
        let msg = format!("{:#}", check_boot_files(live.path(), "6.12.117-truthdb").unwrap_err());
        assert!(msg.contains("no initrd"), "{msg}");
        fs::write(live.path().join("initrd.img"), "i").unwrap();
        check_boot_files(live.path(), "6.12.117-truthdb").unwrap();
        fs::write(live.path().join("vmlinuz-6.12.117+deb13-amd64"), "k").unwrap();
        assert!(check_boot_files(live.path(), "6.12.117-truthdb").is_err());
    }

    #[test]
    fn build_dir_keeps_only_the_package_cache() {
        let build = tempfile::tempdir().unwrap();
        let config = tempfile::tempdir().unwrap();
        fs::create_dir_all(build.path().join("cache/packages.chroot")).unwrap();
        fs::write(build.path().join("cache/packages.chroot/a.deb"), "deb").unwrap();
        fs::create_dir_all(build.path().join("chroot/etc")).unwrap();
        fs::write(build.path().join("old.hybrid.iso"), "iso").unwrap();
        fs::create_dir_all(config.path().join("auto")).unwrap();
        fs::write(config.path().join("auto/config"), "#!/bin/sh\n").unwrap();

        prepare_build_dir(build.path(), config.path()).unwrap();
        assert!(build.path().join("cache/packages.chroot/a.deb").exists());
        assert!(!build.path().join("chroot").exists());
        assert!(!build.path().join("old.hybrid.iso").exists());
        assert!(build.path().join("auto/config").exists());
    }
}
