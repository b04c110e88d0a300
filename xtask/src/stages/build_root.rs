//! Stage "build root": a debootstrap-made Debian tree with live-build in it, where `lb build`
//! runs, so the host needs nothing but debootstrap.
//!
//! Roots live in the machine-wide cache (`/var/cache/truthdb-os/build-roots/`), named by a
//! digest of everything that went into them ([`BuildRootSpec::key`]). A root is created under a
//! temporary name and renamed into place only when complete, so a half-made root is never
//! found, let alone reused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::appliance::Appliance;
use crate::project::package_lock::PackageLock;
use crate::stages::sandbox::RootCommand;
use crate::util::digest::Hasher;
use crate::util::fsx;
use crate::util::run::Cmd;

/// Bump when the way a root is made changes (not its inputs): old roots are then not reused.
const RECIPE_VERSION: &str = "2";

/// Packages the root needs beyond debootstrap's minbase: live-build (boot loaders, xorriso
/// and squashfs-tools it installs itself, into the image chroot, as `--build-with-chroot
/// true` does), what `make bindeb-pkg` needs to build the kernel, and the C libraries the
/// installer links (it is compiled here, against the image's release).
const BUILD_ROOT_PACKAGES: &[&str] = &[
    "live-build",
    "ca-certificates",
    // kernel build
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libssl-dev",
    "libelf-dev",
    "cpio",
    "kmod",
    "rsync",
    "dpkg-dev",
    // the generated debian/rules lists its packages with dh_listpackages
    "debhelper",
    "xz-utils",
    "python3",
    // the graphical installer links libinput, libudev and libxkbcommon of the image's release
    "pkg-config",
    "libinput-dev",
    "libudev-dev",
    "libxkbcommon-dev",
];

/// What a build root is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildRootSpec {
    pub suite: String,
    pub architecture: String,
    pub mirror: String,
    pub security_mirror: String,
    pub archive_areas: Vec<String>,
    pub packages: Vec<String>,
}

impl BuildRootSpec {
    /// The root for building the manifest's image: same suite and mirrors as the image.
    pub fn for_image(appliance: &Appliance) -> BuildRootSpec {
        BuildRootSpec {
            suite: appliance.suite.clone(),
            architecture: appliance.architecture.clone(),
            mirror: appliance.mirrors.archive.clone(),
            security_mirror: appliance.mirrors.security.clone(),
            archive_areas: appliance.archive_areas.clone(),
            packages: BUILD_ROOT_PACKAGES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The cache key: a digest of the recipe version and every input.
    pub fn key(&self) -> String {
        let mut h = Hasher::new();
        h.field("recipe", RECIPE_VERSION)
            .field("suite", &self.suite)
            .field("arch", &self.architecture)
            .field("mirror", &self.mirror)
            .field("security", &self.security_mirror)
            .field("areas", self.archive_areas.join(" "));
        let mut packages = self.packages.clone();
        packages.sort();
        h.field("packages", packages.join(" "));
        h.hex()[..16].to_owned()
    }

    /// The apt sources of the root: the image's suite, its updates and security archives, so
    /// the package check before `lb build` sees what the image will see.
    fn sources_list(&self) -> String {
        let areas = self.archive_areas.join(" ");
        format!(
            "deb {m} {s} {areas}\ndeb {m} {s}-updates {areas}\ndeb {sec} {s}-security {areas}\n",
            m = self.mirror,
            s = self.suite,
            sec = self.security_mirror,
        )
    }
}

/// A complete build root.
#[derive(Clone, Debug)]
pub struct BuildRoot {
    pub path: PathBuf,
    pub key: String,
}

/// Marker written last into a finished root (besides the atomic rename, a second guard).
const COMPLETE_MARKER: &str = "etc/truthdb-build-root";

/// Whether the root for `spec` is already in the cache.
pub fn cached(spec: &BuildRootSpec, cache_dir: &Path) -> Option<BuildRoot> {
    let path = root_path(spec, cache_dir);
    path.join(COMPLETE_MARKER).is_file().then(|| BuildRoot { path, key: spec.key() })
}

/// The root `spec` has or will have once [`ensure`]d (for cache keys computed beforehand).
pub fn planned(spec: &BuildRootSpec, cache_dir: &Path) -> BuildRoot {
    BuildRoot { path: root_path(spec, cache_dir), key: spec.key() }
}

fn root_path(spec: &BuildRootSpec, cache_dir: &Path) -> PathBuf {
    cache_dir.join("build-roots").join(format!("{}-{}-{}", spec.suite, spec.architecture, spec.key()))
}

/// Returns the cached root for `spec`, making it first if needed. `log` receives the output
/// of debootstrap and apt.
pub fn ensure(spec: &BuildRootSpec, cache_dir: &Path, log: &Path, on_line: &mut dyn FnMut(&str)) -> Result<BuildRoot> {
    // Another run may be making this very root: wait for it, then find it cached.
    let _lock = crate::util::lock::cache_entry(&root_path(spec, cache_dir))?;
    let root = match cached(spec, cache_dir) {
        Some(root) => root,
        None => make_cached_root(spec, cache_dir, log, on_line, None)?,
    };
    // Roots of other inputs (an older live-build, another mirror) are kept while in use.
    fsx::touch_and_prune(&root.path, UNUSED_ROOT_LIFETIME)?;
    Ok(root)
}

/// How [`ensure_for_image`] treats a cached root.
pub enum RootPolicy<'a> {
    /// Use it, or make one if there is none.
    Cached,
    /// Make the root anew and replace the cached one (recording a package lock: every file
    /// must be fetched to be recorded).
    Remake,
    /// Use it only if its installed packages are `lock`'s build root packages; else make it
    /// anew (from the lock, through the replaying apt proxy) and replace it.
    Locked(&'a PackageLock),
}

/// [`ensure`] for an image build: every download of debootstrap and apt through the apt proxy
/// at `http_proxy`, and the cached root checked against `policy`. Returns the root and, when
/// it was made, why.
pub fn ensure_for_image(
    spec: &BuildRootSpec,
    cache_dir: &Path,
    log: &Path,
    policy: RootPolicy,
    http_proxy: &str,
) -> Result<(BuildRoot, Option<String>)> {
    let _lock = crate::util::lock::cache_entry(&root_path(spec, cache_dir))?;
    // Recording, the root is made anew whether one is cached or not (a new machine has none):
    // that is the reason to give.
    let why = match (cached(spec, cache_dir), &policy) {
        (_, RootPolicy::Remake) => Some("recording a package lock: made anew".to_owned()),
        (None, _) => Some("no build root cached for these inputs".to_owned()),
        (Some(_), RootPolicy::Cached) => None,
        (Some(root), RootPolicy::Locked(lock)) => {
            let status_path = root.path.join("var/lib/dpkg/status");
            let status =
                fs::read_to_string(&status_path).with_context(|| format!("reading {}", status_path.display()))?;
            let differ = PackageLock::differences(&status, &lock.build_root_versions(), &[]);
            crate::stages::lb_build::describe_differences(
                "the cached build root's packages are not the lock's",
                &differ,
            )
        }
    };
    let root = match &why {
        None => BuildRoot { path: root_path(spec, cache_dir), key: spec.key() },
        Some(_) => make_cached_root(spec, cache_dir, log, &mut |_| {}, Some(http_proxy))?,
    };
    fsx::touch_and_prune(&root.path, UNUSED_ROOT_LIFETIME)?;
    Ok((root, why))
}

/// How long a build root no build has used stays in the cache.
const UNUSED_ROOT_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

fn make_cached_root(
    spec: &BuildRootSpec,
    cache_dir: &Path,
    log: &Path,
    on_line: &mut dyn FnMut(&str),
    http_proxy: Option<&str>,
) -> Result<BuildRoot> {
    let final_path = root_path(spec, cache_dir);
    let parent = final_path.parent().expect("root path has a parent");
    fs::create_dir_all(parent).with_context(|| format!("creating cache directory {}", parent.display()))?;
    let partial = parent.join(format!(".partial-{}-{}", spec.key(), std::process::id()));
    fsx::remove_if_present(&partial)?;
    remove_stale_partials(parent);

    let made = make_root(spec, &partial, log, on_line, http_proxy);
    if let Err(e) = made {
        let _ = fsx::remove_if_present(&partial);
        return Err(e);
    }
    // A root made anew replaces the cached one (the caller holds the entry's lock): moved
    // aside first, so the path never holds a half-removed root.
    if final_path.exists() {
        let old = parent.join(format!(".old-{}-{}", spec.key(), std::process::id()));
        fs::rename(&final_path, &old)
            .with_context(|| format!("moving the old build root {} aside", final_path.display()))?;
        fs::rename(&partial, &final_path)
            .with_context(|| format!("moving the new build root to {}", final_path.display()))?;
        fsx::remove_if_present(&old)?;
        return Ok(BuildRoot { path: final_path, key: spec.key() });
    }
    if let Err(e) = fs::rename(&partial, &final_path) {
        // Another build finished the same root first: use theirs.
        let _ = fsx::remove_if_present(&partial);
        if cached(spec, cache_dir).is_none() {
            return Err(e).with_context(|| format!("moving the new build root to {}", final_path.display()));
        }
    }
    Ok(BuildRoot { path: final_path, key: spec.key() })
}

fn make_root(
    spec: &BuildRootSpec,
    target: &Path,
    log: &Path,
    on_line: &mut dyn FnMut(&str),
    http_proxy: Option<&str>,
) -> Result<()> {
    let proxied = |cmd: Cmd| match http_proxy {
        Some(url) => cmd.env("http_proxy", url),
        None => cmd,
    };
    let in_root = |argv: &[&str]| -> Result<Cmd> {
        let command = RootCommand::new(target, argv);
        Ok(match http_proxy {
            Some(url) => command.env("http_proxy", url).to_cmd()?,
            None => command.to_cmd()?,
        })
    };
    let debootstrap = Cmd::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--arch={}", spec.architecture))
        .arg(format!("--components={}", spec.archive_areas.join(",")))
        .arg(&spec.suite)
        .arg(target)
        .arg(&spec.mirror);
    proxied(debootstrap).run_logged(log, &mut *on_line).with_context(|| {
        format!("debootstrap of a {} build root from {} (is the mirror reachable?)", spec.suite, spec.mirror)
    })?;

    fs::write(target.join("etc/apt/sources.list"), spec.sources_list())?;
    // Updates and security lists, for the package check; also proves the mirrors answer.
    in_root(&["apt-get", "update"])?.run_logged(log, &mut *on_line).with_context(|| {
        format!("apt-get update in the build root (are {} and {} reachable?)", spec.mirror, spec.security_mirror)
    })?;
    // apt, not debootstrap's --include, installs the packages: debootstrap's own resolver
    // fails on deep -dev dependency chains (libinput-dev -> libgudev -> glib).
    let mut install = vec!["apt-get", "install", "--yes", "--no-install-recommends", "--"];
    install.extend(spec.packages.iter().map(String::as_str));
    in_root(&install)?.run_logged(log, &mut *on_line).context("installing the build root's packages with apt-get")?;
    RootCommand::new(target, &["apt-get", "clean"]).to_cmd()?.run_logged(log, &mut *on_line)?;

    let description = format!(
        "TruthDB OS build root\nkey={}\nsuite={}\narchitecture={}\nmirror={}\npackages={}\n",
        spec.key(),
        spec.suite,
        spec.architecture,
        spec.mirror,
        spec.packages.join(" ")
    );
    fs::write(target.join(COMPLETE_MARKER), description)?;
    Ok(())
}

/// Partial roots left by a build that was killed: nothing else uses them.
fn remove_stale_partials(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(".partial-") {
            let pid = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(fsx::process_alive);
            if !alive {
                let _ = fsx::remove_if_present(&entry.path());
            }
        }
    }
}

/// Asks the root's apt which of `names` have no installation candidate in the suite.
pub fn missing_packages(root: &BuildRoot, names: &[&str]) -> Result<Vec<String>> {
    let mut argv = vec!["apt-cache", "policy", "--"];
    argv.extend_from_slice(names);
    let output =
        RootCommand::new(&root.path, &argv).to_cmd()?.read().context("asking the build root's apt about packages")?;
    let known = parse_candidates(&output);
    Ok(names.iter().filter(|n| !known.contains(&n.to_string())).map(|n| n.to_string()).collect())
}

/// Package names that `apt-cache policy` shows with an installation candidate.
fn parse_candidates(policy: &str) -> Vec<String> {
    let mut known = Vec::new();
    let mut current: Option<String> = None;
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':').to_owned());
        } else if let Some(candidate) = line.trim().strip_prefix("Candidate:")
            && let Some(name) = current.take()
            && candidate.trim() != "(none)"
        {
            known.push(name);
        }
    }
    known
}

/// Fails with one line per unknown package (in neither the suite nor an extra apt repository),
/// naming where it was listed.
pub fn check_packages_exist(
    root: &BuildRoot,
    list: &crate::project::package_list::PackageList,
    suite: &str,
    extra: &crate::stages::apt_sources::RepositoryPackages,
) -> Result<()> {
    let names: Vec<&str> = list.names().collect();
    let mut missing = missing_packages(root, &names)?;
    missing.retain(|name| !extra.by_package.contains_key(name));
    if !missing.is_empty() {
        let lines: Vec<String> =
            missing.iter().map(|name| format!("  {}: unknown package {name:?}", list.location(name))).collect();
        bail!("{} package(s) not found in Debian {suite}:\n{}", missing.len(), lines.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> BuildRootSpec {
        BuildRootSpec {
            suite: "trixie".into(),
            architecture: "amd64".into(),
            mirror: "http://deb.debian.org/debian".into(),
            security_mirror: "http://deb.debian.org/debian-security".into(),
            archive_areas: vec!["main".into()],
            packages: vec!["live-build".into(), "ca-certificates".into()],
        }
    }

    #[test]
    fn key_is_stable_and_ignores_package_order() {
        let mut reordered = spec();
        reordered.packages.reverse();
        assert_eq!(spec().key(), reordered.key());
        assert_eq!(spec().key().len(), 16);
    }

    #[test]
    fn key_changes_with_every_input() {
        let base = spec().key();
        let mut changed = Vec::new();
        let mut s = spec();
        s.suite = "sid".into();
        changed.push(s.key());
        let mut s = spec();
        s.mirror = "http://mirror.example/debian".into();
        changed.push(s.key());
        let mut s = spec();
        s.packages.push("gcc".into());
        changed.push(s.key());
        let mut s = spec();
        s.archive_areas.push("contrib".into());
        changed.push(s.key());
        for key in changed {
            assert_ne!(key, base);
        }
    }

    #[test]
    fn a_root_without_its_completion_marker_is_not_reused() {
        let cache = tempfile::tempdir().unwrap();
        let path = root_path(&spec(), cache.path());
        fs::create_dir_all(path.join("etc")).unwrap();
        assert!(cached(&spec(), cache.path()).is_none());
        fs::write(path.join(COMPLETE_MARKER), "done").unwrap();
        assert_eq!(cached(&spec(), cache.path()).unwrap().path, path);
    }

    #[test]
    fn sources_cover_updates_and_security() {
        let sources = spec().sources_list();
        assert!(sources.contains("deb http://deb.debian.org/debian-security trixie-security main"));
        assert!(sources.contains("trixie-updates main"));
    }

    #[test]
    fn candidates_are_parsed_from_apt_cache_policy() {
        let policy = "curl:\n  Installed: (none)\n  Candidate: 8.14.1-2\n  Version table:\nno-such-pkg:\n  Installed: (none)\n  Candidate: (none)\n";
        assert_eq!(parse_candidates(policy), ["curl"]);
    }
}
