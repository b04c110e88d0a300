//! The install itself: partition, format, copy the image's root file system, make it the
//! appliance (identity, admin, payload), make it bootable (UKI on the ESP), verify.
//!
//! Everything is done by the real tools, each logged (see [`crate::tool`]); every mount is
//! undone when [`install`] returns, whatever happened (see [`crate::mounts`]). The same code
//! installs from the live system to a real disk and builds disk images on a loop device.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::block_devices::{Disk, unsuitable};
use crate::config::{Admin, InstallConfig, Provision};
use crate::error::{Error, Result};
use crate::events::Event;
pub use crate::events::Step;
use crate::mounts::Mounts;
use crate::plan::{Layout, Plan, Role};
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
        .with_min_data_gib(spec.payload.min_data_gib)
}

/// Installs to `request.disk`, erasing it: the [`Step`]s in order, each on the same [`Install`]
/// context; an error names the step it came from ([`Error::Step`]). Refuses (without writing)
/// a disk that is the boot medium, too small, read-only, in use (mounted, swap, LVM, LUKS, md,
/// multipath) or no longer the disk that was chosen.
pub fn install(request: &InstallRequest, log: &Log, on_event: &mut dyn FnMut(Event)) -> Result<InstallReport> {
    let mut install = Install::new(request, log, on_event);
    install.run(Step::Check, Install::check)?;
    install.run(Step::Partition, Install::partition)?;
    install.run(Step::Format, Install::format)?;
    install.run(Step::Mount, Install::mount)?;
    install.run(Step::CopySystem, Install::copy_system)?;
    install.run(Step::Identity, Install::identity)?;
    install.run(Step::RemoveLivePackages, Install::remove_live_packages)?;
    install.run(Step::AdminAccount, Install::admin_account)?;
    install.run(Step::Payload, Install::payload)?;
    install.run(Step::Uki, Install::uki)?;
    install.run(Step::BootEntry, Install::boot_entry)?;
    install.run(Step::Verify, Install::verify)?;
    install.run(Step::Finish, Install::finish)?;
    Ok(install.into_report())
}

/// What the steps share: the request, where things are mounted, and what earlier steps made.
/// Its mounts are undone when it goes away, whatever happened.
struct Install<'a> {
    request: &'a InstallRequest,
    log: &'a Log,
    on_event: &'a mut dyn FnMut(Event),
    /// The step under way: the one its events and errors name.
    step: Step,
    plan: Plan,
    mounts: Mounts<'a>,
    /// Where the image's root file system is mounted (read-only).
    source: PathBuf,
    /// Where the installed system's root file system is mounted.
    target: PathBuf,
    /// Role, device and file system UUID of each partition, once formatted.
    partitions: Vec<(Role, String, String)>,
    copied: verify::TreeSummary,
    kernel_release: String,
    /// The UKI as ukify wrote it, in the target's `/run`.
    staged_uki: PathBuf,
    boot_entry: Option<String>,
    footprint_bytes: u64,
}

impl<'a> Install<'a> {
    fn new(request: &'a InstallRequest, log: &'a Log, on_event: &'a mut dyn FnMut(Event)) -> Install<'a> {
        let target = request.work_dir.join("target");
        Install {
            request,
            log,
            on_event,
            step: Step::Check,
            plan: Plan::new(&request.disk, &layout_for(&request.spec)),
            mounts: Mounts::new(log),
            source: request.work_dir.join("source"),
            staged_uki: target.join("run").join(UKI_STAGED),
            target,
            partitions: Vec::new(),
            copied: verify::TreeSummary::default(),
            kernel_release: String::new(),
            boot_entry: None,
            footprint_bytes: 0,
        }
    }

    /// Runs one step; its error says which step it was.
    fn run(&mut self, step: Step, work: fn(&mut Self) -> Result<()>) -> Result<()> {
        debug_assert!(self.step <= step, "{step:?} runs after {:?}", self.step);
        self.step = step;
        self.log.line(&format!("step {step}"));
        work(self).map_err(|e| Error::Step { step, source: Box::new(e) })
    }

    /// Reports progress `within` (0.0-1.0) of the way through the step under way.
    fn emit(&mut self, within: f64, message: impl Into<String>) {
        let event = Event::new(self.step, within, message);
        self.log.line(&event.to_string());
        (self.on_event)(event);
    }

    fn device_of(&self, role: Role) -> Option<&str> {
        self.partitions.iter().find(|p| p.0 == role).map(|p| p.1.as_str())
    }

    fn uuid_of(&self, role: Role) -> Option<&str> {
        self.partitions.iter().find(|p| p.0 == role).map(|p| p.2.as_str())
    }

    fn data_mount(&self) -> Option<&'a str> {
        self.request.spec.payload.data_mount.as_deref()
    }

    fn esp(&self) -> String {
        self.device_of(Role::Esp).expect("the format step made the ESP").to_owned()
    }

    /// The refusals, then the image mounted first so the config is checked against its own
    /// accounts before anything is written: `useradd --user-group` fails on a name the image
    /// already has as a user or a group, and by then the disk would be erased. Last, right
    /// before the first write, the disk is read again: still the disk chosen (a front end may
    /// have listed the disks minutes ago) and nothing on it in use.
    fn check(&mut self) -> Result<()> {
        let request = self.request;
        let disk = &request.disk;
        let min_bytes = layout_for(&request.spec).min_disk_bytes();
        if let Some(reason) = unsuitable(disk, request.boot_medium.as_deref(), min_bytes) {
            return Err(Error::Refused { disk: disk.describe(), reason });
        }
        request
            .config
            .validate_against_spec(&request.spec)
            .map_err(|message| Error::Config { source: "the install config".into(), message })?;
        if !request.source.is_file() {
            return Err(Error::Config {
                source: request.source.display().to_string(),
                message: "the image's root file system (squashfs) is not there".into(),
            });
        }
        self.log.line(&format!("truthdb-installer {}: installing to {}", crate::VERSION, disk.describe()));
        self.log.line(&self.plan.to_string());
        self.mounts.mount(&request.source.to_string_lossy(), &self.source, &["-t", "squashfs", "-o", "loop,ro"])?;
        request.config.validate_against_image(&self.source).map_err(|message| Error::Config {
            source: format!("(checked against the image {})", request.source.display()),
            message,
        })?;
        crate::recheck_before_write(disk)?;
        self.log.line(&format!("{}: still the disk chosen; nothing on it is in use", disk.path));
        Ok(())
    }

    fn partition(&mut self) -> Result<()> {
        let disk = &self.request.disk.path;
        self.emit(0.0, format!("writing a GPT to {disk}"));
        Tool::new("sfdisk")
            .args(["--quiet", "--wipe", "always", "--wipe-partitions", "always", disk])
            .stdin(self.plan.sfdisk_script())
            .run(self.log)?;
        wait_for_partitions(&self.plan, self.log)
    }

    /// Each file system with a UUID chosen here, so fstab and the UKI can name it.
    fn format(&mut self) -> Result<()> {
        let planned = self.plan.partitions.clone();
        for (i, part) in planned.iter().enumerate() {
            self.emit(i as f64 / planned.len() as f64, format!("{} {}", part.filesystem, part.device));
            let uuid = match part.role {
                Role::Esp => {
                    let id = random_hex(8)?.to_uppercase();
                    Tool::new("mkfs.vfat")
                        .args(["-F", "32", "-n", part.label, "-i", &id, &part.device])
                        .run(self.log)?;
                    format!("{}-{}", &id[..4], &id[4..])
                }
                Role::Root | Role::Data => {
                    let uuid = random_uuid()?;
                    Tool::new("mkfs.ext4")
                        .args(["-F", "-q", "-L", part.label, "-U", &uuid, &part.device])
                        .run(self.log)?;
                    uuid
                }
            };
            self.partitions.push((part.role.clone(), part.device.clone(), uuid));
        }
        Ok(())
    }

    /// The target's root and data file systems (the source is mounted by the check). The ESP
    /// is never mounted: its one file is written with mtools (see `write_uki`), so an install
    /// needs no vfat driver in the kernel it runs on (a disk image built on a host whose
    /// kernel lacks it).
    fn mount(&mut self) -> Result<()> {
        let root = self.device_of(Role::Root).expect("the format step made the root").to_owned();
        self.mounts.mount(&root, &self.target, &[])?;
        if let (Some(mount), Some(device)) = (self.data_mount(), self.device_of(Role::Data)) {
            let (device, at) = (device.to_owned(), self.target.join(mount.trim_start_matches('/')));
            self.mounts.mount(&device, &at, &[])?;
        }
        Ok(())
    }

    fn copy_system(&mut self) -> Result<()> {
        self.emit(0.0, "measuring the image");
        let expected = verify::summarize(&self.source)?;
        let (squashfs, target, log) = (&self.request.source, self.target.clone(), self.log);
        copy_tree(squashfs, &target, &expected, log, &mut |within, message| self.emit(within, message))?;
        self.emit(1.0, "checking the copy");
        self.copied = verify::compare_trees(&self.source, &self.target, &expected)?;
        self.log.line(&format!("copy verified: {}", self.copied));
        self.mounts.unmount(&self.source)
    }

    fn identity(&mut self) -> Result<()> {
        self.emit(0.0, "identity and mounts");
        self.mounts.chroot_api(&self.target)?;
        write_identity(&self.target, &self.request.config, &self.partitions, self.data_mount())
    }

    fn remove_live_packages(&mut self) -> Result<()> {
        self.emit(0.0, "removing the live system's packages");
        remove_live_packages(&self.target, self.log)
    }

    fn admin_account(&mut self) -> Result<()> {
        let Some((admin, _)) = self.request.config.provisioned() else {
            // A first-boot image: sshd-keygen.service makes the keys on the first boot (an empty
            // machine-id makes it one), and the admin comes from cloud-init or credentials.
            self.emit(0.0, "no admin account and no SSH host keys (made on first boot)");
            return remove_host_keys(&self.target);
        };
        self.emit(0.0, "admin account and SSH host keys");
        regenerate_host_keys(&self.target, self.log)?;
        create_admin(&self.target, admin, self.log)
    }

    fn payload(&mut self) -> Result<()> {
        self.emit(0.0, "enabling the database service");
        let (request, target, log) = (self.request, self.target.clone(), self.log);
        let payload = &request.spec.payload;
        if !payload.services.is_empty() {
            Tool::new("systemctl").arg("enable").args(&payload.services).in_root(&target).run(log)?;
        }
        let Some((admin, database)) = request.config.provisioned() else {
            self.emit(0.2, "the database is set up on first boot");
            return first_boot_provisioning(&target);
        };
        if let Some(configure) = &payload.configure {
            self.emit(0.2, format!("setting the database up ({configure})"));
            let verifier = postgres_protocol::password::scram_sha_256(database.admin_password.as_bytes());
            let mut tool = Tool::new(configure)
                .env("TRUTHDB_ADMIN_USER", &admin.user)
                .env("TRUTHDB_DB_PASSWORD_SCRAM", verifier.clone())
                .env("TRUTHDB_DATA_DIR", self.data_mount().unwrap_or(""))
                // The verifier is in the environment (root-only in /proc), never in an argument;
                // should PostgreSQL quote the CREATE ROLE statement in an error, the log does not
                // keep it.
                .redact(verifier);
            if let Some(port) = payload.tds_port.filter(|_| database.tds) {
                // TDS logins are seeded from clear text (the server hashes them on its first
                // start), so only an install that enables TDS hands the password over.
                tool = tool
                    .env("TRUTHDB_TDS_PORT", port.to_string())
                    .env("TRUTHDB_DB_PASSWORD", &database.admin_password)
                    .redact(database.admin_password.clone());
            }
            tool.in_root(&target).run(log)?;
        }
        Ok(())
    }

    /// systemd-stub, the kernel, its initrd and the command line joined by ukify, checked, and
    /// written to the ESP's fallback path.
    fn uki(&mut self) -> Result<()> {
        self.emit(0.0, "building the unified kernel image");
        let target = &self.target;
        let kernel_release = kernel_release(target)?;
        let root_uuid = self.uuid_of(Role::Root).expect("the format step made the root");
        let mut cmdline = vec![format!("root=UUID={root_uuid}"), "ro".into(), "rootfstype=ext4".into()];
        cmdline.extend(self.request.spec.kernel_cmdline.iter().cloned());
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
            .in_root(target)
            .run(self.log)?;
        verify::check_uki(&self.staged_uki, &target.join(format!("boot/vmlinuz-{kernel_release}")))?;
        write_uki(&self.esp(), &self.staged_uki, self.log)?;
        self.kernel_release = kernel_release;
        Ok(())
    }

    fn boot_entry(&mut self) -> Result<()> {
        if self.request.efi_boot_entry {
            self.boot_entry = add_boot_entry(&self.request.disk, self.log);
        }
        Ok(())
    }

    /// The UKI read back, then the log handed over to the installed system; after unmounting,
    /// the partition table and every file system checked.
    fn verify(&mut self) -> Result<()> {
        let log = self.log;
        self.emit(0.0, "boot files");
        let read_back = self.target.join("run/readback.efi");
        Tool::new("mcopy")
            .args(["-n", "-i", &self.esp(), &format!("::/{UKI_PATH}")])
            .arg(read_back.to_string_lossy())
            .run(log)?;
        verify::same_contents(&self.staged_uki, &read_back)?;
        self.emit(0.3, "file systems");
        log.line("the installed system's log ends here; the installer's own log goes on");
        copy_log(log, &self.target)?;
        Tool::new("sync").run(log)?;
        self.mounts.unmount(&self.target.join("run"))?;
        self.footprint_bytes = verify::used_bytes_below(&self.target);
        self.mounts.unmount_all()?;
        verify::check_partition_table(&self.plan, log)?;
        for (role, device, _) in &self.partitions {
            match role {
                Role::Esp => Tool::new("fsck.vfat").args(["-n", device]).run(log)?,
                Role::Root | Role::Data => Tool::new("e2fsck").args(["-f", "-n", device]).run(log)?,
            };
        }
        Ok(())
    }

    /// The install counts as done (TRUTHDB-INSTALL-DONE, the GUI's done screen, the power
    /// action) only once every write is on the disk: the file systems are unmounted by now, but
    /// the partition table, the ESP written through its device node and the install log are
    /// flushed here too, so a power cut right after "done" leaves a disk that boots.
    fn finish(&mut self) -> Result<()> {
        Tool::new("sync").run(self.log)?;
        Tool::new("blockdev").args(["--flushbufs", &self.request.disk.path]).run(self.log)?;
        let (version, disk) = (&self.request.spec.version, &self.request.disk.path);
        self.emit(0.0, format!("installed TruthDB OS {version} to {disk}"));
        Ok(())
    }

    fn into_report(self) -> InstallReport {
        InstallReport {
            disk: self.request.disk.describe(),
            partitions: self.partitions,
            copied: self.copied,
            kernel_release: self.kernel_release,
            boot_entry: self.boot_entry,
            footprint_bytes: self.footprint_bytes,
        }
    }
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
    progress: &mut dyn FnMut(f64, String),
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
                progress(fraction.min(0.99), format!("{} MiB of {} MiB", written >> 20, expected.bytes >> 20));
            }
        }
        copier.join().expect("the copy thread does not panic")
    })?;
    Ok(())
}

/// fstab by UUID, host name, a machine-id of its own (or none yet, on a first-boot image).
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
    let machine_id = match config.provision {
        Provision::Install => format!("{}\n", random_hex(32)?),
        // systemd makes one on the first boot, and only "uninitialized" makes that boot a first
        // boot (ConditionFirstBoot, which sshd-keygen.service needs): an empty file does not
        // (machine-id(5), "First Boot Semantics").
        Provision::FirstBoot => FIRST_BOOT_MACHINE_ID.to_owned(),
    };
    write("etc/machine-id", &machine_id)?;
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
    if !target.join("etc/ssh").is_dir() {
        return Ok(());
    }
    remove_host_keys(target)?;
    Tool::new("ssh-keygen").arg("-A").in_root(target).run(log)?;
    Ok(())
}

fn remove_host_keys(target: &Path) -> Result<()> {
    let ssh = target.join("etc/ssh");
    if !ssh.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(&ssh).map_err(|e| io_error(&ssh, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            std::fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// /etc/machine-id of a first-boot image.
pub const FIRST_BOOT_MACHINE_ID: &str = "uninitialized\n";
/// systemd's first-boot wizard asks on the console for what is not set; an unattended VM must
/// never wait for a keyboard (the image sets locale, keymap and time zone anyway).
const FIRSTBOOT_WIZARD: &str = "etc/systemd/system/systemd-firstboot.service";

/// What `truthdb-provision.service` looks for: while it is there, the appliance is not yet
/// provisioned, and each boot tries again; the service removes it once it has provisioned.
pub const FIRST_BOOT_MARKER: &str = "etc/truthdb/provision-on-first-boot";
/// cloud-init stays off on appliances installed from the ISO (and in the live system); a
/// first-boot image turns it on.
const CLOUD_INIT_DISABLED: &str = "etc/cloud/cloud-init.disabled";
/// Units without a preset line would be enabled on the first boot (systemd applies presets to
/// every unit when /etc/machine-id is empty, and Debian's default is enable): the image's own
/// choice of units stays as built.
const FIRST_BOOT_PRESET: &str = "etc/systemd/system-preset/99-truthdb-first-boot.preset";

/// A first-boot image: the marker the provisioning service looks for, cloud-init on, and no
/// units enabled by presets.
fn first_boot_provisioning(target: &Path) -> Result<()> {
    let write = |relative: &str, text: &str| {
        let path = target.join(relative);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        std::fs::write(&path, text).map_err(|e| io_error(&path, e))
    };
    write(
        FIRST_BOOT_MARKER,
        "# Written by truthdb-installer for a generic image: truthdb-provision.service provisions the\n\
         # admin and the database from cloud-init or systemd credentials, then removes this file.\n",
    )?;
    write(FIRST_BOOT_PRESET, "# Written by truthdb-installer: the image's units stay as built.\ndisable *\n")?;
    let wizard = target.join(FIRSTBOOT_WIZARD);
    let _ = std::fs::remove_file(&wizard);
    std::os::unix::fs::symlink("/dev/null", &wizard).map_err(|e| io_error(&wizard, e))?;
    let disabled = target.join(CLOUD_INIT_DISABLED);
    match std::fs::remove_file(&disabled) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error(&disabled, e)),
        _ => Ok(()),
    }
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

fn create_admin(target: &Path, admin: &Admin, log: &Log) -> Result<()> {
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

    /// A request for a disk that passes the size checks, in a scratch directory; nothing in
    /// it needs root until a step runs a tool.
    fn request_in(dir: &Path) -> InstallRequest {
        let config = crate::config::InstallConfig::parse(
            "wipe = true\nhostname = \"db1\"\n[admin]\nuser = \"dba\"\n\
             ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dba@laptop\"]\n\
             [database]\nadmin_password = \"correct horse battery\"\n",
            "install.toml",
        )
        .unwrap();
        let disk = Disk {
            path: "/dev/vdz".into(),
            by_id: vec![],
            model: Some("QEMU HARDDISK".into()),
            serial: Some("TDB-TEST".into()),
            size_bytes: 64 << 30,
            transport: Some("virtio".into()),
            removable: false,
            read_only: false,
            children: vec![],
        };
        let spec = ImageSpec {
            version: "0.1.0".into(),
            kernel_cmdline: vec!["console=ttyS0".into()],
            payload: crate::spec::PayloadSpec {
                services: vec![],
                health_check: "true".into(),
                data_mount: None,
                configure: None,
                min_data_gib: None,
                tds_port: None,
            },
        };
        InstallRequest {
            config,
            disk,
            source: dir.join("missing/filesystem.squashfs"),
            spec,
            work_dir: dir.join("work"),
            efi_boot_entry: false,
            boot_medium: None,
        }
    }

    #[test]
    fn a_payload_s_minimum_data_size_raises_the_smallest_disk_installed_to() {
        let mut spec = request_in(Path::new("/nonexistent")).spec;
        spec.payload.data_mount = Some("/var/lib/truthdb".into());
        let plain = layout_for(&spec).min_disk_bytes();
        spec.payload.min_data_gib = Some(12);
        let layout = layout_for(&spec);
        assert_eq!(layout.min_data_bytes, 12 << 30);
        assert_eq!(layout.min_disk_bytes() - plain, 10 << 30, "12 GiB instead of the 2 GiB default");
        // A smaller minimum than the installer's own does not lower it.
        spec.payload.min_data_gib = Some(1);
        assert_eq!(layout_for(&spec).min_disk_bytes(), plain);
    }

    #[test]
    fn an_install_that_fails_in_its_check_step_names_that_step_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        let request = request_in(dir.path());
        let mut events = Vec::new();
        let e = install(&request, &log, &mut |event| events.push(event)).unwrap_err();
        assert_eq!(e.step(), Some(Step::Check));
        let shown = e.to_string();
        assert!(shown.starts_with("step check: ") && shown.contains("squashfs) is not there"), "{shown}");
        assert!(matches!(e.without_step(), Error::Config { .. }), "{e:?}");
        assert!(events.is_empty(), "no progress before the first write: {events:?}");
        assert!(!request.work_dir.exists(), "nothing mounted, nothing made");
        // A refusal stays a refusal under its step, as the CLI tells them apart.
        let refused = install(&InstallRequest { boot_medium: Some("/dev/vdz".into()), ..request }, &log, &mut |_| {})
            .unwrap_err();
        assert!(matches!(refused.without_step(), Error::Refused { .. }), "{refused:?}");
        assert!(refused.to_string().starts_with("step check: refusing to install to /dev/vdz"), "{refused}");
    }

    #[test]
    fn tds_asked_of_a_payload_without_it_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        let mut request = request_in(dir.path());
        request.config.database.as_mut().unwrap().tds = true;
        let e = install(&request, &log, &mut |_| {}).unwrap_err();
        assert_eq!(e.step(), Some(Step::Check));
        assert!(e.to_string().contains("field `database.tds`"), "{e}");
        assert!(!request.work_dir.exists(), "nothing mounted, nothing made");
        // With a TDS port in the spec the same config passes this check (and stops later, at
        // the missing squashfs).
        request.spec.payload.tds_port = Some(1433);
        let e = install(&request, &log, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("squashfs) is not there"), "{e}");
    }

    #[test]
    fn a_failure_in_a_later_step_names_that_step_and_its_events_name_it_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        let request = request_in(dir.path());
        let mut events = Vec::new();
        let mut on_event = |event: Event| events.push(event);
        let mut install = Install::new(&request, &log, &mut on_event);
        // The target has no /boot: the UKI step finds no kernel, before running any tool.
        let e = install.run(Step::Uki, Install::uki).unwrap_err();
        drop(install);
        assert_eq!(e.step(), Some(Step::Uki));
        let shown = e.to_string();
        assert!(shown.starts_with("step uki: ") && shown.contains("target/boot"), "{shown}");
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].step, events[0].phase()), (Step::Uki, crate::events::Phase::Boot));
        let logged = std::fs::read_to_string(log.path()).unwrap();
        assert!(logged.contains("step uki\n"), "the log says where each step starts: {logged}");
    }

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

    #[test]
    fn a_first_boot_image_has_no_machine_id_and_provisions_itself_once_with_cloud_init_on() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path();
        for d in ["etc/cloud", "etc/systemd/system"] {
            std::fs::create_dir_all(target.join(d)).unwrap();
        }
        std::fs::write(target.join(CLOUD_INIT_DISABLED), "off\n").unwrap();
        let generic = "hostname = \"truthdb\"\nwipe = true\nprovision = \"first-boot\"\n";
        let config = InstallConfig::parse(generic, "generic.toml").unwrap();
        write_identity(target, &config, &[], None).unwrap();
        // Only "uninitialized" makes systemd call the boot a first boot (an empty file does not).
        assert_eq!(std::fs::read_to_string(target.join("etc/machine-id")).unwrap(), "uninitialized\n");
        first_boot_provisioning(target).unwrap();
        assert!(target.join(FIRST_BOOT_MARKER).is_file());
        assert!(!target.join(CLOUD_INIT_DISABLED).exists(), "cloud-init stays off");
        assert_eq!(std::fs::read_link(target.join(FIRSTBOOT_WIZARD)).unwrap(), Path::new("/dev/null"));
        assert!(std::fs::read_to_string(target.join(FIRST_BOOT_PRESET)).unwrap().contains("disable *"));
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
