//! `cargo xtask first-boot-test`: proves a generic VM image (`cargo xtask disk` without
//! `--config`) provisions itself on its first boot, in QEMU (TCG, OVMF):
//!
//! 1. one generic qcow2: the one `iso --vm-images` published (`--image`), or one made from the
//!    ISO by the installer engine;
//! 2. two VMs boot it through copy-on-write overlays on disks larger than the image, each with
//!    its own cloud-init NoCloud seed (a CD labelled `cidata`: its admin's key, its database
//!    password, its host name). Each must pass the install test's appliance checks (healthy,
//!    psql over TLS with its own password, ssh with its own key and not the other's, sudo, the
//!    certificate, the firewall); the two must differ in machine-id, SSH host key and database
//!    cluster, and the data file system must fill the larger disk;
//! 3. a third VM gets its admin, password and host name as systemd credentials instead (SMBIOS
//!    type 11 strings and QEMU fw_cfg, read from files: no secret on QEMU's command line), and
//!    passes the same checks;
//! 4. a VM with no seed boots, says on its serial console how to provision it, and lets no one
//!    log in;
//! 5. the first VM boots again, now with the second VM's seed attached (another instance-id,
//!    another key): same machine-id, host key and cluster, its own key and password still work
//!    and the seed's key is refused. Provisioned once: cloud-init is off after provisioning.
//!
//! The boots run side by side, each waiting for one of the machine's VM slots.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::project::Project;
use crate::util::progress::{format_duration, stage};
use crate::util::run::Cmd;
use crate::vm::install_test::{
    ADMIN, ApplianceFacts, BootExtras, Credentials, HOSTNAME, InstallTestConfig, PROVISION_FAILED, TARGET_SERIAL,
    check_appliance,
};
use crate::vm::qemu::{Vm, VmSpec, free_port, line_from, no_periodic_writeback, virtio_disk};

/// The generic image's size, and the larger virtual disk each VM gets (its overlay's size).
const IMAGE_GIB: u64 = 12;
const VM_DISK_GIB: u64 = 16;
/// What the provisioning service prints on the serial console.
const PROVISIONED: &str = "TRUTHDB-OS-PROVISION done";
const NOT_PROVISIONED: &str = "TRUTHDB-OS-PROVISION none";
/// What pg_createcluster prints (through the provisioning service's console output) as it
/// begins the PostgreSQL payload's cluster, the admin account and the TLS certificate already
/// made: vm-c's power is cut there, in the middle of provisioning.
const MID_PROVISIONING: &str = "Creating new PostgreSQL cluster";

/// `cargo xtask first-boot-test`.
#[derive(clap::Args, Debug)]
pub struct FirstBootTestArgs {
    #[command(flatten)]
    vm: crate::vm::install_test::InstallVmArgs,
    /// A generic qcow2 to boot, e.g. the one `iso --vm-images` published in dist/ (default:
    /// make one from the ISO, as `cargo xtask disk --format qcow2` without --config does).
    #[arg(long)]
    image: Option<PathBuf>,
}

impl FirstBootTestArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        crate::util::host::reexec_as_root_if_needed()?;
        let _locks = project.lock_work_subdir("first-boot-test")?;
        use crate::doctor::Purpose;
        crate::doctor::ensure(&[Purpose::BootTest, Purpose::Disk, Purpose::InstallTest])?;
        // Only to make an image: a published one needs no installer.
        let installer = match self.image {
            Some(_) => None,
            None => {
                let inputs = crate::stages::installer_build::InstallerBuildInputs::of(project);
                Some(crate::stages::installer_build::build(&inputs)?.path)
            }
        };
        let config = InstallTestConfig {
            iso: self.vm.iso.unwrap_or_else(|| project.default_iso()),
            work_dir: project.work_dir().join("first-boot-test"),
            timeout: Duration::from_secs(self.vm.timeout),
            memory_mib: self.vm.memory,
            expected_version: project.version.clone(),
            disk_image_installer: installer,
            negative: true,
            unattended_install: false,
        };
        run(&config, self.image.as_deref())
    }
}

/// With `published`, boots that generic qcow2; otherwise makes one from `config.iso`.
pub fn run(config: &InstallTestConfig, published: Option<&Path>) -> Result<()> {
    let dir = &config.work_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let image = match published {
        Some(image) => {
            let image = std::fs::canonicalize(image).with_context(|| format!("no VM image at {}", image.display()))?;
            println!("PASS generic image: the published {}", image.display());
            image
        }
        None => build_generic_image(config)?,
    };
    boot_them(config, &image)
}

fn build_generic_image(config: &InstallTestConfig) -> Result<PathBuf> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    let dir = &config.work_dir;
    let image = dir.join("generic.qcow2");
    let started = Instant::now();
    stage("first-boot test", |s| {
        s.set("cargo xtask disk --format qcow2, no --config (a generic image)");
        let _slot = crate::vm::qemu::take_slot_for_host_work("generic image build")?;
        let config_file = crate::disk_image::write_generic_config(dir)?;
        crate::disk_image::build(
            &crate::disk_image::DiskImageInputs {
                iso: &config.iso,
                config: &config_file,
                installer: config.disk_image_installer.as_deref().context("no installer")?,
                format: crate::disk_image::DiskFormat::Qcow2,
                size_gib: IMAGE_GIB,
                output: &image,
                log: &dir.join("generic.log"),
            },
            &mut |line| {
                if let Some(progress) = crate::disk_image::engine_progress(line) {
                    s.set(progress);
                }
            },
        )
    })?;
    println!("PASS generic image built in {}", format_duration(started.elapsed()));
    Ok(image)
}

fn boot_them(config: &InstallTestConfig, image: &Path) -> Result<()> {
    let dir = &config.work_dir;
    let image = image.to_path_buf();
    let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
    for d in [&a, &b, &c] {
        std::fs::create_dir_all(d)?;
    }
    let (cred_a, cred_b, cred_c) = (Credentials::new(&a)?, Credentials::new(&b)?, Credentials::new(&c)?);
    let (seed_a, seed_b) = (nocloud_seed(&a, "vm-a", &cred_a)?, nocloud_seed(&b, "vm-b", &cred_b)?);
    let credentials_c = systemd_credentials(&c, &cred_c)?;
    let (disk_a, disk_b, disk_c) = (overlay(&image, &a)?, overlay(&image, &b)?, overlay(&image, &c)?);
    let (first_a, first_b, first_c, unprovisioned) = std::thread::scope(|scope| {
        // vm-a: its power cut the moment provisioning says it is done; the next boot must be the
        // provisioned appliance, not provision again. That boot ends with a power cut while the
        // database is written (its rows checked on vm-a's last boot below).
        let vm_a = scope.spawn(|| -> Result<ApplianceFacts> {
            let provisioned = power_cut_at(config, "vm-a-cut-at-done", &disk_a, seed_cdrom(&seed_a), |serial| {
                line_from(serial, PROVISIONED)
            })?;
            let extras = BootExtras {
                qemu_args: [seed_cdrom(&seed_a), no_periodic_writeback()].concat(),
                refused_key: Some(&cred_b.key),
                boot_analysis: true,
                write_then_cut: true,
                ..Default::default()
            };
            let mut facts = check_appliance("vm-a", &disk_a, "qcow2", config, &cred_a, None, &extras)?;
            if facts.serial.contains(PROVISIONED) {
                bail!("vm-a provisioned itself again after its power cut at {PROVISIONED:?}");
            }
            // The provisioning line is the cut boot's.
            facts.serial = provisioned;
            Ok(facts)
        });
        let vm_b = scope.spawn(|| {
            let extras =
                BootExtras { qemu_args: seed_cdrom(&seed_b), refused_key: Some(&cred_a.key), ..Default::default() };
            check_appliance("vm-b", &disk_b, "qcow2", config, &cred_b, None, &extras)
        });
        // vm-c: its power cut in the middle of provisioning, as the database cluster is being
        // made (the admin account already is): the next boot provisions again, from the start.
        let vm_c = scope.spawn(|| -> Result<ApplianceFacts> {
            power_cut_at(config, "vm-c-cut-in-provisioning", &disk_c, credentials_c.clone(), |serial| {
                line_from(serial, MID_PROVISIONING)
            })?;
            let extras = BootExtras {
                qemu_args: credentials_c.clone(),
                refused_key: Some(&cred_a.key),
                boot_analysis: true,
                ..Default::default()
            };
            check_appliance("vm-c", &disk_c, "qcow2", config, &cred_c, None, &extras)
        });
        let unseeded = scope.spawn(|| no_seed(config, &image, &cred_a));
        (
            vm_a.join().expect("vm-a"),
            vm_b.join().expect("vm-b"),
            vm_c.join().expect("vm-c"),
            unseeded.join().expect("no seed"),
        )
    });
    let (first_a, first_b, first_c) = (first_a?, first_b?, first_c?);
    unprovisioned?;
    for (name, facts, source) in
        [("vm-a", &first_a, "cloud-init"), ("vm-b", &first_b, "cloud-init"), ("vm-c", &first_c, "systemd credentials")]
    {
        let Some(line) = line_from(&facts.serial, PROVISIONED) else {
            bail!("{name}: no {PROVISIONED:?} line on the serial console");
        };
        if !line.contains(&format!("admin={ADMIN} from {source}")) {
            bail!("{name}: provisioned, but not by {source}: {line}");
        }
        // The data file system fills the larger disk: all but the ESP (512 MiB) and the root
        // (8 GiB), less ext4's own few percent. Not grown, it would be under half of that.
        let least = (VM_DISK_GIB * 1024 - 512 - 8 * 1024) * 95 / 100;
        if facts.data_mib < least {
            bail!("{name}: the data file system has {} MiB: not grown to the {VM_DISK_GIB} GiB disk", facts.data_mib);
        }
        println!(
            "PASS {name}: provisioned by {source}; data file system {} MiB on a {VM_DISK_GIB} GiB disk",
            facts.data_mib
        );
    }
    let differ = |what: &str, x: &str, y: &str| {
        if x == y {
            bail!("vm-a and vm-b share their {what}: {x}");
        }
        Ok(())
    };
    differ("machine-id", &first_a.machine_id, &first_b.machine_id)?;
    differ("SSH host key", &first_a.host_key, &first_b.host_key)?;
    differ("database cluster", &first_a.system_identifier, &first_b.system_identifier)?;
    for (what, x) in [("machine-id", &first_c.machine_id), ("SSH host key", &first_c.host_key)] {
        if [&first_a, &first_b].iter().any(|f| f.machine_id == *x || f.host_key == *x) {
            bail!("vm-c shares its {what} with vm-a or vm-b: {x}");
        }
    }
    println!(
        "PASS vm-a and vm-b differ: machine-id, SSH host key ({} / {}), cluster ({} / {})",
        first_a.host_key, first_b.host_key, first_a.system_identifier, first_b.system_identifier
    );

    // Once provisioned, a boot changes nothing, whatever seed it is given: here vm-b's, whose
    // new instance-id would make a running cloud-init add vm-b's key to the admin.
    let again = stage("first-boot test", |s| {
        s.set("vm-a boots again, with vm-b's seed");
        let extras = BootExtras {
            qemu_args: seed_cdrom(&seed_b),
            refused_key: Some(&cred_b.key),
            boot_analysis: true,
            rows_committed: first_a.rows_committed,
            ..Default::default()
        };
        check_appliance("vm-a-again", &disk_a, "qcow2", config, &cred_a, None, &extras)
    })?;
    if again.serial.contains(PROVISIONED) {
        bail!("vm-a provisioned itself again on its second boot");
    }
    for (what, before, after) in [
        ("machine-id", &first_a.machine_id, &again.machine_id),
        ("SSH host key", &first_a.host_key, &again.host_key),
        ("database cluster", &first_a.system_identifier, &again.system_identifier),
    ] {
        if before != after {
            bail!("vm-a's {what} changed on its second boot: {before} -> {after}");
        }
    }
    println!(
        "PASS vm-a boots again with vm-b's seed: its machine-id, host key and cluster, not provisioned again, vm-b's key refused"
    );
    Ok(())
}

/// Boots `disk` with `qemu_args` until `cut_here` finds its moment on the serial console, then
/// cuts the power at once. Returns the serial console up to the cut.
fn power_cut_at(
    config: &InstallTestConfig,
    name: &str,
    disk: &Path,
    qemu_args: Vec<String>,
    cut_here: impl Fn(&str) -> Option<String>,
) -> Result<String> {
    let vm = Vm::start(
        &VmSpec::uefi(name, &config.work_dir)
            .memory(config.memory_mib)
            .media(virtio_disk(disk, "qcow2", TARGET_SERIAL))
            .media(qemu_args)
            .media(no_periodic_writeback()),
    )?;
    let line = vm.wait_for(&format!("{name}'s moment to cut the power"), config.timeout, |serial, _| {
        if let Some(failed) = line_from(serial, PROVISION_FAILED) {
            return Some(Err(anyhow::anyhow!("{failed}")));
        }
        cut_here(serial).map(Ok)
    })?;
    vm.power_cut();
    println!("PASS {name}: power cut at {} after power-on, at {line:?}", format_duration(vm.elapsed()));
    Ok(vm.serial())
}

/// A copy-on-write overlay of `image`, larger than it.
fn overlay(image: &Path, dir: &Path) -> Result<PathBuf> {
    let disk = dir.join("disk.qcow2");
    let _ = std::fs::remove_file(&disk);
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(image)
        .arg(&disk)
        .arg(format!("{VM_DISK_GIB}G"))
        .run()?;
    Ok(disk)
}

/// A NoCloud seed, as Proxmox and libvirt make one: an ISO 9660 volume labelled `cidata` with
/// `user-data` and `meta-data`. The admin and the database password go where README says.
fn nocloud_seed(dir: &Path, instance: &str, credentials: &Credentials) -> Result<PathBuf> {
    let files = dir.join("seed");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("meta-data"), format!("instance-id: {instance}\nlocal-hostname: {HOSTNAME}\n"))?;
    let user_data = format!(
        "#cloud-config\nusers:\n  - name: {ADMIN}\n    groups: [sudo]\n    shell: /bin/bash\n    \
         sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {}\n\
         truthdb:\n  database_password: \"{}\"\n",
        credentials.public_key, credentials.password
    );
    // The seed holds a password: readable by root alone.
    let path = files.join("user-data");
    std::fs::write(&path, user_data)?;
    crate::util::fsx::set_mode(&path, 0o600)?;
    let seed = dir.join("seed.iso");
    let _ = std::fs::remove_file(&seed);
    Cmd::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
        .arg(&seed)
        .arg(files.join("user-data"))
        .arg(files.join("meta-data"))
        .run()?;
    crate::util::fsx::set_mode(&seed, 0o600)?;
    Ok(seed)
}

/// systemd credentials as a hypervisor passes them to a VM: SMBIOS type 11 strings and a QEMU
/// fw_cfg entry, each from a file readable by root alone (QEMU's command line shows only the
/// file's name).
fn systemd_credentials(dir: &Path, credentials: &Credentials) -> Result<Vec<String>> {
    let files = dir.join("credentials");
    std::fs::create_dir_all(&files)?;
    let mut args = Vec::new();
    for (name, value) in [
        ("truthdb.admin.user", ADMIN),
        ("truthdb.database.password", credentials.password.as_str()),
        ("system.hostname", HOSTNAME),
    ] {
        let path = files.join(name);
        std::fs::write(&path, format!("io.systemd.credential:{name}={value}"))?;
        crate::util::fsx::set_mode(&path, 0o600)?;
        args.extend(["-smbios".to_owned(), format!("type=11,path={}", path.display())]);
    }
    let keys = files.join("truthdb.admin.ssh_keys");
    std::fs::write(&keys, format!("{}\n", credentials.public_key))?;
    args.extend([
        "-fw_cfg".to_owned(),
        format!("name=opt/io.systemd.credentials/truthdb.admin.ssh_keys,file={}", keys.display()),
    ]);
    Ok(args)
}

fn seed_cdrom(seed: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id=seed,format=raw,media=cdrom,readonly=on,file={}", seed.display()),
        "-device".into(),
        "ide-cd,drive=seed".into(),
    ]
}

/// With no seed the appliance says how to provision it, and no key logs in.
fn no_seed(config: &InstallTestConfig, image: &Path, credentials: &Credentials) -> Result<()> {
    let dir = config.work_dir.join("no-seed");
    std::fs::create_dir_all(&dir)?;
    let disk = overlay(image, &dir)?;
    let ssh_port = free_port()?;
    let vm = Vm::start(
        &VmSpec::uefi("no-seed-boot", &config.work_dir)
            .memory(config.memory_mib)
            .media(virtio_disk(&disk, "qcow2", TARGET_SERIAL))
            .forward(ssh_port, 22),
    )?;
    let said = vm.wait_for("the provisioning service's word", config.timeout, |serial, _| {
        line_from(serial, NOT_PROVISIONED).map(Ok)
    })?;
    let booted_in = vm.elapsed();
    let serial = vm.serial();
    for wanted in ["cidata", "truthdb.admin.user", "README.md"] {
        if !serial.contains(wanted) {
            bail!("no-seed: the serial console does not say how to provision ({wanted:?} missing): {said}");
        }
    }
    let key = credentials.key.to_string_lossy().into_owned();
    let refused = |user: &str| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = Cmd::new("ssh")
                .args([
                    "-p",
                    &ssh_port.to_string(),
                    "-o",
                    "StrictHostKeyChecking=no",
                    "-o",
                    "UserKnownHostsFile=/dev/null",
                ])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR", "-i", &key])
                .args(["-o", "IdentitiesOnly=yes"])
                .arg(format!("{user}@127.0.0.1"))
                .arg("true")
                .output_unchecked()?;
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            if out.status.success() {
                bail!("no-seed: {user} logged in with a key on an unprovisioned appliance");
            }
            if said.contains("Permission denied") {
                return Ok(said.trim().to_owned());
            }
            if Instant::now() > deadline {
                bail!("no-seed: sshd did not answer: {said}");
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    };
    for user in ["root", ADMIN, "debian"] {
        refused(user)?;
    }
    println!(
        "PASS no-seed: says how to provision after {} ({said}); root, {ADMIN} and debian refused over ssh",
        format_duration(booted_in)
    );
    Ok(())
}
