//! Stage "kernel": the appliance's own Linux kernel, built from what `kernel/` pins, as a
//! Debian package.
//!
//! source (Debian's linux-source package or a checked tarball) -> patches -> base defconfig +
//! fragments -> `olddefconfig` -> check that every requested option survived -> `make
//! bindeb-pkg` inside the build root -> cache. The cache entry is named by a digest of all of
//! that (and of the build root), so a second run with nothing changed compiles nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::kernel_pin::{KernelPin, KernelSource};
use crate::stages::build_root::BuildRoot;
use crate::stages::sandbox::RootCommand;
use crate::util::digest::Hasher;
use crate::util::fsx;
use crate::util::run::Cmd;

/// Bump when the way a kernel is built changes (not its inputs).
const RECIPE_VERSION: &str = "1";

/// One option a fragment asks for, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestedOption {
    pub name: String,
    /// `y`, `m`, `n` (from `# CONFIG_X is not set`), a number or a quoted string.
    pub value: String,
    pub fragment: PathBuf,
    pub line: usize,
}

/// Parses a Kconfig fragment.
pub fn parse_fragment(path: &Path, text: &str) -> Result<Vec<RequestedOption>> {
    let mut options = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = |name: &str, value: &str| RequestedOption {
            name: name.to_owned(),
            value: value.to_owned(),
            fragment: path.to_owned(),
            line: index + 1,
        };
        if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            if !name.starts_with("CONFIG_") {
                bail!("{}:{}: {line:?} is not a CONFIG_ option", path.display(), index + 1);
            }
            options.push(at(name, "n"));
        } else if line.is_empty() || line.starts_with('#') {
            continue;
        } else if let Some((name, value)) = line.split_once('=')
            && name.starts_with("CONFIG_")
            && !value.is_empty()
        {
            options.push(at(name, value));
        } else {
            bail!("{}:{}: {line:?} is not `CONFIG_X=value` or `# CONFIG_X is not set`", path.display(), index + 1);
        }
    }
    Ok(options)
}

/// The values of a final `.config`; options not set are absent.
fn parse_dot_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(name, _)| name.starts_with("CONFIG_"))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// Every option a fragment requested must have that value in the final `.config`; Kconfig
/// silently drops what a dependency forbids. Fails listing each dropped option and its file.
pub fn check_config(final_config: &str, requested: &[RequestedOption]) -> Result<()> {
    let actual = parse_dot_config(final_config);
    let mut dropped = Vec::new();
    for option in requested {
        let got = actual.get(&option.name).map(String::as_str).unwrap_or("n");
        if got != option.value {
            let shown = if got == "n" { "not set".to_owned() } else { format!("={got}") };
            dropped.push(format!(
                "  {}={} requested by {}:{}, but the final .config has it {shown}",
                option.name,
                option.value,
                option.fragment.display(),
                option.line
            ));
        }
    }
    if !dropped.is_empty() {
        bail!(
            "{} requested kernel option(s) did not survive olddefconfig (missing dependency?):\n{}",
            dropped.len(),
            dropped.join("\n")
        );
    }
    Ok(())
}

/// Options README's support list names that come from the pinned kernel's x86_64 defconfig,
/// not from a fragment (so `check_config` does not see them): checked after every build, so a
/// new kernel pin whose defaults drop one stops the build.
pub const SUPPORT_LIST_FROM_DEFCONFIG: [&str; 4] = ["CONFIG_TIGON3", "CONFIG_R8169", "CONFIG_FORCEDETH", "CONFIG_SKY2"];

/// Kernel options something needs built in (`needed_by`: the payload's `payload.kernel_config`,
/// e.g. TruthDB's io_uring, or the support list): each must be `=y` in the kernel's final
/// `.config` (`config`), or the build stops before an image is made with a kernel that lacks it.
pub fn check_built_in(config: &Path, options: &[String], needed_by: &str) -> Result<()> {
    if options.is_empty() {
        return Ok(());
    }
    let text =
        fs::read_to_string(config).with_context(|| format!("reading the kernel's config {}", config.display()))?;
    let actual = parse_dot_config(&text);
    let missing: Vec<String> = options
        .iter()
        .filter(|o| actual.get(o.as_str()).map(String::as_str) != Some("y"))
        .map(|o| format!("{o} is {}", actual.get(o.as_str()).map_or("not set".to_owned(), |v| format!("={v}"))))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{needed_by} needs kernel options the kernel was built without ({}): {}; add them `=y` to a fragment in \
             kernel/config/",
            config.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// The fragments (`kernel/config/*.config`) and patches (`kernel/patches/*.patch`), sorted.
pub fn list_files(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == extension));
    files.sort();
    Ok(files)
}

/// Where the stage's inputs and outputs are.
pub struct KernelInputs<'a> {
    pub pin: &'a KernelPin,
    /// `kernel/` (fragments in `config/`, patches in `patches/`).
    pub kernel_dir: PathBuf,
    pub root: &'a BuildRoot,
    pub cache_dir: PathBuf,
    /// Scratch space for the source tree and the build.
    pub work_dir: PathBuf,
    /// KBUILD_BUILD_TIMESTAMP comes from this.
    pub source_date_epoch: u64,
    pub log: PathBuf,
}

/// A built kernel package.
#[derive(Clone, Debug)]
pub struct KernelPackage {
    /// `linux-image-<release>_<version>_amd64.deb`.
    pub deb: PathBuf,
    pub release: String,
    /// The final `.config`, kept for inspection.
    pub config: PathBuf,
    pub key: String,
    /// True when it came from the cache (nothing compiled).
    pub cached: bool,
}

impl KernelInputs<'_> {
    /// The cache key: every input of the build.
    pub fn key(&self) -> Result<String> {
        let mut h = Hasher::new();
        h.field("recipe", RECIPE_VERSION)
            .field("pin", format!("{:?}", self.pin))
            .field("build-root", &self.root.key)
            .field("epoch", self.source_date_epoch.to_string());
        for (label, ext, sub) in [("fragment", "config", "config"), ("patch", "patch", "patches")] {
            for file in list_files(&self.kernel_dir.join(sub), ext)? {
                h.field(label, file.file_name().unwrap_or_default().as_encoded_bytes());
                h.field("content", fs::read(&file).with_context(|| format!("reading {}", file.display()))?);
            }
        }
        Ok(h.hex()[..16].to_owned())
    }

    fn cache_entry(&self, key: &str) -> PathBuf {
        self.cache_dir.join("kernels").join(format!("{}-{key}", self.pin.release()))
    }
}

/// Returns the cached package when the inputs are unchanged.
pub fn cached(inputs: &KernelInputs) -> Result<Option<KernelPackage>> {
    let key = inputs.key()?;
    let entry = inputs.cache_entry(&key);
    Ok(find_package(&entry, &inputs.pin.release()).map(|deb| KernelPackage {
        deb,
        release: inputs.pin.release(),
        config: entry.join("config"),
        key,
        cached: true,
    }))
}

fn find_package(dir: &Path, release: &str) -> Option<PathBuf> {
    let prefix = format!("linux-image-{release}_");
    fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name.starts_with(&prefix) && name.ends_with("_amd64.deb")
    })
}

/// Builds (or finds in the cache) the kernel package.
pub fn build(inputs: &KernelInputs, on_step: &mut dyn FnMut(&str)) -> Result<KernelPackage> {
    // Another run may be compiling this very kernel: wait for it, then find it cached.
    let _lock = crate::util::lock::cache_entry(&inputs.cache_entry(&inputs.key()?))?;
    let package = match cached(inputs)? {
        Some(package) => package,
        None => compile(inputs, on_step)?,
    };
    // Kernels of other inputs are kept while in use.
    let entry = package.deb.parent().context("kernel package has no directory")?;
    fsx::touch_and_prune(entry, UNUSED_KERNEL_LIFETIME)?;
    Ok(package)
}

/// How long a kernel package no build has used stays in the cache.
const UNUSED_KERNEL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn compile(inputs: &KernelInputs, on_step: &mut dyn FnMut(&str)) -> Result<KernelPackage> {
    let key = inputs.key()?;
    let release = inputs.pin.release();
    let work = &inputs.work_dir;
    fsx::remove_if_present(work)?;
    fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;

    on_step("fetching source");
    let tarball = fetch_source(inputs)?;
    on_step("unpacking source");
    let src = work.join("src");
    fs::create_dir_all(&src)?;
    Cmd::new("tar")
        .arg("-xf")
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("--strip-components=1")
        .run_logged(&inputs.log, |_| {})?;
    fs::remove_file(&tarball)?;

    let patches = list_files(&inputs.kernel_dir.join("patches"), "patch")?;
    for (i, patch) in patches.iter().enumerate() {
        on_step(&format!("patch {}/{}", i + 1, patches.len()));
        apply_patch(&src, patch, &inputs.log)?;
    }

    on_step("configuring");
    let fragments = list_files(&inputs.kernel_dir.join("config"), "config")?;
    let mut requested = Vec::new();
    let fragment_dir = work.join("fragments");
    fs::create_dir_all(&fragment_dir)?;
    for fragment in &fragments {
        let text = fs::read_to_string(fragment).with_context(|| format!("reading {}", fragment.display()))?;
        requested.extend(parse_fragment(fragment, &text)?);
        fs::copy(fragment, fragment_dir.join(fragment.file_name().unwrap()))?;
    }
    let epoch = inputs.source_date_epoch;
    let timestamp = Cmd::new("date").args(["-u", "-R", "-d"]).arg(format!("@{epoch}")).read()?.trim().to_owned();
    let package_version = format!("{}-1", inputs.pin.upstream_version());
    let jobs = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).to_string();
    let in_root = |argv: &[&str]| {
        RootCommand::new(&inputs.root.path, argv)
            .bind(work, "/kernel")
            .workdir("/kernel/src")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("KBUILD_BUILD_TIMESTAMP", timestamp.clone())
            .env("KBUILD_BUILD_USER", "truthdb")
            .env("KBUILD_BUILD_HOST", "truthdb-os")
            .env("KDEB_PKGVERSION", package_version.clone())
            .env("KDEB_CHANGELOG_DIST", "truthdb")
            .env("LOCALVERSION", inputs.pin.build.local_version.clone())
            .to_cmd()
    };
    let mut merge = vec!["scripts/kconfig/merge_config.sh".to_owned(), "-m".into(), ".config".into()];
    merge.extend(fragments.iter().map(|f| format!("/kernel/fragments/{}", f.file_name().unwrap().to_string_lossy())));
    let merge: Vec<&str> = merge.iter().map(String::as_str).collect();
    in_root(&["make", &inputs.pin.build.base_config])?.run_logged(&inputs.log, |_| {})?;
    in_root(&merge)?.run_logged(&inputs.log, |_| {}).context("merging the config fragments")?;
    in_root(&["make", "olddefconfig"])?.run_logged(&inputs.log, |_| {})?;
    let final_config = fs::read_to_string(src.join(".config")).context("reading the final .config")?;
    check_config(&final_config, &requested)?;
    let actual_release = in_root(&["make", "-s", "kernelrelease"])?.read()?.trim().to_owned();
    if actual_release != release {
        bail!("the source builds release {actual_release:?}, but kernel/kernel.toml implies {release:?}");
    }

    on_step(&format!("make bindeb-pkg -j{jobs} (log: {})", inputs.log.display()));
    in_root(&[
        "make",
        &format!("-j{jobs}"),
        "bindeb-pkg",
        // -d: the build root has the real build dependencies but not debhelper, which only
        // the source package declares. Only the image package is used; the profiles skip the
        // headers and debug packages, which would cost minutes.
        "DPKG_FLAGS=-d -Ppkg.linux-upstream.nokernelheaders,pkg.linux-upstream.nokerneldbg",
    ])?
    .run_logged(&inputs.log, |_| {})
    .context("make bindeb-pkg failed")?;
    let deb = find_package(work, &release)
        .with_context(|| format!("make bindeb-pkg made no linux-image-{release}_*_amd64.deb in {}", work.display()))?;

    // Cache: only the image package (no -dbg, headers or libc-dev) and the config, renamed
    // into place when complete.
    let entry = inputs.cache_entry(&key);
    let parent = entry.parent().expect("cache entry has a parent");
    fs::create_dir_all(parent)?;
    let partial = parent.join(format!(".partial-{key}-{}", std::process::id()));
    fsx::remove_if_present(&partial)?;
    fs::create_dir_all(&partial)?;
    fs::copy(&deb, partial.join(deb.file_name().unwrap()))?;
    fs::copy(src.join(".config"), partial.join("config"))?;
    fsx::remove_if_present(&entry)?;
    fs::rename(&partial, &entry).with_context(|| format!("moving the kernel package into {}", entry.display()))?;
    // The source tree and object files are large and no longer needed.
    fsx::remove_if_present(work)?;
    Ok(KernelPackage {
        deb: entry.join(deb.file_name().unwrap()),
        release,
        config: entry.join("config"),
        key,
        cached: false,
    })
}

/// Puts the source tarball into the work directory, checked.
fn fetch_source(inputs: &KernelInputs) -> Result<PathBuf> {
    let work = &inputs.work_dir;
    match &inputs.pin.source {
        KernelSource::DebianPackage { package, version } => {
            let apt = |argv: &[&str]| {
                RootCommand::new(&inputs.root.path, argv).bind(work, "/kernel").workdir("/kernel").to_cmd()
            };
            apt(&["apt-get", "update"])?.run_logged(&inputs.log, |_| {})?;
            apt(&["apt-get", "download", &format!("{package}={version}")])?
                .run_logged(&inputs.log, |_| {})
                .with_context(|| {
                    format!(
                        "downloading {package} {version}: if the archive no longer has it, update kernel/kernel.toml"
                    )
                })?;
            let deb = fs::read_dir(work)?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|e| e == "deb"))
                .with_context(|| format!("apt-get download left no {package} .deb"))?;
            let unpacked = work.join("deb");
            Cmd::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked).run()?;
            fs::remove_file(&deb)?;
            let series = package.trim_start_matches("linux-source-");
            let tarball = unpacked.join(format!("usr/src/linux-source-{series}.tar.xz"));
            if !tarball.is_file() {
                bail!("{package} {version} has no {}", tarball.display());
            }
            let moved = work.join("linux.tar.xz");
            fs::rename(&tarball, &moved)?;
            fsx::remove_if_present(&unpacked)?;
            Ok(moved)
        }
        KernelSource::Tarball { url, sha256, .. } => {
            let target = work.join("linux.tar");
            crate::stages::fetch::download_checked(
                "the kernel source",
                url,
                sha256,
                "kernel/kernel.toml",
                &target,
                &inputs.log,
            )?;
            Ok(target)
        }
    }
}

/// Applies one patch, checking first that all of it applies (so a failure changes nothing).
pub fn apply_patch(src: &Path, patch: &Path, log: &Path) -> Result<()> {
    let patch_cmd = |dry: bool| {
        let mut cmd = Cmd::new("patch").args(["-p1", "--forward", "--batch", "--silent"]).dir(src);
        if dry {
            cmd = cmd.arg("--dry-run");
        }
        cmd.arg("--input").arg(patch)
    };
    patch_cmd(true).run_logged(log, |_| {}).with_context(|| format!("patch {} does not apply", patch.display()))?;
    patch_cmd(false).run_logged(log, |_| {}).with_context(|| format!("applying patch {}", patch.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::kernel_pin::tests::PIN;

    #[test]
    fn the_repository_pin_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let pin = KernelPin::load(&root.join("kernel/kernel.toml")).unwrap();
        assert!(pin.release().ends_with("-truthdb"));
        for fragment in list_files(&root.join("kernel/config"), "config").unwrap() {
            parse_fragment(&fragment, &fs::read_to_string(&fragment).unwrap()).unwrap();
        }
    }

    #[test]
    fn bad_pins_name_the_field() {
        for (text, field) in [
            (PIN.replace("-truthdb", "truthdb"), "build.local_version"),
            (PIN.replace("x86_64_defconfig", "debian.config"), "build.base_config"),
            (PIN.replace("6.12.117-1", "latest"), "source.version"),
            (PIN.replace("kind = \"debian-package\"", "kind = \"git\""), "unknown variant `git`"),
            (PIN.replace("[build]", "[build]\njobs = 4"), "unknown field `jobs`"),
            (
                "[source]\nkind = \"tarball\"\nurl = \"https://x/linux.tar.xz\"\nsha256 = \"abc\"\nversion = \"6.12.1\"\n[build]\nlocal_version = \"-t\"\nbase_config = \"x86_64_defconfig\"\n".to_owned(),
                "source.sha256",
            ),
        ] {
            let msg = format!("{:#}", KernelPin::parse(&text).unwrap_err());
            assert!(msg.contains(field), "expected {field:?} in {msg:?}");
        }
    }

    #[test]
    fn fragments_parse_values_and_not_set_lines() {
        let opts =
            parse_fragment(Path::new("f.config"), "# c\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n").unwrap();
        let pairs: Vec<(&str, &str, usize)> =
            opts.iter().map(|o| (o.name.as_str(), o.value.as_str(), o.line)).collect();
        assert_eq!(pairs, [("CONFIG_A", "y", 2), ("CONFIG_B", "n", 3), ("CONFIG_C", "\"x\"", 4)]);
        let msg = format!("{:#}", parse_fragment(Path::new("f.config"), "SQUASHFS=y\n").unwrap_err());
        assert!(msg.contains("f.config:1"), "{msg}");
    }

    #[test]
    fn a_dropped_option_is_reported_with_its_fragment() {
        let requested = parse_fragment(
            Path::new("kernel/config/40-graphics.config"),
            "CONFIG_DRM=y\nCONFIG_DRM_BOCHS=y\n# CONFIG_MODULE_SIG is not set\n",
        )
        .unwrap();
        let final_config = "CONFIG_DRM=y\n# CONFIG_DRM_BOCHS is not set\n";
        let msg = format!("{:#}", check_config(final_config, &requested).unwrap_err());
        assert!(msg.contains("CONFIG_DRM_BOCHS=y requested by kernel/config/40-graphics.config:2"), "{msg}");
        assert!(!msg.contains("CONFIG_DRM=y requested"), "{msg}");
        assert!(!msg.contains("MODULE_SIG"), "an option requested off and absent is fine: {msg}");
        check_config("CONFIG_DRM=y\nCONFIG_DRM_BOCHS=y\n", &requested).unwrap();
        let module = check_config("CONFIG_DRM=y\nCONFIG_DRM_BOCHS=m\n", &requested).unwrap_err();
        assert!(format!("{module:#}").contains("has it =m"));
    }

    #[test]
    fn a_payload_s_kernel_option_must_be_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        let needs = ["CONFIG_IO_URING".to_owned()];
        for (text, ok) in [
            ("CONFIG_IO_URING=y\n", true),
            ("# CONFIG_IO_URING is not set\n", false),
            ("CONFIG_IO_URING=m\n", false),
            ("CONFIG_OTHER=y\n", false),
        ] {
            fs::write(&config, text).unwrap();
            match check_built_in(&config, &needs, "the payload (truthdb)") {
                Ok(()) => assert!(ok, "{text} passed"),
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(!ok && msg.contains("CONFIG_IO_URING is") && msg.contains("(truthdb)"), "{text}: {msg}");
                }
            }
        }
        check_built_in(Path::new("/nonexistent"), &[], "the payload (postgresql)").unwrap();
    }

    #[test]
    fn a_patch_that_does_not_apply_is_named_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("init")).unwrap();
        fs::write(src.join("init/version.c"), "one\ntwo\nthree\n").unwrap();
        fs::write(src.join("init/other.c"), "alpha\n").unwrap();
        let good = dir.path().join("0001-good.patch");
        fs::write(&good, "--- a/init/version.c\n+++ b/init/version.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
            .unwrap();
        let bad = dir.path().join("0002-bad.patch");
        fs::write(
            &bad,
            "--- a/init/other.c\n+++ b/init/other.c\n@@ -1 +1 @@\n-alpha\n+beta\n--- a/init/version.c\n+++ b/init/version.c\n@@ -1,3 +1,3 @@\n one\n-zwei\n+ZWEI\n three\n",
        )
        .unwrap();
        let log = dir.path().join("log");
        apply_patch(&src, &good, &log).unwrap();
        assert_eq!(fs::read_to_string(src.join("init/version.c")).unwrap(), "one\nTWO\nthree\n");
        let msg = format!("{:#}", apply_patch(&src, &bad, &log).unwrap_err());
        assert!(msg.contains("0002-bad.patch does not apply"), "{msg}");
        assert_eq!(fs::read_to_string(src.join("init/other.c")).unwrap(), "alpha\n", "a failed patch half-applied");
    }
}
