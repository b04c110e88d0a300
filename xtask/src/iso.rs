//! `cargo xtask iso`: the pipeline, as a list of named stages.
//!
//! manifest -> render -> build root -> package check -> lb build -> publish (sums, signatures)
//!
//! Each stage is a function of a small typed input, timed and shown by [`progress::stage`].
//! Before building, the digest of every input is compared with the published build's: when
//! nothing changed (and the same key would sign), the command says so and stops.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::build_root::{self, BuildRootSpec};
use crate::digest::Hasher;
use crate::doctor::{self, Purpose};
use crate::lb_build::{self, LbBuildInputs};
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
}

/// Everything the image depends on, in one digest: what live-build is given, the build root
/// it runs in, the timestamp it is built with, and the version it is named after.
pub fn inputs_digest(
    config: &RenderedConfig,
    root: &BuildRootSpec,
    epoch: u64,
    version: &str,
) -> String {
    Hasher::new()
        .field("config", &config.digest)
        .field("build-root", root.key())
        .field("source-date-epoch", epoch.to_string())
        .field("version", version)
        .hex()
}

pub fn run(project: &Project, args: &IsoArgs) -> Result<()> {
    let started = std::time::Instant::now();
    let manifest = &project.manifest;
    let dist = args
        .dist
        .clone()
        .unwrap_or_else(|| project.default_dist_dir());
    let stem = format!(
        "{}-{}",
        manifest.image_name(&project.version),
        manifest.architecture
    );
    let cache = project::cache_dir();
    let logs = project.logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    doctor::ensure(&[Purpose::Build])?;
    let epoch = project::source_date_epoch(&project.root)?;
    let config = stage("render", |_| {
        render::render(&RenderInputs::of(project), &project.default_config_dir())
    })?;
    let root_spec = BuildRootSpec::for_image(manifest);
    let key_source = KeySource::from_env()?;
    let digest = inputs_digest(&config, &root_spec, epoch, &project.version);

    if !args.force
        && let Some(published) = publish::published_build(&dist, &stem)
    {
        {
            let wanted_key = signing::release_fingerprint(&key_source)?;
            let same_signer = match &wanted_key {
                None => published.development_signature,
                Some(fpr) => !published.development_signature && &published.signing_key == fpr,
            };
            if published.inputs_digest == digest && same_signer {
                println!(
                    "up to date: {} was built from these exact inputs (digest {}); use --force to rebuild",
                    dist.join(project.iso_file_name()).display(),
                    &digest[..16]
                );
                return Ok(());
            }
        }
    }

    let root_log = logs.join("build-root.log");
    let _ = std::fs::remove_file(&root_log);
    let root = stage("build root", |s| {
        if build_root::cached(&root_spec, &cache).is_some() {
            s.set("cached");
        } else {
            s.set(&format!(
                "debootstrap {} (log: {})",
                root_spec.suite,
                root_log.display()
            ));
        }
        build_root::ensure(&root_spec, &cache, &root_log, &mut |_| {})
    })?;
    stage("package check", |_| {
        build_root::check_packages_exist(&root, &config.packages, &manifest.suite)
    })?;

    let lb_log = logs.join("lb-build.log");
    let _ = std::fs::remove_file(&lb_log);
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
        };
        lb_build::build(&inputs, &mut |lb_stage, helper| {
            let at = progress::format_duration(phase_start.elapsed());
            match helper {
                None => s.set(&format!("lb {lb_stage} [{at}]")),
                Some(helper) => s.set_detail(&format!("lb {lb_stage} > {helper} [{at}]")),
            }
        })
    })?;

    let info_without_key = |signer: &Signer| BuildInfo {
        name: manifest.name.clone(),
        version: project.version.clone(),
        suite: manifest.suite.clone(),
        architecture: manifest.architecture.clone(),
        source_date_epoch: epoch,
        inputs_digest: digest.clone(),
        config_digest: config.digest.clone(),
        build_root_key: root.key.clone(),
        signing_key: signer.fingerprint.clone(),
        development_signature: signer.is_development,
    };
    let published = stage("publish", |s| {
        s.set("loading signing key");
        let signer = Signer::new(&key_source)?;
        let artifacts = Artifacts {
            iso: &built.iso,
            package_manifest: &built.package_manifest,
            stem: &stem,
        };
        let files = publish::publish(
            &artifacts,
            &info_without_key(&signer),
            &signer,
            &dist,
            &mut |step| s.set(step),
        )?;
        Ok((files, signer.is_development, signer.fingerprint.clone()))
    })?;

    let (files, development, fingerprint) = published;
    println!(
        "published to {} in {}:",
        dist.display(),
        progress::format_duration(started.elapsed())
    );
    for file in &files {
        println!(
            "  {}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    if development {
        println!(
            "NOTE: signed with a throwaway DEVELOPMENT key {fingerprint}: NOT a release signature \
             (set ${} or ${} to sign with the release key)",
            signing::KEY_FILE_ENV,
            signing::KEY_ENV
        );
    } else {
        println!("signed with key {fingerprint}");
    }
    Ok(())
}
