//! `cargo xtask iso` (and `cargo xtask kernel`): the pipeline, as a list of named stages.
//!
//! manifest -> render -> build root -> package check -> kernel -> installer build -> payload debs
//! -> lb build -> publish
//!
//! Each stage is a function of a small typed input, timed and shown by [`progress::stage`].
//! Before building, the digest of every input is compared with the published build's: when
//! nothing changed (and the same key would sign), the command says so and stops.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::build_root::{self, BuildRoot, BuildRootSpec};
use crate::chroot_cache::ChrootCache;
use crate::digest::Hasher;
use crate::doctor::{self, Purpose};
use crate::installer_build::{self, InstallerBuildInputs};
use crate::kernel::{self, KernelInputs, KernelPackage};
use crate::lb_build::{self, ChrootSource, Compression, LbBuildInputs};
use crate::payload_debs;
use crate::progress::{self, stage};
use crate::project::{self, Project};
use crate::publish::{self, Artifacts, BuildInfo};
use crate::render::{self, RenderInputs, RenderedConfig};
use crate::signing::{self, KeySource, Signer};

#[derive(Debug, clap::Args)]
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
}

/// Everything the image depends on, in one digest: what live-build is given, the build root
/// it runs in, the kernel, the installer's sources, the payload's own .debs, the timestamp it
/// is built with, and the version it is named after.
pub struct ImageInputs<'a> {
    pub config: &'a RenderedConfig,
    pub root: &'a BuildRoot,
    pub kernel_key: &'a str,
    pub installer_digest: &'a str,
    pub payload_debs_digest: &'a str,
    pub epoch: u64,
    pub version: &'a str,
    pub compression: Compression,
}

impl ImageInputs<'_> {
    pub fn digest(&self) -> String {
        Hasher::new()
            .field("config", &self.config.digest)
            .field("build-root", &self.root.key)
            .field("kernel", self.kernel_key)
            .field("installer", self.installer_digest)
            .field("payload-debs", self.payload_debs_digest)
            .field("source-date-epoch", self.epoch.to_string())
            .field("version", self.version)
            .field("squashfs-compression", self.compression.name())
            .hex()
    }
}

/// The machine-wide paths and logs a run uses.
struct Pipeline<'a> {
    project: &'a Project,
    cache: PathBuf,
    logs: PathBuf,
}

impl<'a> Pipeline<'a> {
    fn new(project: &'a Project) -> Result<Pipeline<'a>> {
        let logs = project.logs_dir();
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Pipeline { project, cache: project::cache_dir(), logs })
    }

    fn fresh_log(&self, name: &str) -> PathBuf {
        let log = self.logs.join(name);
        let _ = std::fs::remove_file(&log);
        log
    }

    fn root_spec(&self) -> BuildRootSpec {
        BuildRootSpec::for_image(&self.project.manifest)
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
            source_date_epoch: project::source_date_epoch_of(&project.root, Some("kernel"))?,
            log,
        })
    }

    /// Stage "build root".
    fn build_root(&self) -> Result<BuildRoot> {
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
    fn kernel(&self, root: &BuildRoot) -> Result<KernelPackage> {
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

/// The cache keys of the build root and the kernel for the project as it is now.
pub fn cache_keys(project: &Project) -> Result<(String, String)> {
    let cx = Pipeline::new(project)?;
    let root = build_root::planned(&cx.root_spec(), &cx.cache);
    let kernel = cx.kernel_inputs(&root, PathBuf::new())?.key()?;
    Ok((root.key, kernel))
}

/// `cargo xtask kernel`: build (or find in the cache) the kernel package.
pub fn run_kernel(project: &Project) -> Result<()> {
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

pub fn run(project: &Project, args: &IsoArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let manifest = &project.manifest;
    let dist = args.dist.clone().unwrap_or_else(|| project.default_dist_dir());
    let stem = project.image_stem();
    let cx = Pipeline::new(project)?;

    doctor::ensure(&[Purpose::Build])?;
    let epoch = project::source_date_epoch(&project.root)?;
    let config = stage("render", |_| render::render(&RenderInputs::of(project), &project.default_config_dir()))?;
    let key_source = KeySource::from_env()?;
    let planned_root = build_root::planned(&cx.root_spec(), &cx.cache);
    let kernel_key = cx.kernel_inputs(&planned_root, PathBuf::new())?.key()?;
    let installer_digest = installer_build::source_digest(&project.root)?;
    let payload_debs_digest = payload_debs::inputs_digest(&project.root, &manifest.payload.debs)?;
    let digest = ImageInputs {
        config: &config,
        root: &planned_root,
        kernel_key: &kernel_key,
        installer_digest: &installer_digest,
        payload_debs_digest: &payload_debs_digest,
        epoch,
        version: &project.version,
        compression: args.compression,
    }
    .digest();
    if !args.force && is_published(&dist, &stem, &digest, &key_source)? {
        println!(
            "up to date: {} was built from these exact inputs (digest {}); use --force to rebuild",
            dist.join(project.iso_file_name()).display(),
            &digest[..16]
        );
        return Ok(());
    }

    let root = cx.build_root()?;
    stage("package check", |_| build_root::check_packages_exist(&root, &config.packages, &manifest.suite))?;
    let kernel = cx.kernel(&root)?;
    let installer = stage("installer build", |s| {
        let log = cx.fresh_log("installer-build.log");
        s.set(&format!("cargo build --release in {} (log: {})", installer_build::compiled_in(), log.display()));
        let inputs = InstallerBuildInputs { workspace: project.root.clone(), version: project.version.clone(), log };
        installer_build::build_for_image(&inputs, &root, &cx.cache, &manifest.suite)
    })?;
    let payload_debs = stage("payload debs", |s| {
        s.set(&format!("{} package(s) from payload.debs", manifest.payload.debs.len()));
        payload_debs::resolve(
            &project.root,
            &project.lb_config_dir().join("appliance.toml"),
            &manifest.payload.debs,
            &manifest.architecture,
            &cx.cache,
            &cx.fresh_log("payload-debs.log"),
        )
    })?;

    let lb_log = cx.fresh_log("lb-build.log");
    let built = stage("lb build", |s| {
        let phase_start = std::time::Instant::now();
        s.set(&format!("starting (log: {})", lb_log.display()));
        let inputs = LbBuildInputs {
            root: &root,
            config: &config,
            build_dir: project.work_dir().join("build"),
            image_stem: stem.clone(),
            source_date_epoch: epoch,
            log: lb_log.clone(),
            kernel_deb: kernel.deb.clone(),
            kernel_release: kernel.release.clone(),
            payload_debs: payload_debs.clone(),
            installer: installer.engine.clone(),
            installer_gui: installer.gui.clone(),
            version: project.version.clone(),
            compression: args.compression,
            chroot_cache: Some(ChrootCache::new(&cx.cache)),
            fresh_chroot: args.fresh_chroot,
        };
        let built = lb_build::build(&inputs, &mut |lb_stage, helper| {
            let at = progress::format_duration(phase_start.elapsed());
            match helper {
                None => s.set(&format!("lb {lb_stage} [{at}]")),
                Some(helper) => s.set_detail(&format!("lb {lb_stage} > {helper} [{at}]")),
            }
        })?;
        let key = &built.packages_key[..16];
        match &built.chroot {
            ChrootSource::Cached => {
                println!(
                    "lb build: chroot with its packages cached (key {key}); ran includes, hooks and the binary stage"
                )
            }
            ChrootSource::Built(why) => println!("lb build: chroot with its packages built (key {key}): {why}"),
        }
        Ok(built)
    })?;

    let signer = stage("publish", |s| {
        s.set("loading signing key");
        let signer = Signer::new(&key_source)?;
        let info = BuildInfo {
            name: manifest.name.clone(),
            version: project.version.clone(),
            suite: manifest.suite.clone(),
            architecture: manifest.architecture.clone(),
            source_date_epoch: epoch,
            inputs_digest: digest.clone(),
            config_digest: config.digest.clone(),
            build_root_key: root.key.clone(),
            kernel_release: kernel.release.clone(),
            kernel_key: kernel.key.clone(),
            squashfs_compression: args.compression.name().to_owned(),
            packages_key: built.packages_key.clone(),
            signing_key: signer.fingerprint.clone(),
            development_signature: signer.is_development,
        };
        let artifacts = Artifacts { iso: &built.iso, package_manifest: &built.package_manifest, stem: &stem };
        let files = publish::publish(&artifacts, &info, &signer, &dist, &mut |step| s.set(step))?;
        println!("published to {} in {}:", dist.display(), progress::format_duration(started.elapsed()));
        for file in &files {
            println!("  {}", file.file_name().unwrap_or_default().to_string_lossy());
        }
        Ok(signer)
    })?;

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
    Ok(())
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
