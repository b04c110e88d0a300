//! `cargo xtask disk`: a ready-to-boot appliance disk image (raw or qcow2), for VMs.
//!
//! The image is made by the same installer engine the ISO runs, pointed at a loop device
//! attached to a sparse file: `truthdb-installer install --disk /dev/loopN`, with the ISO's
//! root file system as the source. It runs in a private mount namespace (`unshare --mount`),
//! so no mount outlives it, and the loop device is detached whatever happens. The image is
//! written as `<output>.partial` and renamed into place only when complete.
//!
//! Without `--config` the image is generic: the engine installs with `provision =
//! "first-boot"` (see `GENERIC_CONFIG`), and the appliance provisions itself when it first boots.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util::progress::{format_duration, stage};
use crate::util::run::Cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    fn extension(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct DiskArgs {
    /// Install config (TOML): host name, admin account, database password and `wipe = true`,
    /// for an image pre-provisioned for one machine. A `[disk]` selector is not needed (the
    /// image is the disk). Without it: a generic image, with no admin, no secrets, no host keys,
    /// no machine-id and no database, provisioned on its first boot from cloud-init (NoCloud,
    /// config drive) or systemd credentials (README: "Deploying the VM image").
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "raw")]
    pub format: DiskFormat,
    /// Disk size in GiB (a sparse file: only what is written takes space). Default: 12, or
    /// more when the payload needs a larger data partition (truthdb: 22).
    #[arg(long)]
    pub size_gib: Option<u64>,
    /// Where to write the image (default: target/truthdb-os/disk-images/<name>-<version>-<arch>.<format>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// ISO to take the system from (default: build or reuse the one in dist/).
    #[arg(long)]
    pub iso: Option<PathBuf>,
}

/// What [`build`] needs: all paths explicit.
pub struct DiskImageInputs<'a> {
    pub iso: &'a Path,
    pub config: &'a Path,
    pub installer: &'a Path,
    pub format: DiskFormat,
    pub size_gib: u64,
    pub output: &'a Path,
    pub log: &'a Path,
}

/// A loop device, detached when dropped.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> Result<LoopDevice> {
        let device = Cmd::new("losetup").args(["--find", "--show"]).arg(file).read()?;
        Ok(LoopDevice(device.trim().to_owned()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Cmd::new("losetup").args(["--detach", &self.0]).run();
    }
}

/// The engine, inside a private mount namespace: the image's root file system (extracted from
/// the ISO with xorriso, since a host kernel may lack iso9660) is mounted there to read the
/// image spec, then the installer runs.
const IN_NAMESPACE: &str = r#"
set -eu
iso=$1 work=$2 config=$3 disk=$4 installer=$5 log=$6
mkdir -p "$work/root"
xorriso -osirrox on -indev "$iso" -extract /live/filesystem.squashfs "$work/filesystem.squashfs" 2>>"$log.xorriso"
mount -t squashfs -o loop,ro "$work/filesystem.squashfs" "$work/root"
exec "$installer" install --config "$config" --disk "$disk" \
    --source "$work/filesystem.squashfs" --spec "$work/root/usr/lib/truthdb/image.toml" \
    --no-boot-entry --work-dir "$work/engine" --log "$log.engine"
"#;

/// Builds the image; `on_line` gets the engine's progress lines.
pub fn build(inputs: &DiskImageInputs, on_line: &mut dyn FnMut(&str)) -> Result<()> {
    if let Some(dir) = inputs.output.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let beside = |suffix: &str| {
        let mut name = inputs.output.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let partial = beside(".partial");
    let raw = if inputs.format == DiskFormat::Raw { partial.clone() } else { beside(".raw.partial") };
    let result = (|| {
        let file = std::fs::File::create(&raw).with_context(|| format!("creating {}", raw.display()))?;
        file.set_len(inputs.size_gib << 30).with_context(|| format!("sizing {}", raw.display()))?;
        drop(file);
        let work = tempfile::Builder::new().prefix("truthdb-disk-").tempdir()?;
        {
            let device = LoopDevice::attach(&raw)?;
            Cmd::new("unshare")
                .args([
                    "--mount",
                    "--propagation",
                    "private",
                    "--fork",
                    "--pid",
                    "--kill-child",
                    "sh",
                    "-c",
                    IN_NAMESPACE,
                    "sh",
                ])
                .arg(inputs.iso)
                .arg(work.path())
                .arg(inputs.config)
                .arg(&device.0)
                .arg(inputs.installer)
                .arg(inputs.log)
                // A killed xtask must not leave the installer writing to the loop device.
                .die_with_parent()
                .run_logged(inputs.log, |line| on_line(line))
                .with_context(|| format!("the installer failed on {} (log: {})", device.0, inputs.log.display()))?;
        }
        if inputs.format == DiskFormat::Qcow2 {
            Cmd::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&partial).run()?;
            std::fs::remove_file(&raw)?;
        }
        std::fs::rename(&partial, inputs.output)
            .with_context(|| format!("moving the image into place at {}", inputs.output.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&raw);
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// What [`publishable_images`] needs.
pub struct PublishableImages<'a> {
    /// Work directory; the images are left here, named as published.
    pub dir: &'a Path,
    pub iso: &'a Path,
    pub installer: &'a Path,
    /// `<name>-<version>-<arch>`.
    pub stem: &'a str,
    pub payload: &'a crate::project::appliance::Payload,
    pub log: &'a Path,
    pub on_step: &'a mut dyn FnMut(&str),
}

/// The generic image as releases publish it: `<stem>.qcow2` (qcow2 with compressed clusters,
/// bootable as it is) and `<stem>.raw.zst` (the raw disk, zstd), at the payload's default disk
/// size (a VM's disk may be larger: the data partition grows into it on boot).
pub fn publishable_images(p: &mut PublishableImages) -> Result<Vec<PathBuf>> {
    let dir = p.dir;
    crate::util::fsx::remove_if_present(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = write_generic_config(dir)?;
    let raw = dir.join(format!("{}.raw", p.stem));
    let (_, size_gib) = disk_sizes_gib(p.payload);
    let inputs = DiskImageInputs {
        iso: p.iso,
        config: &config,
        installer: p.installer,
        format: DiskFormat::Raw,
        size_gib,
        output: &raw,
        log: p.log,
    };
    let on_step = &mut *p.on_step;
    build(&inputs, &mut |line| {
        if let Some(progress) = engine_progress(line) {
            on_step(progress);
        }
    })?;
    let qcow2 = dir.join(format!("{}.qcow2", p.stem));
    on_step(&format!("compressing {}", qcow2.display()));
    // -W -m 8: clusters compressed on every core, written out of order (34 s -> 21 s here).
    Cmd::new("qemu-img").args(["convert", "-c", "-W", "-m", "8", "-O", "qcow2"]).arg(&raw).arg(&qcow2).run()?;
    let zst = dir.join(format!("{}.raw.zst", p.stem));
    on_step(&format!("compressing {}", zst.display()));
    // zstd's default level: 16 s here against 48 s at -6, for a 5 % larger file.
    Cmd::new("zstd").args(["-q", "-T0", "-3", "-o"]).arg(&zst).arg(&raw).run()?;
    std::fs::remove_file(&raw).with_context(|| format!("removing {}", raw.display()))?;
    Ok(vec![qcow2, zst])
}

/// The smallest disk the payload installs on and the default size, in GiB: the installer's
/// own layout (ESP, root, and the data partition at the payload's `min_data_gib` or the
/// installer's minimum), rounded up; the default leaves a GiB more for data.
pub fn disk_sizes_gib(payload: &crate::project::appliance::Payload) -> (u64, u64) {
    let min = payload_layout(payload).min_disk_bytes().div_ceil(1 << 30);
    (min, min + 1)
}

/// The installer's layout with the payload's smallest data partition.
fn payload_layout(payload: &crate::project::appliance::Payload) -> truthdb_installer::plan::Layout {
    truthdb_installer::plan::Layout::default().with_min_data_gib(payload.min_data_gib)
}

/// The install config of a generic image: nothing of any one machine's (the host name is the
/// image's default until cloud-init's meta-data names it).
pub const GENERIC_CONFIG: &str = "# A generic image: provisioned on its first boot.\nhostname = \"truthdb\"\nwipe = \
                                  true\nprovision = \"first-boot\"\n";

/// The progress part of one of the engine's output lines ("truthdb-installer: [ 23%] copy: ...").
pub fn engine_progress(line: &str) -> Option<&str> {
    line.strip_prefix("truthdb-installer: ")
}

/// Writes [`GENERIC_CONFIG`] into `dir`, for the engine's `--config`.
pub fn write_generic_config(dir: &Path) -> Result<PathBuf> {
    let config = dir.join("generic.install.toml");
    std::fs::write(&config, GENERIC_CONFIG).with_context(|| format!("writing {}", config.display()))?;
    Ok(config)
}

/// Refuses a bad config or size before anything is installed, built or asked of sudo; the
/// disk size to use.
pub fn check_args(args: &DiskArgs, payload: &crate::project::appliance::Payload) -> Result<u64> {
    if let Some(config) = &args.config {
        let text =
            std::fs::read_to_string(config).with_context(|| format!("reading install config {}", config.display()))?;
        truthdb_installer::config::InstallConfig::parse(&text, &config.display().to_string())?;
    }
    let (min, default) = disk_sizes_gib(payload);
    let size = args.size_gib.unwrap_or(default);
    if size < min {
        let profile = payload.profile.as_deref().unwrap_or("appliance.toml");
        crate::util::usage_error!(
            "--size-gib {size}: the appliance with the {profile} payload needs at least {min} GiB (ESP, root, and a \
             data partition of at least {} GiB)",
            payload_layout(payload).min_data_bytes >> 30
        );
    }
    Ok(size)
}

impl DiskArgs {
    pub fn run(self, project: &crate::project::Project) -> Result<()> {
        check_args(&self, &project.appliance.payload)?;
        crate::util::host::reexec_as_root_if_needed()?;
        let _lock = project.lock_work_dir()?;
        run(project, &self)
    }
}

/// `cargo xtask disk`.
fn run(project: &crate::project::Project, args: &DiskArgs) -> Result<()> {
    let started = Instant::now();
    let size_gib = check_args(args, &project.appliance.payload)?;
    crate::doctor::ensure(&[crate::doctor::Purpose::Disk])?;
    let generic_config = tempfile::Builder::new().prefix("truthdb-generic-").suffix(".toml").tempfile()?;
    let config = match &args.config {
        Some(config) => std::fs::canonicalize(config)?,
        None => {
            std::fs::write(generic_config.path(), GENERIC_CONFIG)?;
            generic_config.path().to_owned()
        }
    };

    let iso = match &args.iso {
        Some(iso) => iso.clone(),
        None => {
            crate::iso::run(project, &crate::iso::IsoArgs::default())?;
            project.default_iso()
        }
    };
    if !iso.is_file() {
        bail!("no ISO at {}", iso.display());
    }
    let logs = project.logs_dir();
    std::fs::create_dir_all(&logs)?;
    let installer = stage("installer build", |_| {
        crate::stages::installer_build::build(&crate::stages::installer_build::InstallerBuildInputs::of(project))
    })?;
    let output = args.output.clone().unwrap_or_else(|| {
        project.work_dir().join("disk-images").join(format!("{}.{}", project.image_stem(), args.format.extension()))
    });
    let log = logs.join("disk.log");
    let _ = std::fs::remove_file(&log);
    stage("disk image", |s| {
        let kind = if args.config.is_some() { "pre-provisioned" } else { "generic (first-boot provisioning)" };
        s.set(&format!("installing into a {size_gib} GiB {kind} {:?} image (log: {})", args.format, log.display()));
        let inputs = DiskImageInputs {
            iso: &iso,
            config: &config,
            installer: &installer.path,
            format: args.format,
            size_gib,
            output: &output,
            log: &log,
        };
        build(&inputs, &mut |line| {
            if let Some(progress) = engine_progress(line) {
                s.set(progress);
            }
        })
    })?;
    let on_disk = Cmd::new("du").args(["--block-size=1M", "-s"]).arg(&output).read().unwrap_or_default();
    println!(
        "wrote {} ({} GiB disk, {} MiB on the host) in {}",
        output.display(),
        size_gib,
        on_disk.split_whitespace().next().unwrap_or("?"),
        format_duration(started.elapsed())
    );
    println!(
        "boot it with UEFI firmware, e.g. qemu-system-x86_64 -machine q35 -m 2048 \\\n  \
         -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \\\n  \
         -drive if=pflash,format=raw,file=<a copy of OVMF_VARS_4M.fd> \\\n  \
         -drive if=virtio,format={},file={}",
        args.format.extension(),
        output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::project::appliance::Payload;

    #[test]
    fn the_disk_fits_the_payload_s_data_partition() {
        let plain = Payload { data_mount: Some("/var/lib/postgresql".into()), ..Payload::default() };
        assert_eq!(disk_sizes_gib(&plain), (11, 12), "as before profiles");
        let truthdb = Payload { data_mount: Some("/var/lib/truthdb".into()), min_data_gib: Some(12), ..plain.clone() };
        let (min, default) = disk_sizes_gib(&truthdb);
        // The installer's own arithmetic (installer/src/plan.rs) must fit in the minimum.
        let layout = truthdb_installer::plan::Layout { min_data_bytes: 12 << 30, ..Default::default() };
        assert!(layout.min_disk_bytes() <= min << 30, "{} > {min} GiB", layout.min_disk_bytes());
        assert_eq!((min, default), (21, 22));

        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("install.toml");
        std::fs::write(
            &config,
            "hostname = \"db1\"\nwipe = true\n[admin]\nuser = \"dba\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA x\"]\n\
             [database]\nadmin_password = \"a long enough password\"\n",
        )
        .unwrap();
        let args = |size_gib| DiskArgs {
            config: Some(config.clone()),
            format: DiskFormat::Raw,
            size_gib,
            output: None,
            iso: None,
        };
        assert_eq!(check_args(&args(None), &truthdb).unwrap(), 22);
        let msg = format!("{:#}", check_args(&args(Some(16)), &truthdb).unwrap_err());
        assert!(msg.contains("--size-gib 16") && msg.contains("at least 21 GiB") && msg.contains("12 GiB"), "{msg}");
        assert_eq!(check_args(&args(Some(16)), &plain).unwrap(), 16);
    }

    #[test]
    fn a_generic_image_is_installed_with_first_boot_provisioning_and_no_secrets() {
        let config = truthdb_installer::config::InstallConfig::parse(GENERIC_CONFIG, "generic").unwrap();
        assert_eq!(config.provision, truthdb_installer::config::Provision::FirstBoot);
        assert!(config.provisioned().is_none());
    }
}
