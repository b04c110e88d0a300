//! The install itself: partition, format, copy the image's root file system, make it the
//! appliance (identity, admin, payload), make it bootable (UKI on the ESP), verify.
//!
//! Everything is done by the real tools, each logged (see [`crate::tool`]); every mount is
//! undone when [`install`] returns, whatever happened (see [`crate::mounts`]). The same code
//! installs from the live system to a real disk and builds disk images on a loop device.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::config::{Admin, InstallConfig};
use crate::block_devices::{Disk, unsuitable};
use crate::error::{Error, Result};
use crate::mounts::Mounts;
use crate::plan::{Layout, Plan, Role};
use crate::events::{Event, Phase};
use crate::spec::ImageSpec;
use crate::tool::{self, Log, Tool, io_error};
use crate::verify;

/// Where the UKI goes: the removable-media fallback path every UEFI firmware boots without
/// an NVRAM entry.
pub const UKI_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// Where ukify writes the UKI inside the installed system's `/run` (a tmpfs) before it is
/// copied onto the ESP.
const UKI_STAGED: &str = "truthdb-BOOTX64.EFI";
/// The install log, in the live system and (copied at the end) on the installed system.
pub const LOG_PATH: &str = "var/log/truthdb-installer.log";

pub struct InstallRequest {
    pub config: InstallConfig,
    pub disk: Disk,
    /// The image's root file system (the live medium's `live/filesystem.squashfs`).
    pub source: PathBuf,
    pub spec: ImageSpec,
    /// Scratch directory for mount points (e.g. `/run/truthdb-installer`).
    pub work_dir: PathBuf,
    /// Add a UEFI boot entry with efibootmgr when the firmware's variables are writable.
    /// Off for disk images: the build host's firmware is not the image's.
    pub efi_boot_entry: bool,
    /// The device the live system booted from, never written.
    pub boot_medium: Option<String>,
}

impl InstallRequest {
    /// An install in the live system: the image from its boot medium onto `disk`, mount points
    /// under /run, a UEFI boot entry when the firmware allows one.
    pub fn from_live_medium(config: InstallConfig, disk: Disk, spec: ImageSpec) -> InstallRequest {
        InstallRequest {
            config,
            disk,
            source: Path::new(crate::medium::MEDIUM_MOUNT).join(crate::medium::SQUASHFS_ON_MEDIUM),
            spec,
            work_dir: PathBuf::from("/run/truthdb-installer"),
            efi_boot_entry: true,
            boot_medium: crate::live_medium_device(),
        }
    }
}

/// What was installed, for the front end's final screen.
#[derive(Debug)]
pub struct InstallReport {
    pub disk: String,
    pub partitions: Vec<(Role, String, String)>,
    pub copied: verify::TreeSummary,
    pub kernel_release: String,
    pub boot_entry: Option<String>,
    /// Bytes in use on the installed file systems (root, ESP, data) when done.
    pub footprint_bytes: u64,
}

/// The layout an image spec asks for.
pub fn layout_for(spec: &ImageSpec) -> Layout {
    Layout { data_partition: spec.payload.data_mount.is_some(), ..Layout::default() }
}

/// Installs to `request.disk`, erasing it. Refuses (without writing) a disk that is the boot
/// medium, too small, read-only, in use (mounted, swap, LVM, LUKS, md, multipath) or no longer
/// the disk that was chosen.
pub fn install(request: &InstallRequest, log: &Log, on_event: &mut dyn FnMut(Event)) -> Result<InstallReport> {
    let layout = layout_for(&request.spec);
    let disk = &request.disk;
    if let Some(reason) = unsuitable(disk, request.boot_medium.as_deref(), layout.min_disk_bytes()) {
        return Err(Error::Refused { disk: disk.describe(), reason });
    }
    if !request.source.is_file() {
        return Err(Error::Config {
            source: request.source.display().to_string(),
            message: "the image's root file system (squashfs) is not there".into(),
        });
    }
    let plan = Plan::new(disk, &layout);
    log.line(&format!("truthdb-installer {}: installing to {}", crate::VERSION, disk.describe()));
    log.line(&plan.to_string());

    // The image is mounted first so the config is checked against its own accounts before
    // anything is written: `useradd --user-group` fails on a name the image already has as
    // a user or a group, and by then the disk would be erased.
    let mut mounts = Mounts::new(log);
    let source = request.work_dir.join("source");
    mounts.mount(&request.source.to_string_lossy(), &source, &["-t", "squashfs", "-o", "loop,ro"])?;
    request.config.validate_against_image(&source).map_err(|message| Error::Config {
        source: format!("(checked against the image {})", request.source.display()),
        message,
    })?;
    let mut emit = |event: Event| {
        log.line(&event.to_string());
        on_event(event);
    };

    // Right before the first write, the disk is read again: still the disk chosen (a front end
    // may have listed the disks minutes ago) and nothing on it in use.
    crate::recheck_before_write(disk)?;
    log.line(&format!("{}: still the disk chosen; nothing on it is in use", disk.path));

    // Partition.
    emit(Event::new(Phase::Partition, 0.0, format!("writing a GPT to {}", disk.path)));
    Tool::new("sfdisk")
        .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always", &disk.path])
        .stdin(plan.sfdisk_script())
        .run(log)?;
    wait_for_partitions(&plan, log)?;

    // Format, with UUIDs chosen here so fstab and the UKI can name them.
    let mut partitions = Vec::new();
    for (i, part) in plan.partitions.iter().enumerate() {
        emit(Event::new(
            Phase::Format,
            i as f64 / plan.partitions.len() as f64,
            format!("{} {}", part.filesystem, part.device),
        ));
        let uuid = match part.role {
            Role::Esp => {
                let id = random_hex(8)?.to_uppercase();
                Tool::new("mkfs.vfat").args(["-F", "32", "-n", part.label, "-i", &id, &part.device]).run(log)?;
                format!("{}-{}", &id[..4], &id[4..])
            }
            Role::Root | Role::Data => {
                let uuid = random_uuid()?;
                Tool::new("mkfs.ext4").args(["-F", "-q", "-L", part.label, "-U", &uuid, &part.device]).run(log)?;
                uuid
            }
        };
        partitions.push((part.role.clone(), part.device.clone(), uuid));
    }
    let uuid_of = |role: Role| partitions.iter().find(|p| p.0 == role).map(|p| p.2.clone());
    let device_of = |role: Role| partitions.iter().find(|p| p.0 == role).map(|p| p.1.clone());

    // Mount the target (the source is mounted above).
    let target = request.work_dir.join("target");
    mounts.mount(&device_of(Role::Root).expect("root"), &target, &[])?;
    let data_mount = request.spec.payload.data_mount.as_deref();
    if let (Some(mount), Some(device)) = (data_mount, device_of(Role::Data)) {
        mounts.mount(&device, &target.join(mount.trim_start_matches('/')), &[])?;
    }

    // The ESP is never mounted: its one file is written with mtools (see `write_uki`), so an
    // install needs no vfat driver in the kernel it runs on (a disk image built on a host
    // whose kernel lacks it).

    // Copy.
    emit(Event::new(Phase::Copy, 0.0, "measuring the image"));
    let expected = verify::summarize(&source)?;
    copy_tree(&request.source, &target, &expected, log, &mut emit)?;
    emit(Event::new(Phase::Copy, 1.0, "checking the copy"));
    let copied = verify::compare_trees(&source, &target, &expected)?;
    log.line(&format!("copy verified: {copied}"));
    mounts.unmount(&source)?;

    // Configure.
    emit(Event::new(Phase::Configure, 0.0, "identity and mounts"));
    mounts.chroot_api(&target)?;
    write_identity(&target, &request.config, &partitions, data_mount)?;
    emit(Event::new(Phase::Configure, 0.2, "removing the live system's packages"));
    remove_live_packages(&target, log)?;
    emit(Event::new(Phase::Configure, 0.7, "admin account and SSH host keys"));
    regenerate_host_keys(&target, log)?;
    create_admin(&target, &request.config, log)?;

    // Payload.
    emit(Event::new(Phase::Payload, 0.0, "enabling the database service"));
    let payload = &request.spec.payload;
    if !payload.services.is_empty() {
        Tool::new("systemctl").arg("enable").args(&payload.services).in_root(&target).run(log)?;
    }
    if let Some(configure) = &payload.configure {
        emit(Event::new(Phase::Payload, 0.2, format!("setting the database up ({configure})")));
        let verifier = postgres_protocol::password::scram_sha_256(request.config.database.admin_password.as_bytes());
        Tool::new(configure)
            .env("TRUTHDB_ADMIN_USER", &request.config.admin.user)
            .env("TRUTHDB_DB_PASSWORD_SCRAM", verifier.clone())
            .env("TRUTHDB_DATA_DIR", data_mount.unwrap_or(""))
            // The verifier is in the environment (root-only in /proc), never in an argument;
            // should PostgreSQL quote the CREATE ROLE statement in an error, the log does not
            // keep it.
            .redact(verifier)
            .in_root(&target)
            .run(log)?;
    }

    // Boot.
    emit(Event::new(Phase::Boot, 0.0, "building the unified kernel image"));
    let kernel_release = kernel_release(&target)?;
    let root_uuid = uuid_of(Role::Root).expect("root");
    let mut cmdline = vec![format!("root=UUID={root_uuid}"), "ro".into(), "rootfstype=ext4".into()];
    cmdline.extend(request.spec.kernel_cmdline.iter().cloned());
    Tool::new("ukify")
        .args([
            "build",
            &format!("--linux=/boot/vmlinuz-{kernel_release}"),
            &format!("--initrd=/boot/initrd.img-{kernel_release}"),
            &format!("--cmdline={}", cmdline.join(" ")),
            "--os-release=@/etc/os-release",
            &format!("--uname={kernel_release}"),
            &format!("--output=/run/{UKI_STAGED}"),
        ])
        .in_root(&target)
        .run(log)?;
    let staged = target.join("run").join(UKI_STAGED);
    verify::check_uki(&staged, &target.join(format!("boot/vmlinuz-{kernel_release}")))?;
    write_uki(&device_of(Role::Esp).expect("esp"), &staged, log)?;
    let boot_entry = if request.efi_boot_entry { add_boot_entry(disk, log) } else { None };

    // Verify, then hand the log over to the installed system.
    emit(Event::new(Phase::Verify, 0.0, "boot files"));
    let read_back = target.join("run/readback.efi");
    Tool::new("mcopy")
        .args(["-n", "-i", &device_of(Role::Esp).expect("esp"), &format!("::/{UKI_PATH}")])
        .arg(read_back.to_string_lossy())
        .run(log)?;
    verify::same_contents(&staged, &read_back)?;
    emit(Event::new(Phase::Verify, 0.3, "file systems"));
    log.line("the installed system's log ends here; the installer's own log goes on");
    copy_log(log, &target)?;
    Tool::new("sync").run(log)?;
    mounts.unmount(&target.join("run"))?;
    let footprint_bytes = verify::used_bytes_below(&target);
    mounts.unmount_all()?;
    verify::check_partition_table(&plan, log)?;
    for (role, device, _) in &partitions {
        match role {
            Role::Esp => Tool::new("fsck.vfat").args(["-n", device]).run(log)?,
            Role::Root | Role::Data => Tool::new("e2fsck").args(["-f", "-n", device]).run(log)?,
        };
    }
    emit(Event::new(Phase::Done, 0.0, format!("installed TruthDB OS {} to {}", request.spec.version, disk.path)));
    Ok(InstallReport { disk: disk.describe(), partitions, copied, kernel_release, boot_entry, footprint_bytes })
}

/// The kernel may not re-read the new table by itself (a loop device, or a kernel without
/// GPT parsing): `partx --update` tells it, then the partition nodes must appear.
fn wait_for_partitions(plan: &Plan, log: &Log) -> Result<()> {
    Tool::new("partx").args(["--update", &plan.disk.path]).run(log)?;
    let _ = Tool::new("udevadm").args(["settle", "--timeout=10"]).run(log);
    for _ in 0..100 {
        if plan.partitions.iter().all(|p| Path::new(&p.device).exists()) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let missing: Vec<&str> =
        plan.partitions.iter().filter(|p| !Path::new(&p.device).exists()).map(|p| p.device.as_str()).collect();
    Err(Error::Tool {
        command: format!("partx --update {}", plan.disk.path),
        message: format!("{} did not appear", missing.join(", ")),
    })
}

fn random_hex(chars: usize) -> Result<String> {
    let mut hex = String::new();
    while hex.len() < chars {
        hex.push_str(&random_uuid()?.replace('-', ""));
    }
    hex.truncate(chars);
    Ok(hex)
}

/// A random UUID from the kernel.
fn random_uuid() -> Result<String> {
    let path = Path::new("/proc/sys/kernel/random/uuid");
    std::fs::read_to_string(path).map(|u| u.trim().to_owned()).map_err(|e| io_error(path, e))
}

/// `unsquashfs` keeps owners, modes, xattrs and hard links; progress is read from the target
/// file systems' growth while it runs.
fn copy_tree(
    squashfs: &Path,
    target: &Path,
    expected: &verify::TreeSummary,
    log: &Log,
    emit: &mut dyn FnMut(Event),
) -> Result<()> {
    let baseline = verify::used_bytes_below(target);
    std::thread::scope(|scope| {
        let copier = scope.spawn(|| {
            Tool::new("unsquashfs")
                .args(["-f", "-no-progress", "-d"])
                .arg(target.to_string_lossy())
                .arg(squashfs.to_string_lossy())
                .run(log)
        });
        let mut last_shown = 0;
        while !copier.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let written = verify::used_bytes_below(target).saturating_sub(baseline);
            let fraction = written as f64 / expected.bytes.max(1) as f64;
            let shown = (fraction * 20.0) as u64;
            if shown > last_shown {
                last_shown = shown;
                emit(Event::new(
                    Phase::Copy,
                    fraction.min(0.99),
                    format!("{} MiB of {} MiB", written >> 20, expected.bytes >> 20),
                ));
            }
        }
        copier.join().expect("the copy thread does not panic")
    })?;
    Ok(())
}

/// fstab by UUID, host name, a machine-id of its own.
fn write_identity(
    target: &Path,
    config: &InstallConfig,
    partitions: &[(Role, String, String)],
    data_mount: Option<&str>,
) -> Result<()> {
    let write = |relative: &str, text: &str| {
        let path = target.join(relative);
        std::fs::write(&path, text).map_err(|e| io_error(&path, e))
    };
    let mut fstab =
        String::from("# Written by truthdb-installer. <file system> <mount point> <type> <options> <dump> <pass>\n");
    for (role, _, uuid) in partitions {
        let line = match role {
            Role::Root => format!("UUID={uuid} / ext4 errors=remount-ro 0 1\n"),
            Role::Esp => format!("UUID={uuid} /boot/efi vfat umask=0077 0 2\n"),
            Role::Data => format!("UUID={uuid} {} ext4 defaults 0 2\n", data_mount.unwrap_or("/srv")),
        };
        fstab.push_str(&line);
    }
    write("etc/fstab", &fstab)?;
    let esp_mount = target.join("boot/efi");
    std::fs::create_dir_all(&esp_mount).map_err(|e| io_error(&esp_mount, e))?;
    write("etc/hostname", &format!("{}\n", config.hostname))?;
    let short = config.hostname.split('.').next().unwrap_or(&config.hostname);
    write(
        "etc/hosts",
        &format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{} {short}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            config.hostname
        ),
    )?;
    write("etc/machine-id", &format!("{}\n", random_hex(32)?))?;
    Ok(())
}

/// Where the image keeps the installed system's initrd, made when the image was built
/// (`hooks/9900-installed-initrd.hook.chroot`): `initrd.img-<release>` per kernel, made by the
/// image's initramfs-tools without the live-* packages' hooks and scripts, with fsck for ext4.
const PREBUILT_INITRD_DIR: &str = "usr/lib/truthdb/installed-initrd";
/// update-initramfs's own settings; `update_initramfs=no` makes `-u` (what initramfs-tools'
/// trigger runs) do nothing.
const UPDATE_INITRAMFS_CONF: &str = "etc/initramfs-tools/update-initramfs.conf";

/// Where the installed system's initrd comes from.
#[derive(Debug, PartialEq, Eq)]
enum InitrdSource {
    /// Every kernel has an initrd made at image build: it is installed as is.
    Prebuilt,
    /// Some kernel has none (an image made before they were, or a kernel added without one):
    /// initramfs-tools rebuilds the initrd in the installed system, as it always did.
    Rebuild { missing: Vec<String> },
}

impl InitrdSource {
    fn choose(releases: &[String], prebuilt_dir: &Path) -> InitrdSource {
        let missing: Vec<String> =
            releases.iter().filter(|r| !prebuilt_initrd(prebuilt_dir, r).is_file()).cloned().collect();
        if releases.is_empty() || !missing.is_empty() {
            InitrdSource::Rebuild { missing }
        } else {
            InitrdSource::Prebuilt
        }
    }
}

fn prebuilt_initrd(prebuilt_dir: &Path, release: &str) -> PathBuf {
    prebuilt_dir.join(format!("initrd.img-{release}"))
}

/// live-boot and live-config belong to the live medium only, and so do their initramfs hooks.
/// Purging them leaves initramfs-tools' trigger pending (`--no-triggers`: letting each purge
/// fire it would rebuild the initrd once per package). The initrd made at image build is
/// already what that trigger would make, so the trigger is processed with initrd updates
/// switched off and the prebuilt initrd takes the live one's place; when the image has none
/// for a kernel, the trigger rebuilds the initrd once (minutes under emulation).
fn remove_live_packages(target: &Path, log: &Log) -> Result<()> {
    let prebuilt_dir = target.join(PREBUILT_INITRD_DIR);
    let releases = kernel_releases(target)?;
    let source = InitrdSource::choose(&releases, &prebuilt_dir);
    match &source {
        InitrdSource::Prebuilt => log.line("initrd: prebuilt at image build"),
        InitrdSource::Rebuild { missing } if missing.is_empty() => {
            log.line("initrd: rebuilt in the installed system (no kernel in /boot)")
        }
        InitrdSource::Rebuild { missing } => log.line(&format!(
            "initrd: rebuilt in the installed system (no initrd made at image build for {})",
            missing.join(", ")
        )),
    }
    let installed = Tool::new("dpkg-query").args(["--show", "--showformat=${Package}\\n"]).in_root(target).run(log)?;
    let live: Vec<&str> = installed.lines().filter(|p| p.starts_with("live-")).collect();
    let purge = || -> Result<()> {
        if !live.is_empty() {
            Tool::new("dpkg").args(["--purge", "--no-triggers"]).args(&live).in_root(target).run(log)?;
            Tool::new("dpkg").args(["--triggers-only", "--pending"]).in_root(target).run(log)?;
        }
        Ok(())
    };
    match source {
        InitrdSource::Prebuilt => {
            with_initrd_updates_off(&target.join(UPDATE_INITRAMFS_CONF), purge)?;
            for release in &releases {
                let from = prebuilt_initrd(&prebuilt_dir, release);
                let to = target.join(format!("boot/initrd.img-{release}"));
                move_file(&from, &to)?;
                log.line(&format!("initrd: /{PREBUILT_INITRD_DIR}/initrd.img-{release} -> /boot/initrd.img-{release}"));
            }
        }
        InitrdSource::Rebuild { .. } => purge()?,
    }
    if prebuilt_dir.exists() {
        std::fs::remove_dir_all(&prebuilt_dir).map_err(|e| io_error(&prebuilt_dir, e))?;
    }
    let leftover =
        Tool::new("dpkg-query").args(["--show", "--showformat=${Package} ${Status}\\n"]).in_root(target).run(log)?;
    if let Some(pending) = leftover.lines().find(|l| l.contains("triggers-")) {
        return Err(Error::Tool {
            command: "dpkg --triggers-only --pending".into(),
            message: format!("a trigger is still pending: {pending}"),
        });
    }
    Ok(())
}

/// Runs `work` with `update_initramfs=no` added at the end of update-initramfs.conf (a shell
/// file: the last assignment wins), then puts the file back as it was: the original is renamed
/// aside and renamed back (same inode, contents, mode and times), or the added file removed
/// when there was none. Put back whether `work` succeeded or not.
fn with_initrd_updates_off<T>(conf: &Path, work: impl FnOnce() -> Result<T>) -> Result<T> {
    let aside = conf.with_extension("conf.truthdb-installer");
    let original = match std::fs::read(conf) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error(conf, e)),
    };
    if let Some(text) = &original {
        std::fs::rename(conf, &aside).map_err(|e| io_error(conf, e))?;
        let mut off = text.clone();
        if !off.is_empty() && !off.ends_with(b"\n") {
            off.push(b'\n');
        }
        off.extend_from_slice(
            b"# truthdb-installer: the initrd made at image build is installed instead\nupdate_initramfs=no\n",
        );
        if let Err(e) = std::fs::write(conf, off) {
            let _ = std::fs::rename(&aside, conf);
            return Err(io_error(conf, e));
        }
    } else {
        std::fs::write(conf, "update_initramfs=no\n").map_err(|e| io_error(conf, e))?;
    }
    let result = work();
    let put_back = match original {
        Some(_) => std::fs::rename(&aside, conf),
        None => std::fs::remove_file(conf),
    };
    match (result, put_back) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(io_error(conf, e)),
        (Ok(value), Ok(())) => Ok(value),
    }
}

/// A rename, or a copy where `from` and `to` are on different file systems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to).map_err(|e| io_error(to, e))?;
            std::fs::remove_file(from).map_err(|e| io_error(from, e))
        }
        Err(e) => Err(io_error(from, e)),
    }
}

/// Host keys made while the image was built would be shared by every appliance.
fn regenerate_host_keys(target: &Path, log: &Log) -> Result<()> {
    let ssh = target.join("etc/ssh");
    if !ssh.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&ssh).map_err(|e| io_error(&ssh, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        }
    }
    Tool::new("ssh-keygen").arg("-A").in_root(target).run(log)?;
    Ok(())
}

/// The commands that make the admin account and set its password, built apart from running
/// them so what reaches their command lines can be checked (the tests: never the hash).
fn admin_account_tools(target: &Path, admin: &Admin) -> Vec<Tool> {
    let user = admin.user.as_str();
    let mut tools = vec![
        Tool::new("useradd")
            .args(["--create-home", "--shell", "/bin/bash", "--user-group", "--groups", "sudo", user])
            .in_root(target),
    ];
    if let Some(hash) = &admin.password_hash {
        // On stdin, not `usermod --password <hash>`: a command line is world-readable in /proc
        // while it runs, and is logged. `-e`: the hash is set as given (chpasswd uses no PAM then).
        tools.push(Tool::new("chpasswd").arg("-e").stdin(format!("{user}:{hash}\n")).redact(hash).in_root(target));
    }
    tools
}

fn create_admin(target: &Path, config: &InstallConfig, log: &Log) -> Result<()> {
    let admin = &config.admin;
    let user = admin.user.as_str();
    for tool in admin_account_tools(target, admin) {
        tool.run(log)?;
    }
    if admin.password_hash.is_none() {
        // Key-only admins have no password to give sudo.
        let path = target.join("etc/sudoers.d/truthdb-admin");
        std::fs::write(&path, format!("{user} ALL=(ALL) NOPASSWD:ALL\n")).map_err(|e| io_error(&path, e))?;
        Tool::new("chmod").args(["0440", "/etc/sudoers.d/truthdb-admin"]).in_root(target).run(log)?;
    }
    if !admin.ssh_authorized_keys.is_empty() {
        let home = format!("/home/{user}/.ssh");
        Tool::new("install").args(["-d", "-m", "0700", "-o", user, "-g", user, &home]).in_root(target).run(log)?;
        let keys = target.join(format!("home/{user}/.ssh/authorized_keys"));
        std::fs::write(&keys, admin.ssh_authorized_keys.join("\n") + "\n").map_err(|e| io_error(&keys, e))?;
        let keys_in_root = format!("{home}/authorized_keys");
        Tool::new("chown").args([&format!("{user}:{user}"), &keys_in_root]).in_root(target).run(log)?;
        Tool::new("chmod").args(["0600", &keys_in_root]).in_root(target).run(log)?;
    }
    Ok(())
}

/// The one kernel the image carries.
fn kernel_release(target: &Path) -> Result<String> {
    match kernel_releases(target)?.as_slice() {
        [one] => Ok(one.clone()),
        other => Err(Error::Tool {
            command: format!("ls {}", target.join("boot").display()),
            message: format!("expected exactly one kernel, found {other:?}"),
        }),
    }
}

/// The kernels in the target's /boot (`vmlinuz-<release>`), sorted.
fn kernel_releases(target: &Path) -> Result<Vec<String>> {
    let boot = target.join("boot");
    let mut releases: Vec<String> = std::fs::read_dir(&boot)
        .map_err(|e| io_error(&boot, e))?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    releases.sort();
    Ok(releases)
}

/// Puts the UKI at the fallback path of the (unmounted) ESP with mtools.
fn write_uki(esp: &str, uki: &Path, log: &Log) -> Result<()> {
    Tool::new("mmd").args(["-i", esp, "::/EFI", "::/EFI/BOOT"]).run(log)?;
    Tool::new("mcopy").args(["-i", esp]).arg(uki.to_string_lossy()).arg(format!("::/{UKI_PATH}")).run(log)?;
    Ok(())
}

/// A named boot entry is a convenience: the fallback path boots without one, so a firmware
/// that refuses the entry is logged, not fatal.
fn add_boot_entry(disk: &Disk, log: &Log) -> Option<String> {
    if !Path::new("/sys/firmware/efi/efivars").is_dir() {
        log.line("no EFI variables (not booted by UEFI): no boot entry added; the fallback path boots");
        return None;
    }
    let loader = format!("\\{}", UKI_PATH.replace('/', "\\"));
    match Tool::new("efibootmgr")
        .args(["--create", "--disk", &disk.path, "--part", "1", "--label", "TruthDB OS", "--loader", &loader])
        .run(log)
    {
        Ok(_) => Some(format!("TruthDB OS ({loader})")),
        Err(e) => {
            log.line(&format!("warning: no boot entry added: {e}"));
            None
        }
    }
}

/// The installed system keeps the install log readable by root only, as the live system's
/// (whatever mode the live copy has by then, or a file of that name in the image).
fn copy_log(log: &Log, target: &Path) -> Result<()> {
    let dest = target.join(LOG_PATH);
    std::fs::copy(log.path(), &dest).map_err(|e| io_error(&dest, e))?;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(tool::PRIVATE)).map_err(|e| io_error(&dest, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$y$j9T$someSalt$TheSecretHashOfTheAdmin";

    #[test]
    fn the_admin_password_hash_is_given_on_stdin_never_on_a_command_line() {
        let admin = Admin { user: "dba".into(), ssh_authorized_keys: Vec::new(), password_hash: Some(HASH.into()) };
        let tools = admin_account_tools(Path::new("/run/truthdb-installer/target"), &admin);
        for tool in &tools {
            let argv = tool.argv();
            assert!(!argv.iter().any(|a| a.contains("TheSecretHash")), "the hash is in argv: {argv:?}");
        }
        let given = tools.iter().filter_map(Tool::stdin_text).collect::<Vec<_>>();
        assert_eq!(given, [format!("dba:{HASH}\n")], "the hash reaches chpasswd on stdin");
    }

    #[test]
    fn the_log_copied_to_the_installed_system_is_readable_by_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("live.log")).unwrap();
        log.line("the install");
        // Whatever the live log's mode, the installed system's copy is private.
        std::fs::set_permissions(log.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = dir.path().join("target");
        std::fs::create_dir_all(target.join("var/log")).unwrap();
        copy_log(&log, &target).unwrap();
        let copy = target.join(LOG_PATH);
        assert_eq!(std::fs::metadata(&copy).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), "the install\n");
    }
    fn releases(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn the_prebuilt_initrd_is_used_only_when_every_kernel_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let prebuilt = dir.path().join(PREBUILT_INITRD_DIR);
        // An image made before the initrd was prebuilt: no directory at all.
        assert_eq!(
            InitrdSource::choose(&releases(&["6.12.117-truthdb"]), &prebuilt),
            InitrdSource::Rebuild { missing: releases(&["6.12.117-truthdb"]) }
        );
        std::fs::create_dir_all(&prebuilt).unwrap();
        std::fs::write(prebuilt.join("initrd.img-6.12.117-truthdb"), "initrd").unwrap();
        assert_eq!(InitrdSource::choose(&releases(&["6.12.117-truthdb"]), &prebuilt), InitrdSource::Prebuilt);
        // A second kernel without one: the rebuild, naming it.
        assert_eq!(
            InitrdSource::choose(&releases(&["6.12.117-truthdb", "6.13.1-truthdb"]), &prebuilt),
            InitrdSource::Rebuild { missing: releases(&["6.13.1-truthdb"]) }
        );
        // No kernel in /boot: nothing to install, the old path (which then fails at the UKI).
        assert_eq!(InitrdSource::choose(&[], &prebuilt), InitrdSource::Rebuild { missing: Vec::new() });
        // A directory where the file should be is no initrd.
        std::fs::create_dir_all(prebuilt.join("initrd.img-6.13.1-truthdb")).unwrap();
        assert_eq!(
            InitrdSource::choose(&releases(&["6.13.1-truthdb"]), &prebuilt),
            InitrdSource::Rebuild { missing: releases(&["6.13.1-truthdb"]) }
        );
    }

    /// What update-initramfs sees: it sources the file.
    fn sourced_setting(conf: &Path, log: &Log) -> String {
        Tool::new("sh")
            .args(["-c", "update_initramfs=yes; . \"$1\"; echo \"$update_initramfs\"", "sh"])
            .arg(conf.to_string_lossy())
            .run(log)
            .unwrap()
            .trim()
            .to_owned()
    }

    #[test]
    fn initrd_updates_are_off_while_the_work_runs_and_the_conf_is_put_back_exactly() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        let conf = dir.path().join("update-initramfs.conf");
        // As Debian ships it, but without the final newline, and a mode of its own.
        let original = "# Configuration file for update-initramfs(8)\nupdate_initramfs=yes\nbackup_initramfs=no";
        std::fs::write(&conf, original).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
        let before = std::fs::metadata(&conf).unwrap();
        assert_eq!(sourced_setting(&conf, &log), "yes");

        let seen = with_initrd_updates_off(&conf, || Ok(sourced_setting(&conf, &log))).unwrap();
        assert_eq!(seen, "no");
        let after = std::fs::metadata(&conf).unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), original);
        assert_eq!(
            (after.ino(), after.mode(), after.mtime(), after.mtime_nsec()),
            (before.ino(), before.mode(), before.mtime(), before.mtime_nsec())
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "only the conf and the log are left");

        // A failing work: its error, and the file put back all the same.
        let failed: Result<()> = with_initrd_updates_off(&conf, || {
            assert_eq!(sourced_setting(&conf, &log), "no");
            Err(Error::Tool { command: "dpkg --triggers-only --pending".into(), message: "failed".into() })
        });
        assert!(failed.unwrap_err().to_string().contains("dpkg --triggers-only"));
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), original);
        assert_eq!(std::fs::metadata(&conf).unwrap().ino(), before.ino());
    }

    #[test]
    fn without_an_update_initramfs_conf_one_is_made_for_the_work_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        let conf = dir.path().join("update-initramfs.conf");
        let seen = with_initrd_updates_off(&conf, || Ok(sourced_setting(&conf, &log))).unwrap();
        assert_eq!(seen, "no");
        assert!(!conf.exists());
    }
}
