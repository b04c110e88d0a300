//! `cargo xtask iso` (and `cargo xtask kernel`): the pipeline, as a list of named stages.
//!
//! manifest -> render -> build root -> package check -> kernel -> installer build -> payload debs
//! -> lb build -> sbom -> publish
//!
//! Each stage is a function of a small typed input, timed and shown by [`progress::stage`].
//! Before building, the digest of every input is compared with the published build's: when
//! nothing changed (and the same key would sign), the command says so and stops.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::doctor::{self, Purpose};
use crate::project::package_lock::{LockedFile, PackageLock};
use crate::project::{self, Project};
use crate::stages::apt_proxy::{self, AptProxy};
use crate::stages::apt_sources::{self, RepositoryPackages};
use crate::stages::build_root::{self, BuildRoot, BuildRootSpec, RootPolicy};
use crate::stages::chroot_cache::{self, ChrootCache};
use crate::stages::fetch;
use crate::stages::installer_build::{self, ImageInstaller, InstallerBuildInputs};
use crate::stages::kernel::{self, KernelInputs, KernelPackage};
use crate::stages::lb_build::{self, BuiltImage, ChrootSource, Compression, LbBuildInputs};
use crate::stages::package_store::{self, PackageStore};
use crate::stages::payload_debs;
use crate::stages::publish::{self, Artifacts, BuildInfo};
use crate::stages::render::{self, LiveBuildTree, RenderInputs};
use crate::stages::sbom;
use crate::stages::signing::{self, KeySource, Signer};
use crate::util::digest::Hasher;
use crate::util::host;
use crate::util::progress::{self, stage};

/// `cargo xtask iso`.
#[derive(Debug, Default, clap::Args)]
pub struct IsoArgs {
    /// Rebuild even if the published image was built from the same inputs.
    #[arg(long)]
    pub force: bool,
    /// Where to publish (default: `dist/` in the project).
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// Squashfs compression of the live system: xz for releases; zstd or lz4 build (and
    /// boot) faster, for development. Named in the build info.
    #[arg(long, value_enum, default_value_t = Compression::Xz)]
    pub compression: Compression,
    /// Install the packages into a fresh chroot even if a cached one was made from the same
    /// inputs (the cache entry is replaced).
    #[arg(long)]
    pub fresh_chroot: bool,
    /// Also publish the generic VM images, made from the new ISO as `cargo xtask disk` without
    /// --config makes them: `<name>-<version>-<arch>.qcow2` (compressed) and `.raw.zst`. They
    /// are in the sums, and so signed.
    #[arg(long)]
    pub vm_images: bool,
    /// Build from the archive as it is now, in a fresh chroot, and record every file it
    /// fetched into the package lock (what `cargo xtask lock` does).
    #[arg(long)]
    pub update_lock: bool,
    /// The package lock to build from (or, with --update-lock, to write) instead of
    /// lb-config/packages.lock.
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
}

/// Everything the image depends on, in one digest: what live-build is given, the build root
/// it runs in, the kernel, the installer's sources, the payload's own .debs, the timestamp it
/// is built with, and the version it is named after.
pub struct ImageInputs<'a> {
    pub tree: &'a LiveBuildTree,
    pub root: &'a BuildRoot,
    pub kernel_key: &'a str,
    pub installer_digest: &'a str,
    pub payload_debs_digest: &'a str,
    pub epoch: u64,
    pub version: &'a str,
    pub compression: Compression,
    pub vm_images: bool,
    /// The lock's digest; "none" unlocked, "recording" for `cargo xtask lock`.
    pub package_lock: &'a str,
}

impl ImageInputs<'_> {
    pub fn digest(&self) -> String {
        Hasher::new()
            .field("config", &self.tree.digest)
            .field("build-root", &self.root.key)
            .field("kernel", self.kernel_key)
            .field("installer", self.installer_digest)
            .field("payload-debs", self.payload_debs_digest)
            .field("source-date-epoch", self.epoch.to_string())
            .field("version", self.version)
            .field("squashfs-compression", self.compression.name())
            .field("vm-images", if self.vm_images { "generic qcow2 and raw.zst" } else { "none" })
            .field("package-lock", self.package_lock)
            .hex()
    }
}

/// How a build treats the package lock (`lb-config/packages.lock` or `--lock`).
pub(crate) enum LockPlan {
    /// No lock: the archive as it is now (what was fetched still goes into the package store).
    Unlocked,
    /// Built from `lock`: the apt proxy serves only its files, from the package store.
    Locked { path: PathBuf, lock: PackageLock },
    /// `cargo xtask lock`: built from the archive as it is now, in a fresh chroot, and what was
    /// fetched recorded into `path` with the `inputs` it was made from.
    Recording { path: PathBuf, inputs: BTreeMap<String, String> },
}

impl LockPlan {
    fn digest(&self) -> Result<String> {
        Ok(match self {
            LockPlan::Unlocked => "none".to_owned(),
            LockPlan::Locked { lock, .. } => lock.digest()?,
            LockPlan::Recording { .. } => "recording".to_owned(),
        })
    }
}

/// What a package lock is checked against: a digest of each input that decides which files
/// the build fetches (the rendered live-build tree's package inputs, less the image's name,
/// which carries the version; and the payload's own .debs, whose dependencies count too).
pub fn package_lock_inputs(project: &Project, tree_dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut inputs = chroot_cache::package_inputs(tree_dir)?;
    inputs.insert("build root".to_owned(), BuildRootSpec::for_image(&project.appliance).key());
    inputs.insert(
        "payload debs".to_owned(),
        payload_debs::inputs_digest(&project.root, &project.appliance.payload.debs)?,
    );
    Ok(inputs)
}

/// [`package_lock_inputs`] of the project as it is now, rendered into a temporary directory.
fn current_lock_inputs(project: &Project) -> Result<BTreeMap<String, String>> {
    let dir = tempfile::tempdir()?;
    let tree = render::render(&RenderInputs::of(project), &dir.path().join("config"))?;
    package_lock_inputs(project, &tree.dir)
}

/// The lock at `path`, read and checked fresh against `inputs`; a stale one is an error
/// naming what changed.
fn read_fresh_lock(path: &Path, inputs: &BTreeMap<String, String>) -> Result<PackageLock> {
    let lock = PackageLock::read(path)?;
    let stale = lock.stale_inputs(inputs);
    if !stale.is_empty() {
        bail!(
            "{} is stale: {} changed since it was recorded. Record it again with `cargo xtask lock` \
             (which builds the image from the archive as it is now)",
            path.display(),
            stale.join(", ")
        );
    }
    Ok(lock)
}

/// The error of a locked build that asked the apt proxy for files the lock does not have:
/// the lock no longer fits what the build does.
fn lacking_files(
    error: anyhow::Error,
    what: &str,
    report: &apt_proxy::Report,
    lock: &Path,
    log: &Path,
) -> anyhow::Error {
    let first: Vec<&str> = report.missing.iter().take(3).map(String::as_str).collect();
    error.context(format!(
        "{what} asked for {} file(s) {} does not have ({}; all in {}): record the lock again with \
         `cargo xtask lock`",
        report.missing.len(),
        lock.display(),
        first.join(", "),
        log.display()
    ))
}

/// The machine-wide paths and logs a run uses.
pub(crate) struct Pipeline<'a> {
    project: &'a Project,
    cache: PathBuf,
    logs: PathBuf,
}

impl<'a> Pipeline<'a> {
    pub(crate) fn new(project: &'a Project) -> Result<Pipeline<'a>> {
        let logs = project.logs_dir();
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Pipeline { project, cache: project::cache_dir(), logs })
    }

    pub(crate) fn fresh_log(&self, name: &str) -> PathBuf {
        let log = self.logs.join(name);
        let _ = std::fs::remove_file(&log);
        log
    }

    fn root_spec(&self) -> BuildRootSpec {
        BuildRootSpec::for_image(&self.project.appliance)
    }

    fn kernel_inputs<'r>(&self, root: &'r BuildRoot, log: PathBuf) -> Result<KernelInputs<'r>>
    where
        'a: 'r,
    {
        let project = self.project;
        Ok(KernelInputs {
            pin: &project.kernel_pin,
            kernel_dir: project.kernel_dir(),
            root,
            cache_dir: self.cache.clone(),
            work_dir: project.work_dir().join("kernel"),
            source_date_epoch: project::source_date_epoch_of(&project.root, &project::KERNEL_INPUTS)?,
            log,
        })
    }

    /// Stage "build root".
    pub(crate) fn build_root(&self) -> Result<BuildRoot> {
        let spec = self.root_spec();
        let log = self.fresh_log("build-root.log");
        stage("build root", |s| {
            if build_root::cached(&spec, &self.cache).is_some() {
                s.set("cached");
            } else {
                s.set(&format!("debootstrap {} with live-build and a compiler (log: {})", spec.suite, log.display()));
            }
            build_root::ensure(&spec, &self.cache, &log, &mut |_| {})
        })
    }

    /// Stage "kernel".
    pub(crate) fn kernel(&self, root: &BuildRoot) -> Result<KernelPackage> {
        let inputs = self.kernel_inputs(root, self.logs.join("kernel.log"))?;
        stage("kernel", |s| {
            if kernel::cached(&inputs)?.is_none() {
                let _ = std::fs::remove_file(&inputs.log);
            }
            let package = kernel::build(&inputs, &mut |step| s.set(step))?;
            if package.cached {
                s.set(&format!("{} cached: nothing to compile", package.release));
            }
            Ok(package)
        })
    }
}

/// `cargo xtask cache-keys`.
#[derive(Debug, clap::Args)]
pub struct CacheKeysArgs {
    /// Print instead the digests a package lock's `[inputs]` must hold to be fresh, one
    /// `NAME=DIGEST` per line.
    #[arg(long)]
    pub lock_inputs: bool,
}

impl CacheKeysArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        if self.lock_inputs {
            for (name, digest) in current_lock_inputs(project)? {
                println!("{name}={digest}");
            }
            return Ok(());
        }
        let (root, kernel) = cache_keys(project)?;
        println!("build-root={root}");
        println!("kernel={kernel}");
        Ok(())
    }
}

/// The cache keys of the build root and the kernel for the project as it is now.
pub fn cache_keys(project: &Project) -> Result<(String, String)> {
    let cx = Pipeline::new(project)?;
    let root = build_root::planned(&cx.root_spec(), &cx.cache);
    let kernel = cx.kernel_inputs(&root, PathBuf::new())?.key()?;
    Ok((root.key, kernel))
}

/// `cargo xtask lock`.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Where the lock goes (default: lb-config/packages.lock).
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// Where to publish the image built on the way (default: `dist/` in the project).
    #[arg(long)]
    pub dist: Option<PathBuf>,
    /// Only say whether the lock is fresh against the inputs as they are now (exit 1 when it
    /// is stale); build nothing.
    #[arg(long)]
    pub check: bool,
}

impl LockArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        if self.check {
            return check_lock(project, self.lock.as_deref());
        }
        IsoArgs { update_lock: true, lock: self.lock, dist: self.dist, ..IsoArgs::default() }.run(project)
    }
}

/// `cargo xtask lock --check`: renders the tree and compares the lock's inputs (no root needed).
fn check_lock(project: &Project, lock: Option<&Path>) -> Result<()> {
    let path = lock.map(Path::to_path_buf).unwrap_or_else(|| project.package_lock_path());
    if !path.exists() {
        if lock.is_some() {
            bail!("{}: no such package lock", path.display());
        }
        println!("no package lock ({} does not exist): builds use the archive as it is", path.display());
        return Ok(());
    }
    let lock = read_fresh_lock(&path, &current_lock_inputs(project)?)?;
    println!(
        "fresh: {} ({} packages, {} indexes, archive state {})",
        path.display(),
        lock.packages.len(),
        lock.indexes.len(),
        lock.snapshot_time
    );
    Ok(())
}

/// `cargo xtask kernel`: build (or find in the cache) the kernel package.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {}

impl KernelArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        host::reexec_as_root_if_needed()?;
        let _lock = project.lock_work_dir()?;
        doctor::ensure(&[Purpose::Build])?;
        let cx = Pipeline::new(project)?;
        let root = cx.build_root()?;
        let package = cx.kernel(&root)?;
        if package.cached {
            println!("kernel {} is cached (key {}): nothing compiled", package.release, package.key);
        } else {
            println!("built kernel {} (key {})", package.release, package.key);
        }
        println!("  package: {}", package.deb.display());
        println!("  config:  {}", package.config.display());
        Ok(())
    }
}

impl IsoArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        host::reexec_as_root_if_needed()?;
        let _lock = project.lock_work_dir()?;
        run(project, &self)
    }
}

/// The ISO build, step by step: each step is a method of [`IsoBuild`] below.
pub fn run(project: &Project, args: &IsoArgs) -> Result<()> {
    let build = IsoBuild::start(project, args)?;
    let tree = build.render()?;
    let lock = build.package_lock(&tree)?;
    let digest = build.inputs_digest(&tree, &lock)?;
    if build.is_up_to_date(&digest)? {
        return Ok(());
    }
    build.package_store(&lock)?;
    let repositories = build.apt_sources()?;
    let (root, root_files) = build.build_root(&lock)?;
    build.package_check(&root, &tree, &repositories)?;
    let kernel = build.cx.kernel(&root)?;
    build.payload_kernel_check(&kernel)?;
    let installer = build.installer(&root)?;
    let payload_debs = build.payload_debs()?;
    let (image, image_files) = build.lb_build(&root, &tree, &kernel, &installer, payload_debs, &lock)?;
    let recorded = build.record_lock(&lock, &root_files, &image_files)?;
    // A recorded build is what a build from its new lock makes: it is published as one, so
    // that `iso` right after `lock` finds it up to date and the two agree byte for byte.
    let (lock, digest) = match (recorded, lock) {
        (Some(recorded), LockPlan::Recording { path, .. }) => {
            let lock = LockPlan::Locked { path, lock: recorded };
            let digest = build.inputs_digest(&tree, &lock)?;
            (lock, digest)
        }
        (_, lock) => (lock, digest),
    };
    let vm_images = build.vm_images(&image)?;
    let documents = build.sbom(&image, &root, &kernel, &digest, &lock)?;
    let signer = build.publish(&image, &vm_images, &documents, &root, &tree, &kernel, &digest)?;
    build.report_signature(&signer);
    Ok(())
}

/// One `iso` run: the pipeline's paths, the command's options, and what every step shares.
struct IsoBuild<'a> {
    cx: Pipeline<'a>,
    args: &'a IsoArgs,
    started: std::time::Instant,
    dist: PathBuf,
    stem: String,
    epoch: u64,
    key_source: KeySource,
}

impl<'a> IsoBuild<'a> {
    fn start(project: &'a Project, args: &'a IsoArgs) -> Result<IsoBuild<'a>> {
        let started = std::time::Instant::now();
        let cx = Pipeline::new(project)?;
        doctor::ensure(&[Purpose::Build])?;
        Ok(IsoBuild {
            dist: args.dist.clone().unwrap_or_else(|| project.default_dist_dir()),
            stem: project.image_stem(),
            epoch: project::source_date_epoch(&project.root)?,
            key_source: KeySource::from_env()?,
            cx,
            args,
            started,
        })
    }

    fn project(&self) -> &'a Project {
        self.cx.project
    }

    /// Step "render": the live-build tree.
    fn render(&self) -> Result<LiveBuildTree> {
        let project = self.project();
        stage("render", |_| render::render(&RenderInputs::of(project), &project.default_live_build_tree_dir()))
    }

    /// Step "package lock": how the build treats `packages.lock`; a stale lock stops it here.
    fn package_lock(&self, tree: &LiveBuildTree) -> Result<LockPlan> {
        let project = self.project();
        let path = self.args.lock.clone().unwrap_or_else(|| project.package_lock_path());
        let inputs = package_lock_inputs(project, &tree.dir)?;
        if self.args.update_lock {
            let appliance = &project.appliance;
            let mirrors = [&appliance.mirrors.archive, &appliance.mirrors.security];
            let repositories = appliance.apt_repositories.iter().map(|r| &r.url);
            if let Some(url) = mirrors.into_iter().chain(repositories).find(|u| u.starts_with("https://")) {
                bail!(
                    "cannot record a package lock: {url} is an https:// source, which apt fetches without the \
                     pipeline's apt proxy; use its http:// address (apt checks the archive's signatures either way)"
                );
            }
            return Ok(LockPlan::Recording { path, inputs });
        }
        if !path.exists() {
            if self.args.lock.is_some() {
                bail!("{}: no such package lock", path.display());
            }
            return Ok(LockPlan::Unlocked);
        }
        let lock = read_fresh_lock(&path, &inputs)?;
        Ok(LockPlan::Locked { path, lock })
    }

    /// Step "package store": every file of the lock in the store, fetched if need be, before
    /// anything is built.
    fn package_store(&self, plan: &LockPlan) -> Result<()> {
        let LockPlan::Locked { path, lock } = plan else {
            return Ok(());
        };
        let mirrors = &self.project().appliance.mirrors;
        let store = PackageStore::new(&self.cx.cache);
        stage("package store", |s| {
            s.set(&format!(
                "{} files of {}: the image's {} packages and {} indexes, the build root's {} and {}",
                lock.files().count(),
                path.display(),
                lock.packages.len(),
                lock.indexes.len(),
                lock.build_root_packages.len(),
                lock.build_root_indexes.len()
            ));
            let sources = package_store::Sources {
                snapshot: mirrors.snapshot.as_deref(),
                archive_mirror: &mirrors.archive,
                security_mirror: &mirrors.security,
            };
            let log = self.cx.fresh_log("package-store.log");
            let filled = store.fill(lock, &sources, &log, &mut |what| s.set_detail(&format!("fetching {what}")))?;
            println!(
                "package lock: building from {} ({} packages and {} for the build root, archive state {}); {} \
                 files were in the package store {}, {} fetched ({:.1} MB)",
                path.display(),
                lock.packages.len(),
                lock.build_root_packages.len(),
                lock.snapshot_time,
                filled.in_store,
                store.dir().display(),
                filled.fetched,
                filled.fetched_bytes as f64 / 1e6,
            );
            Ok(())
        })
    }

    /// Step "inputs digest": everything the image would be built from, before building any of it.
    fn inputs_digest(&self, tree: &LiveBuildTree, lock: &LockPlan) -> Result<String> {
        let project = self.project();
        let planned_root = build_root::planned(&self.cx.root_spec(), &self.cx.cache);
        let kernel_key = self.cx.kernel_inputs(&planned_root, PathBuf::new())?.key()?;
        let installer_digest = installer_build::source_digest(&project.root)?;
        let payload_debs_digest = payload_debs::inputs_digest(&project.root, &project.appliance.payload.debs)?;
        Ok(ImageInputs {
            tree,
            root: &planned_root,
            kernel_key: &kernel_key,
            installer_digest: &installer_digest,
            payload_debs_digest: &payload_debs_digest,
            epoch: self.epoch,
            version: &project.version,
            compression: self.args.compression,
            vm_images: self.args.vm_images,
            package_lock: &lock.digest()?,
        }
        .digest())
    }

    /// Whether `dist/` already holds this build (then says so): the no-op check.
    fn is_up_to_date(&self, digest: &str) -> Result<bool> {
        if self.args.force || self.args.update_lock || !is_published(&self.dist, &self.stem, digest, &self.key_source)?
        {
            return Ok(false);
        }
        println!(
            "up to date: {} was built from these exact inputs (digest {}); use --force to rebuild",
            self.dist.join(self.project().iso_file_name()).display(),
            &digest[..16]
        );
        Ok(true)
    }

    /// Step "build root": the cached root (checked against a lock's build root), or one made
    /// with every download through the apt proxy. Returns what the proxy served, which a
    /// recording build writes into the lock.
    fn build_root(&self, lock: &LockPlan) -> Result<(BuildRoot, BTreeMap<String, LockedFile>)> {
        let spec = self.cx.root_spec();
        let log = self.cx.fresh_log("build-root.log");
        let (policy, mode) = match lock {
            LockPlan::Unlocked => (RootPolicy::Cached, self.recording_proxy("apt-fetch-build-root.log")),
            LockPlan::Recording { .. } => (RootPolicy::Remake, self.recording_proxy("apt-fetch-build-root.log")),
            LockPlan::Locked { lock, .. } => (
                RootPolicy::Locked(lock),
                apt_proxy::Mode::Replay(lock.build_root_files().map(|(_, f)| (f.url.clone(), f)).collect()),
            ),
        };
        let proxy_log = self.cx.fresh_log("apt-proxy-build-root.log");
        let proxy = AptProxy::start(mode, PackageStore::new(&self.cx.cache), &proxy_log)?;
        let made = stage("build root", |s| {
            s.set(&format!(
                "the cached one, or debootstrap {} with live-build and a compiler (log: {})",
                spec.suite,
                log.display()
            ));
            build_root::ensure_for_image(&spec, &self.cx.cache, &log, policy, &proxy.url())
        });
        let report = proxy.finish();
        let (root, why) = match (made, lock) {
            (Err(error), LockPlan::Locked { path, .. }) if !report.missing.is_empty() => {
                return Err(lacking_files(error, "making the build root", &report, path, &proxy_log));
            }
            (made, _) => made?,
        };
        if let Some(why) = why {
            println!("build root: made ({why}); {} files through the apt proxy", report.served.len());
        }
        Ok((root, report.served))
    }

    /// A recording apt proxy's mode: each URL fetched once from its origin with curl.
    fn recording_proxy(&self, fetch_log: &str) -> apt_proxy::Mode {
        let fetch_log = self.cx.fresh_log(fetch_log);
        apt_proxy::Mode::Record(Box::new(move |url, target| fetch::download(url, target, &fetch_log)))
    }

    /// Step "payload kernel check": the kernel options the payload needs are built in, those
    /// of every other profile too (all of them get this one kernel), and the support list's
    /// drivers that come from the defconfig rather than a fragment.
    fn payload_kernel_check(&self, kernel: &KernelPackage) -> Result<()> {
        let project = self.project();
        let payload = &project.appliance.payload;
        let profile = payload.profile.as_deref().unwrap_or("appliance.toml");
        kernel::check_built_in(&kernel.config, &payload.kernel_config, &format!("the payload ({profile})"))?;
        let profiles = project.lb_config_dir().join(crate::project::appliance::PROFILES_DIR);
        for (name, options) in crate::project::appliance::Appliance::kernel_options_of_every_profile(&profiles)? {
            if payload.profile.as_deref() == Some(name.as_str()) {
                continue; // checked above as the payload
            }
            let needed_by = format!("the payload profile {name} (it shares this kernel)");
            kernel::check_built_in(&kernel.config, &options, &needed_by)?;
        }
        let support_list = kernel::SUPPORT_LIST_FROM_DEFCONFIG.map(str::to_owned);
        kernel::check_built_in(&kernel.config, &support_list, "README's support list (from the defconfig)")
    }

    /// Step "apt sources": each extra apt repository reachable and signed by its key.
    fn apt_sources(&self) -> Result<RepositoryPackages> {
        let project = self.project();
        let appliance = &project.appliance;
        if appliance.apt_repositories.is_empty() {
            return Ok(RepositoryPackages::default());
        }
        stage("apt sources", |s| {
            s.set(&format!("{} extra repositories: InRelease signed by their keys", appliance.apt_repositories.len()));
            apt_sources::check(
                &appliance.apt_repositories,
                &project.lb_config_dir(),
                &appliance.architecture,
                &apt_sources::work_dir(&project.work_dir()),
            )
        })
    }

    /// Step "package check": every name in packages.list exists in the suite (or in an extra
    /// repository).
    fn package_check(&self, root: &BuildRoot, tree: &LiveBuildTree, extra: &RepositoryPackages) -> Result<()> {
        let suite = &self.project().appliance.suite;
        stage("package check", |_| build_root::check_packages_exist(root, &tree.packages, suite, extra))
    }

    /// Step "installer build": the installer's release binaries for the image's suite.
    fn installer(&self, root: &BuildRoot) -> Result<ImageInstaller> {
        let project = self.project();
        stage("installer build", |s| {
            let log = self.cx.fresh_log("installer-build.log");
            s.set(&format!("cargo build --release in {} (log: {})", installer_build::compiled_in(), log.display()));
            let inputs =
                InstallerBuildInputs { workspace: project.root.clone(), version: project.version.clone(), log };
            installer_build::build_for_image(&inputs, root, &self.cx.cache, &project.appliance.suite)
        })
    }

    /// Step "payload debs": the appliance's own .deb files, fetched and checked.
    fn payload_debs(&self) -> Result<Vec<PathBuf>> {
        let project = self.project();
        let appliance = &project.appliance;
        stage("payload debs", |s| {
            s.set(&format!("{} package(s) from payload.debs", appliance.payload.debs.len()));
            payload_debs::resolve(
                &project.root,
                &project.lb_config_dir().join("appliance.toml"),
                &appliance.payload.debs,
                &appliance.architecture,
                &self.cx.cache,
                &self.cx.fresh_log("payload-debs.log"),
            )
        })
    }

    /// Step "lb build": live-build in the build root, with the chroot cache.
    fn lb_build(
        &self,
        root: &BuildRoot,
        tree: &LiveBuildTree,
        kernel: &KernelPackage,
        installer: &ImageInstaller,
        payload_debs: Vec<PathBuf>,
        lock: &LockPlan,
    ) -> Result<(BuiltImage, BTreeMap<String, LockedFile>)> {
        let project = self.project();
        let log = self.cx.fresh_log("lb-build.log");
        let store = PackageStore::new(&self.cx.cache);
        let mode = match lock {
            LockPlan::Locked { lock, .. } => {
                apt_proxy::Mode::Replay(lock.image_files().map(|(_, f)| (f.url.clone(), f)).collect())
            }
            LockPlan::Unlocked | LockPlan::Recording { .. } => self.recording_proxy("apt-fetch.log"),
        };
        let proxy_log = self.cx.fresh_log("apt-proxy.log");
        let proxy = AptProxy::start(mode, PackageStore::new(&self.cx.cache), &proxy_log)?;
        let inputs = LbBuildInputs {
            root,
            tree,
            build_dir: project.work_dir().join("build"),
            image_stem: self.stem.clone(),
            source_date_epoch: self.epoch,
            log: log.clone(),
            kernel,
            payload_debs,
            installer,
            version: project.version.clone(),
            compression: self.args.compression,
            chroot_cache: Some(ChrootCache::new(&self.cx.cache)),
            fresh_chroot: self.args.fresh_chroot || matches!(lock, LockPlan::Recording { .. }),
            apt_proxy: proxy.url(),
            lock: match lock {
                LockPlan::Locked { lock, .. } => Some(lock),
                _ => None,
            },
            without_live_build_cache: matches!(lock, LockPlan::Recording { .. }),
        };
        let built = stage("lb build", |s| {
            let phase_start = std::time::Instant::now();
            s.set(&format!("starting (log: {})", log.display()));
            let built = lb_build::build(&inputs, &mut |lb_stage, helper| {
                let at = progress::format_duration(phase_start.elapsed());
                match helper {
                    None => s.set(&format!("lb {lb_stage} [{at}]")),
                    Some(helper) => s.set_detail(&format!("lb {lb_stage} > {helper} [{at}]")),
                }
            });
            let report = proxy.finish();
            let built = match (built, lock) {
                (Err(error), LockPlan::Locked { path, .. }) if !report.missing.is_empty() => {
                    return Err(lacking_files(error, "lb build", &report, path, &proxy_log));
                }
                (built, _) => built?,
            };
            let key = &built.packages_key[..16];
            match &built.chroot {
                ChrootSource::Cached => {
                    println!(
                        "lb build: chroot with its packages cached (key {key}); ran includes, hooks and the binary stage"
                    )
                }
                ChrootSource::Built(why) => println!("lb build: chroot with its packages built (key {key}): {why}"),
            }
            let (bytes, files) = store.size();
            println!(
                "lb build: {} files through the apt proxy (log: {}); the package store holds {files} files, {:.0} MB",
                report.served.len(),
                proxy_log.display(),
                bytes as f64 / 1e6
            );
            Ok((built, report))
        })?;
        let (built, report) = built;
        Ok((built, report.served))
    }

    /// Step "package lock" again, when recording: what the build root and `lb build` fetched,
    /// written into the lock.
    fn record_lock(
        &self,
        lock: &LockPlan,
        root_files: &BTreeMap<String, LockedFile>,
        image_files: &BTreeMap<String, LockedFile>,
    ) -> Result<Option<PackageLock>> {
        let LockPlan::Recording { path, inputs } = lock else {
            return Ok(None);
        };
        let store = PackageStore::new(&self.cx.cache);
        let recorded = store.lock_of_recording(image_files, root_files, inputs.clone())?;
        recorded.write(path)?;
        println!(
            "package lock: {} packages and {} indexes, and the build root's {} packages and {} indexes \
             (archive state {}), written to {}",
            recorded.packages.len(),
            recorded.indexes.len(),
            recorded.build_root_packages.len(),
            recorded.build_root_indexes.len(),
            recorded.snapshot_time,
            path.display()
        );
        Ok(Some(recorded))
    }

    /// Step "vm images" (with `--vm-images`): the generic VM images, made from the ISO just
    /// built by the host-built installer engine (as `cargo xtask disk` makes them).
    fn vm_images(&self, image: &BuiltImage) -> Result<Vec<PathBuf>> {
        if !self.args.vm_images {
            return Ok(Vec::new());
        }
        let project = self.project();
        doctor::ensure(&[Purpose::Disk])?;
        let installer = stage("installer build (host, for the VM images)", |_| {
            installer_build::build(&InstallerBuildInputs::of(project))
        })?;
        stage("vm images", |s| {
            let log = self.cx.fresh_log("vm-images.log");
            s.set(&format!("the generic image, by the installer engine (log: {})", log.display()));
            crate::disk_image::publishable_images(&mut crate::disk_image::PublishableImages {
                dir: &project.work_dir().join("vm-images"),
                iso: &image.iso,
                installer: &installer.path,
                stem: &self.stem,
                payload: &project.appliance.payload,
                log: &log,
                on_step: &mut |step| s.set(step),
            })
        })
    }

    /// Step "sbom": the SBOM (SPDX, CycloneDX) and the provenance statement, from the finished
    /// chroot, the local packages and the installer's crates.
    fn sbom(
        &self,
        image: &BuiltImage,
        root: &BuildRoot,
        kernel: &KernelPackage,
        digest: &str,
        lock: &LockPlan,
    ) -> Result<Vec<PathBuf>> {
        let lock_sha256 = match lock {
            LockPlan::Locked { path, .. } => Some(crate::stages::checksums::sha256_file(path)?),
            _ => None,
        };
        let project = self.project();
        let appliance = &project.appliance;
        stage("sbom", |s| {
            s.set("the image's packages, licences and the installer's crates");
            let mut local = vec![sbom::LocalDeb::read(&kernel.deb)?];
            for deb in &image.payload_debs {
                local.push(sbom::LocalDeb::read(deb)?);
            }
            let manifest = std::fs::read_to_string(&image.installed_packages)
                .with_context(|| format!("reading {}", image.installed_packages.display()))?;
            let mut debs = sbom::read_image(&image.chroot_dir, &image.installed_packages, &manifest, &local)?;
            let kernel_name = &local[0].name;
            let config_sha256 = crate::stages::checksums::sha256_file(&kernel.config)?;
            for deb in debs.iter_mut().filter(|d| &d.name == kernel_name) {
                deb.notes = vec![
                    ("kernel-source".to_owned(), project.kernel_pin.source.describe()),
                    ("kernel-config-sha256".to_owned(), config_sha256.clone()),
                    ("kernel-cache-key".to_owned(), kernel.key.clone()),
                ];
            }
            let contents = sbom::ImageContents {
                debs,
                installer_version: project.version.clone(),
                crates: sbom::installer_crates(&project.root)?,
            };
            s.set("hashing the ISO");
            let iso_sha256 = crate::stages::checksums::sha256_file(&image.iso)?;
            let packages_sha256 = crate::stages::checksums::sha256_file(&image.installed_packages)?;
            let (commit, dirty) = sbom::git_state(&project.root);
            let iso_name = project.iso_file_name();
            let facts = sbom::BuildFacts {
                stem: &self.stem,
                name: &appliance.name,
                version: &project.version,
                suite: &appliance.suite,
                architecture: &appliance.architecture,
                source_date_epoch: self.epoch,
                inputs_digest: digest,
                iso_name: &iso_name,
                iso_sha256: &iso_sha256,
                commit: commit.as_deref(),
                dirty,
                repository: None,
                packages_sha256: &packages_sha256,
                payload: appliance.payload.profile.as_deref().unwrap_or_default(),
                compression: self.args.compression.name(),
                kernel_key: &kernel.key,
                build_root_key: &root.key,
                packages_key: &image.packages_key,
                package_lock_sha256: lock_sha256.as_deref(),
            };
            let files = sbom::write(&project.work_dir().join("sbom"), &facts, &contents)?;
            s.set(&format!(
                "{} Debian packages, {} crates{}",
                contents.debs.len(),
                contents.crates.len(),
                if dirty { " (the work tree has uncommitted changes: the provenance says so)" } else { "" }
            ));
            let mut documents: Vec<PathBuf> = files.all().iter().map(|p| p.to_path_buf()).collect();
            // The lock goes out with the image (signed by the sums): with the release's tag it
            // is what a rebuild needs.
            if let LockPlan::Locked { path, .. } = lock {
                let published =
                    project.work_dir().join("sbom").join(format!("{}{}", self.stem, publish::PACKAGE_LOCK_SUFFIX));
                std::fs::copy(path, &published).with_context(|| format!("copying {}", path.display()))?;
                documents.push(published);
            }
            Ok(documents)
        })
    }

    /// Step "publish": sums, signatures and build info into `dist/`, atomically.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        image: &BuiltImage,
        vm_images: &[PathBuf],
        documents: &[PathBuf],
        root: &BuildRoot,
        tree: &LiveBuildTree,
        kernel: &KernelPackage,
        digest: &str,
    ) -> Result<Signer> {
        let project = self.project();
        let appliance = &project.appliance;
        stage("publish", |s| {
            s.set("loading signing key");
            let signer = Signer::new(&self.key_source)?;
            let info = BuildInfo {
                name: appliance.name.clone(),
                version: project.version.clone(),
                debian_version: crate::project::appliance::debian_version(&project.version),
                payload: appliance.payload.profile.clone().unwrap_or_default(),
                suite: appliance.suite.clone(),
                architecture: appliance.architecture.clone(),
                source_date_epoch: self.epoch,
                inputs_digest: digest.to_owned(),
                config_digest: tree.digest.clone(),
                build_root_key: root.key.clone(),
                kernel_release: kernel.release.clone(),
                kernel_key: kernel.key.clone(),
                squashfs_compression: self.args.compression.name().to_owned(),
                packages_key: image.packages_key.clone(),
                // A development key is new for every build: its fingerprint is in the key file.
                signing_key: if signer.is_development { String::new() } else { signer.fingerprint.clone() },
                development_signature: signer.is_development,
                vm_images: vm_images
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect(),
            };
            let artifacts = Artifacts {
                iso: &image.iso,
                installed_packages: &image.installed_packages,
                vm_images,
                documents,
                stem: &self.stem,
            };
            let files = publish::publish(&artifacts, &info, &signer, &self.dist, &mut |step| s.set(step))?;
            println!("published to {} in {}:", self.dist.display(), progress::format_duration(self.started.elapsed()));
            for file in &files {
                println!("  {}", file.file_name().unwrap_or_default().to_string_lossy());
            }
            Ok(signer)
        })
    }

    /// Says which key signed, loudly when it is the throwaway development key.
    fn report_signature(&self, signer: &Signer) {
        if signer.is_development {
            println!(
                "NOTE: signed with a throwaway DEVELOPMENT key {}: NOT a release signature \
                 (set ${} or ${} to sign with the release key)",
                signer.fingerprint,
                signing::KEY_FILE_ENV,
                signing::KEY_ENV
            );
        } else {
            println!("signed with key {}", signer.fingerprint);
        }
    }
}

/// Whether `dist` already holds this exact build, signed the way it would be now.
fn is_published(dist: &Path, stem: &str, digest: &str, key_source: &KeySource) -> Result<bool> {
    let Some(published) = publish::published_build(dist, stem) else {
        return Ok(false);
    };
    let same_signer = match signing::release_fingerprint(key_source)? {
        None => published.development_signature,
        Some(fpr) => !published.development_signature && published.signing_key == fpr,
    };
    Ok(published.inputs_digest == digest && same_signer)
}
