//! `cargo xtask install-test`: proves the ISO installs a working appliance, end to end, in
//! QEMU (TCG, OVMF):
//!
//! 1. the ISO, with an unattended install config put on it (`xorriso` remaster:
//!    `/truthdb/install.toml`), boots as a CD beside a blank virtio disk, installs, powers off;
//! 2. that disk boots alone; from the host, through ports forwarded on 127.0.0.1, the real
//!    `psql` logs in over TLS with the configured password and runs a query (a connection
//!    without TLS is refused), and `ssh` logs in with the configured key (and not with a
//!    password); the certificate copied off over ssh has the fingerprint the serial console
//!    shows and verifies the server for its host name (`sslmode=verify-full`); the firewall
//!    is loaded with policy drop;
//! 3. configs that lack `wipe = true` or name the boot medium are refused, and the blank disk
//!    is byte-for-byte unchanged (SHA-256 before and after);
//! 4. (with `--disk-image`) the raw image `cargo xtask disk` makes boots the same way.
//!
//! What does not need the installed disk runs beside the install: the refusals that need only
//! the ISO, and the disk image; the reinstall refusal follows the installed boot. Every VM
//! waits for one of the machine's VM slots. Serial logs of every boot stay in the work
//! directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::project::Project;
use crate::util::progress::{format_duration, stage};
use crate::util::run::Cmd;
use crate::vm::qemu::{
    Vm, VmSpec, cdrom, free_port, installer_progress, line_from, no_periodic_writeback, usb_disk, usb_stick,
    virtio_disk,
};

pub const TARGET_SERIAL: &str = "truthdb-target";
pub const ADMIN: &str = "dba";
pub const HOSTNAME: &str = "truthdb-e2e";
pub const DISK_GIB: u64 = 12;
/// The installer's copy step says nothing on the serial console for up to about 5 minutes on a
/// slow host: an install is given up as stuck after twice that.
pub const INSTALL_SILENCE_LIMIT: Duration = Duration::from_secs(10 * 60);
/// What the provisioning service prints when it fails (`overlay/usr/lib/truthdb/provision`).
pub const PROVISION_FAILED: &str = "TRUTHDB-OS-PROVISION failed";
/// The table the power-cut-while-writing check fills (`BootExtras::write_then_cut`).
const POWER_CUT_TABLE: &str = "truthdb_power_cut";
/// The installed system's PostgreSQL certificate (public) and the boot marker's line naming
/// its fingerprint, both made by the payload's configure program and boot marker (overlay/).
const PG_CERT: &str = "/etc/truthdb/tls/postgresql.crt";
const TLS_MARKER: &str = "TRUTHDB-OS-TLS postgresql sha256=";
const REFUSAL_DISK_GIB: u64 = 1;

pub struct InstallTestConfig {
    pub iso: PathBuf,
    pub work_dir: PathBuf,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub expected_version: String,
    /// The host-built installer, for the disk image check; none: skip it.
    pub disk_image_installer: Option<PathBuf>,
    /// Also run the refusal checks.
    pub negative: bool,
    /// Install the ISO unattended in QEMU and check the installed disk (else only the disk
    /// image and the refusals, when asked for).
    pub unattended_install: bool,
}

/// The credentials the test installs with and logs in with.
pub struct Credentials {
    pub key: PathBuf,
    pub public_key: String,
    pub password: String,
}

impl Credentials {
    pub fn new(dir: &Path) -> Result<Credentials> {
        let key = dir.join("id_ed25519");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(dir.join("id_ed25519.pub"));
        Cmd::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "install-test", "-f"]).arg(&key).run()?;
        let public_key = std::fs::read_to_string(dir.join("id_ed25519.pub"))?.trim().to_owned();
        let uuid = std::fs::read_to_string("/proc/sys/kernel/random/uuid")?;
        Ok(Credentials { key, public_key, password: format!("tdb-{}", uuid.trim().replace('-', "")) })
    }

    /// An install config; `disk` is the `[disk]` table's body, `wipe` whether to consent.
    fn config(&self, disk: &str, wipe: bool) -> String {
        format!(
            "{wipe}hostname = \"{HOSTNAME}\"\npower = \"poweroff\"\n\n[disk]\n{disk}\n\n[admin]\nuser = \"{ADMIN}\"\n\
             ssh_authorized_keys = [\"{}\"]\n\n[database]\nadmin_password = \"{}\"\n",
            self.public_key,
            self.password,
            wipe = if wipe { "wipe = true\n" } else { "" },
        )
    }
}

/// A copy of `iso` with `config` at `/truthdb/install.toml`, boot records replayed.
fn remaster(iso: &Path, config: &str, dir: &Path, name: &str) -> Result<PathBuf> {
    let config_file = dir.join(format!("{name}.install.toml"));
    std::fs::write(&config_file, config)?;
    remaster_with(iso, &[(&config_file, "/truthdb/install.toml")], dir, name).context("with an install config")
}

/// `iso` with files put in (or over) it: (file here, path on the ISO). Its boot records are
/// kept as they are.
fn remaster_with(iso: &Path, files: &[(&Path, &str)], dir: &Path, name: &str) -> Result<PathBuf> {
    let out = dir.join(format!("{name}.iso"));
    let _ = std::fs::remove_file(&out);
    let mut cmd = Cmd::new("xorriso").arg("-indev").arg(iso).arg("-outdev").arg(&out);
    for (file, on_iso) in files {
        cmd = cmd.arg("-map").arg(file).arg(on_iso);
    }
    cmd.args(["-boot_image", "any", "replay"])
        .run_logged(&dir.join(format!("{name}.xorriso.log")), |_| {})
        .context("remastering the ISO")?;
    Ok(out)
}

pub fn blank_disk(path: &Path, gib: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(gib << 30)?;
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let out = Cmd::new("sha256sum").arg(path).read()?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

/// What the install and GUI tests boot, and for how long.
#[derive(clap::Args, Debug)]
pub struct InstallVmArgs {
    /// ISO to install from (default: the one `iso` publishes into dist/).
    #[arg(long)]
    pub iso: Option<PathBuf>,
    /// Seconds to wait for each boot, screen or install.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,
}

/// `cargo xtask install-test`.
#[derive(clap::Args, Debug)]
pub struct InstallTestArgs {
    #[command(flatten)]
    vm: InstallVmArgs,
    /// Skip the refusal checks (config without wipe, config naming the boot medium, ...) and
    /// the serial console installer's (answered, then not confirmed).
    #[arg(long)]
    no_refusals: bool,
    /// Skip building and booting a `disk` image.
    #[arg(long)]
    no_disk_image: bool,
    /// Skip the unattended install in QEMU: with --no-refusals, only a `disk` image of the ISO
    /// is built and its appliance checked (the quick check of an image's installed system);
    /// with --no-disk-image, only the refusals and the serial console installer are checked.
    #[arg(long)]
    no_install: bool,
}

impl InstallTestArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        crate::util::host::reexec_as_root_if_needed()?;
        let _locks = project.lock_work_subdir("install-test")?;
        use crate::doctor::Purpose;
        crate::doctor::ensure(&[Purpose::BootTest, Purpose::Disk, Purpose::InstallTest])?;
        let installer = if self.no_disk_image {
            None
        } else {
            let inputs = crate::stages::installer_build::InstallerBuildInputs::of(project);
            Some(crate::stages::installer_build::build(&inputs)?.path)
        };
        let config = InstallTestConfig {
            iso: self.vm.iso.unwrap_or_else(|| project.default_iso()),
            work_dir: project.work_dir().join("install-test"),
            timeout: Duration::from_secs(self.vm.timeout),
            memory_mib: self.vm.memory,
            expected_version: project.version.clone(),
            disk_image_installer: installer,
            negative: !self.no_refusals,
            unattended_install: !self.no_install,
        };
        run(&config)
    }
}

pub fn run(config: &InstallTestConfig) -> Result<()> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    let dir = &config.work_dir;
    std::fs::create_dir_all(dir)?;
    let credentials = Credentials::new(dir)?;
    let good = credentials.config(&format!("serial = \"{TARGET_SERIAL}\""), true);

    // Three chains that depend on nothing of each other run side by side (each VM waits for
    // one of the machine's VM slots): the install with what needs the installed disk; the
    // refusals that need only the ISO; the `disk` image.
    let target = dir.join("installed.raw");
    let credentials = &credentials;
    let good = &good;
    let target = &target;
    let (installed, refused, image, serial) = std::thread::scope(|scope| {
        let installed = scope.spawn(|| {
            if config.unattended_install { install_chain(config, credentials, good, target) } else { Ok(()) }
        });
        let refused = scope.spawn(|| if config.negative { refusals(config, credentials, good, None) } else { Ok(()) });
        let image = scope.spawn(|| disk_image_chain(config, credentials));
        let serial = scope.spawn(|| if config.negative { serial_console_chain(config, credentials) } else { Ok(()) });
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a chain's thread panicked")))
        };
        (join(installed), join(refused), join(image), join(serial))
    });
    let failures: Vec<String> =
        [("install", installed), ("refusals", refused), ("disk image", image), ("serial console installer", serial)]
            .into_iter()
            .filter_map(|(what, result)| result.err().map(|e| format!("{what}: {e:#}")))
            .collect();
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(())
}

/// 1. The unattended install from the ISO; 2. the installed disk booted alone and served;
/// 3. the same medium booted again over it is refused (needs the installed disk).
fn install_chain(config: &InstallTestConfig, credentials: &Credentials, good: &str, target: &Path) -> Result<()> {
    let dir = &config.work_dir;
    let install_time = stage("install test", |s| {
        s.set("remastering the ISO with an unattended install config");
        let iso = remaster(&config.iso, good, dir, "unattended")?;
        blank_disk(target, DISK_GIB)?;
        s.set("installing (UEFI, CD + blank virtio disk)");
        let storage = [cdrom(&iso), virtio_disk(target, "raw", TARGET_SERIAL)].concat();
        // The copy step says nothing for up to about 5 minutes on a slow host.
        let spec = VmSpec::uefi("install", dir).memory(config.memory_mib).media(storage).media(no_periodic_writeback());
        let vm = Vm::start(&spec.silence_limit(INSTALL_SILENCE_LIMIT))?;
        let mut last = String::new();
        vm.wait_for("the unattended install's TRUTHDB-INSTALL-DONE", config.timeout, |serial, _| {
            if let Some(progress) = installer_progress(serial, &mut last) {
                s.set(&progress);
            }
            if let Some(line) =
                serial.lines().find(|l| l.contains("TRUTHDB-INSTALL-FAILED") || l.contains("TRUTHDB-INSTALL-REFUSED"))
            {
                return Some(Err(anyhow::anyhow!("the installer failed: {}", line.trim())));
            }
            serial.lines().find(|l| l.contains("TRUTHDB-INSTALL-DONE")).map(|line| Ok(line.trim().to_owned()))
        })?;
        // The power cut the moment the installer says it is done, before its power action: what
        // it wrote must already be on the disk, which the installed boot below then proves.
        vm.power_cut();
        let elapsed = vm.elapsed();
        let serial = vm.serial();
        for line in serial
            .lines()
            .filter(|l| l.contains("copy verified") || l.contains("footprint") || l.contains("TRUTHDB-INSTALL-DONE"))
        {
            println!("  {}", line.trim());
        }
        Ok(elapsed)
    })?;
    println!(
        "PASS unattended install from the ISO in {} (TCG), its power cut at TRUTHDB-INSTALL-DONE",
        format_duration(install_time)
    );

    stage("install test", |s| {
        s.set("booting the installed disk alone");
        check_appliance("installed", target, "raw", config, credentials, None, &BootExtras::default()).map(drop)
    })?;
    if config.negative {
        refusals(config, credentials, good, Some(target))?;
    }
    Ok(())
}

/// Refusals leave the disk untouched, each a boot of its own, side by side: without `target`
/// the three that need only the ISO; with it (the installed disk), the reinstall refusal.
fn refusals(config: &InstallTestConfig, credentials: &Credentials, good: &str, target: Option<&Path>) -> Result<()> {
    let no_wipe = credentials.config(&format!("serial = \"{TARGET_SERIAL}\""), false);
    let medium = credentials.config("path = \"/dev/sda\"", true);
    let largest = credentials.config("largest = true", true);
    let refusals = match target {
        None => vec![
            // (name, install config, ISO as a USB stick, the disk offered, what the refusal says)
            ("no-wipe", no_wipe.as_str(), false, Target::BlankVirtio, "`wipe = true` is required"),
            // A config naming the boot medium (the USB stick, /dev/sda).
            ("boot-medium", medium.as_str(), true, Target::BlankVirtio, "booted from"),
            // largest = true with only a USB disk attached: never chosen unless named.
            ("largest-usb", largest.as_str(), false, Target::Usb, "no installable disk"),
        ],
        // The medium left in the machine after an install: booting it again must not
        // reinstall over the appliance (a copy-on-write overlay of the installed disk).
        Some(target) => vec![("reinstall", good, false, Target::Installed(target), "already holds TruthDB OS")],
    };
    stage("install test", |s| {
        let names: Vec<&str> = refusals.iter().map(|r| r.0).collect();
        s.set(&format!("refusals: {}", names.join(", ")));
        let results = crate::vm::qemu::in_parallel(&refusals, |(name, install_config, as_usb, target, expected)| {
            check_refusal(name, &config.iso, install_config, *as_usb, target, expected, config)
        });
        let mut failed = Vec::new();
        for ((name, ..), result) in refusals.iter().zip(results) {
            if let Err(e) = result {
                eprintln!("FAIL {name}: {e:#}");
                failed.push(*name);
            }
        }
        if !failed.is_empty() {
            bail!("refusal test(s) failed: {}", failed.join(", "));
        }
        Ok(())
    })
}

/// The fifth chain: the boot menu's serial console entry (made the default of the ISO's GRUB
/// menu). The installer's questions come on ttyS0 and are answered by typing there, up to the
/// plan; a wrong disk path at the confirmation, then `q`, write nothing, and the questions
/// start again. The passwords typed never show on the console.
fn serial_console_chain(config: &InstallTestConfig, credentials: &Credentials) -> Result<()> {
    let dir = &config.work_dir;
    let name = "serial-console";
    let grub_cfg = dir.join(format!("{name}.grub.cfg"));
    let _ = std::fs::remove_file(&grub_cfg);
    Cmd::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(&config.iso)
        .args(["-extract", "/boot/grub/grub.cfg"])
        .arg(&grub_cfg)
        .run_logged(&dir.join(format!("{name}.extract.log")), |_| {})?;
    let menu = std::fs::read_to_string(&grub_cfg).with_context(|| format!("reading {}", grub_cfg.display()))?;
    let title = menu
        .lines()
        .filter(|l| l.trim_start().starts_with("menuentry ") && l.contains("(serial console)"))
        .find_map(|l| l.split('"').nth(1))
        .context("the ISO's GRUB menu has no \"(serial console)\" entry")?
        .to_owned();
    // GRUB shows the menu once its config has run: the last `default` set wins.
    std::fs::write(&grub_cfg, format!("{menu}\nset default=\"{title}\"\n"))?;
    let iso = remaster_with(&config.iso, &[(&grub_cfg, "/boot/grub/grub.cfg")], dir, name)?;
    // Offered, so large enough; never written, so no block of it allocated.
    let disk = dir.join(format!("{name}.raw"));
    blank_disk(&disk, DISK_GIB)?;
    let vm = Vm::start(
        &VmSpec::uefi(name, dir)
            .memory(config.memory_mib)
            .media(cdrom(&iso))
            .media(virtio_disk(&disk, "raw", TARGET_SERIAL))
            .serial_input(),
    )?;
    // Waits for the `n`th showing of `prompt`, then types `answer` and Enter.
    let answer = |prompt: &str, n: usize, answer: &str| -> Result<()> {
        vm.wait_for(&format!("the serial console installer's {prompt:?}"), config.timeout, |serial, _| {
            (serial.matches(prompt).count() >= n).then_some(Ok(()))
        })?;
        vm.type_on_serial(&format!("{answer}\r"))
    };
    // Each question is known by a short token of its prompt, not its whole line: a check that
    // matches a whole line of terminal text is at the mercy of every byte.
    let disk_prompt = "Install to disk";
    answer(disk_prompt, 1, "1")?;
    let booted_in = vm.elapsed();
    answer("Host name [", 1, "serial-host")?;
    answer("login name: ", 1, ADMIN)?;
    answer("SSH public key", 1, credentials.public_key.trim())?;
    answer("for the console and sudo", 1, "")?;
    answer("Database administrator's password", 1, &credentials.password)?;
    answer("Again: ", 1, &credentials.password)?;
    answer("reboot or poweroff?", 1, "")?;
    answer("Type /dev/vda to install", 1, "/dev/vdz")?;
    answer("Type /dev/vda to install", 2, "q")?;
    // Quit, and the service asks again from the start.
    let serial = vm.wait_for("the serial console installer to start again", config.timeout, |serial, _| {
        (serial.matches(disk_prompt).count() >= 2).then(|| Ok(serial.to_owned()))
    })?;
    // A live system that wrote no disk: nothing to lose.
    vm.power_cut();
    for said in [
        "TRUTHDB-OS-BOOTED",
        "Disks to install to:",
        "  1) /dev/vda",
        "/dev/vda1",
        "\"/dev/vdz\" is not /dev/vda: nothing was written",
        "Quit: nothing was written to any disk.",
    ] {
        if !serial.contains(said) {
            bail!("{name}: the serial console never said {said:?}: see {}", vm.serial_log.display());
        }
    }
    if serial.contains(&credentials.password) {
        bail!("{name}: the database password typed showed on the serial console ({})", vm.serial_log.display());
    }
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&disk)?);
    if allocated != 0 {
        bail!("{name}: the disk was written ({allocated} blocks allocated) though the install was not confirmed");
    }
    println!(
        "PASS {name}: the menu's serial console entry asked on ttyS0 ({} to the first question), plan shown, \
         a wrong disk path and `q` wrote nothing, the questions started again, the passwords unechoed",
        format_duration(booted_in)
    );
    Ok(())
}

/// 4. The disk image made by `cargo xtask disk` boots the same way.
fn disk_image_chain(config: &InstallTestConfig, credentials: &Credentials) -> Result<()> {
    let Some(installer) = &config.disk_image_installer else {
        return Ok(());
    };
    let dir = &config.work_dir;
    let image = dir.join("disk-image.raw");
    let config_file = dir.join("disk-image.install.toml");
    std::fs::write(&config_file, credentials.config("", true).replace("\n[disk]\n\n", "\n"))?;
    let started = Instant::now();
    stage("install test", |s| {
        s.set("cargo xtask disk --format raw (the engine on a loop device)");
        let _slot = crate::vm::qemu::take_slot_for_host_work("disk-image build")?;
        let log = dir.join("disk-image.log");
        crate::disk_image::build(
            &crate::disk_image::DiskImageInputs {
                iso: &config.iso,
                config: &config_file,
                installer,
                format: crate::disk_image::DiskFormat::Raw,
                size_gib: DISK_GIB,
                output: &image,
                log: &log,
            },
            &mut |line| {
                if let Some(progress) = crate::disk_image::engine_progress(line) {
                    s.set(progress);
                }
            },
        )
    })?;
    println!("PASS disk image built in {}", format_duration(started.elapsed()));
    stage("install test", |s| {
        s.set("booting the disk image");
        check_appliance("disk-image", &image, "raw", config, credentials, None, &BootExtras::default()).map(drop)
    })
}

/// Boots `disk` alone under OVMF and checks the appliance: marker with a healthy payload,
/// psql over TLS with the password (and nothing without TLS), ssh with the key and not with
/// a password, and sudo: without a password for a key-only admin, else with
/// `admin_password`; then the certificate copied off over ssh (the marker's fingerprint,
/// `verify-full` for the host name) and the firewall's ruleset (read with sudo).
pub fn check_appliance(
    name: &str,
    disk: &Path,
    format: &str,
    config: &InstallTestConfig,
    credentials: &Credentials,
    admin_password: Option<&str>,
    extras: &BootExtras,
) -> Result<ApplianceFacts> {
    let (pg_port, ssh_port) = (free_port()?, free_port()?);
    let vm = Vm::start(
        &VmSpec::uefi(format!("{name}-boot"), &config.work_dir)
            .memory(config.memory_mib)
            .media(virtio_disk(disk, format, TARGET_SERIAL))
            .media(extras.qemu_args.clone())
            .forward(pg_port, 5432)
            .forward(ssh_port, 22),
    )?;
    // The boot marker prints the certificate's fingerprint just before its own line.
    let (marker, tls_line) = vm.wait_for("the installed system's boot marker", config.timeout, |serial, _| {
        let line = crate::vm::boot_test::marker_line(serial)?;
        Some(Ok((line, line_from(serial, TLS_MARKER))))
    })?;
    let booted_in = vm.elapsed();
    // Healthy is not enough: a boot that tried to provision again (a power cut lost its "done")
    // and failed may still serve the database it made before.
    if let Some(failed) = line_from(&vm.serial(), PROVISION_FAILED) {
        bail!("{name}: provisioning failed on this boot: {failed}");
    }
    crate::vm::boot_test::check_marker(&marker, &config.expected_version)?;
    if !marker.contains("system=installed") || !marker.contains("health=ok") {
        bail!("{name}: the installed system is not healthy: {marker}");
    }
    let Some(tls_line) = tls_line else {
        bail!("{name}: the boot marker printed no {TLS_MARKER}... line (no certificate in {PG_CERT}?)");
    };
    let served_fingerprint = tls_line.trim_start_matches(TLS_MARKER).to_owned();
    println!("PASS {name} boots alone (UEFI, {}): {marker}", format_duration(booted_in));

    // Always to 127.0.0.1 (hostaddr); `host` is the name a certificate is checked against.
    // `tls`: libpq's settings for TLS (PGSSLMODE, PGSSLROOTCERT, ...) of this connection.
    let psql = |host: &str, tls: &[(&str, &str)], password: &str, sql: &str| {
        let mut cmd = Cmd::new("psql")
            .args(["-X", "-t", "-A", "-h", host, "-p", &pg_port.to_string(), "-U", ADMIN, "-d", "postgres", "-c", sql])
            .env("PGHOSTADDR", "127.0.0.1")
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10");
        for (key, value) in tls {
            cmd = cmd.env(key, value);
        }
        cmd.output_unchecked()
    };
    let require = [("PGSSLMODE", "require")];
    let query = "select current_user || ' ' || current_setting('server_version_num') || ' ' || \
                 (select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = current_user) || ' ' || \
                 (select ssl from pg_stat_ssl where pid = pg_backend_pid())";
    let answer = retry(Duration::from_secs(60), || {
        let out = psql("127.0.0.1", &require, &credentials.password, query)?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    })?;
    let fields: Vec<&str> = answer.split(' ').collect();
    if fields.len() != 4
        || fields[0] != ADMIN
        || !fields[1].starts_with("17")
        || fields[2] != "true"
        || fields[3] != "true"
    {
        bail!(
            "{name}: unexpected answer from PostgreSQL: {answer:?} (want role {ADMIN}, version 17, a SCRAM secret, TLS)"
        );
    }
    let wrong = psql("127.0.0.1", &require, "not-the-password", "select 1")?;
    let said = String::from_utf8_lossy(&wrong.stderr);
    if wrong.status.success() || !said.contains("password authentication failed") {
        bail!("{name}: a wrong database password was not refused: {said}");
    }
    // Without TLS, even the right password is refused, by pg_hba.conf's hostnossl reject line.
    let plain =
        psql("127.0.0.1", &[("PGSSLMODE", "disable"), ("PGGSSENCMODE", "disable")], &credentials.password, "select 1")?;
    let said = String::from_utf8_lossy(&plain.stderr);
    if plain.status.success() || !said.contains("pg_hba.conf rejects connection") || !said.contains("no encryption") {
        bail!("{name}: a connection without TLS was not refused by pg_hba.conf: {said}");
    }
    println!(
        "PASS {name}: psql over 127.0.0.1:{pg_port} as {ADMIN} (TLS, password, scram-sha-256): {answer}; \
         without TLS refused"
    );

    let ssh = |extra: &[&str], command: &str| {
        Cmd::new("ssh")
            .args(["-p", &ssh_port.to_string(), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"])
            .args(extra)
            .arg(format!("{ADMIN}@127.0.0.1"))
            .arg(command)
            .output_unchecked()
    };
    let key = credentials.key.to_string_lossy().into_owned();
    let with_key = ["-i", key.as_str(), "-o", "IdentitiesOnly=yes"];
    let sudo = |command: &str| match admin_password {
        // The test's passwords are letters, digits and '-': safe inside single quotes.
        Some(password) => format!("echo '{password}' | sudo -S -p '' {command}"),
        None => format!("sudo -n {command}"),
    };
    let remote = retry(Duration::from_secs(60), || {
        let out = ssh(
            &with_key,
            &format!("hostname; findmnt -n -o TARGET,FSTYPE /var/lib/postgresql; {} && echo sudo-ok", sudo("true")),
        )?;
        if !out.status.success() {
            bail!("ssh failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?;
    let lines: Vec<&str> = remote.lines().map(str::trim).collect();
    if lines != [HOSTNAME, "/var/lib/postgresql ext4", "sudo-ok"] {
        bail!("{name}: unexpected answer over ssh: {lines:?}");
    }
    let password_login = ssh(
        &["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password,keyboard-interactive"],
        "true",
    )?;
    let said = String::from_utf8_lossy(&password_login.stderr);
    if password_login.status.success() || !said.contains("Permission denied (publickey)") {
        bail!("{name}: ssh offered more than key login: {said}");
    }
    println!("PASS {name}: ssh over 127.0.0.1:{ssh_port} with the key ({}), password login refused", lines.join(", "));

    // What the README tells a client to do: copy the certificate off over ssh, compare its
    // fingerprint with the one the appliance printed, and verify the server with it.
    let out = ssh(&with_key, &format!("cat {PG_CERT}"))?;
    if !out.status.success() {
        bail!("{name}: could not read {PG_CERT} over ssh: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    let fingerprint = pem_sha256_fingerprint(&pem).with_context(|| format!("{name}: {PG_CERT}"))?;
    if fingerprint != served_fingerprint {
        bail!("{name}: {PG_CERT} has SHA-256 fingerprint {fingerprint}, the serial console said {served_fingerprint}");
    }
    let cert = config.work_dir.join(format!("{name}.postgresql.crt"));
    std::fs::write(&cert, &pem).with_context(|| format!("writing {}", cert.display()))?;
    let cert = cert.to_string_lossy().into_owned();
    let verified = psql(
        HOSTNAME,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &cert)],
        &credentials.password,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )?;
    let said = String::from_utf8_lossy(&verified.stdout);
    if !verified.status.success() || said.trim() != "t" {
        bail!(
            "{name}: psql with sslmode=verify-full for {HOSTNAME} and the copied certificate failed: {}{said}",
            String::from_utf8_lossy(&verified.stderr)
        );
    }
    println!("PASS {name}: TLS certificate copied over ssh (sha256 {fingerprint}) verifies the server as {HOSTNAME}");

    let out = ssh(&with_key, &sudo("nft list ruleset"))?;
    let ruleset = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("{name}: nft list ruleset failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let hook_drops = |hook: &str| {
        ruleset.lines().any(|l| l.contains(&format!("type filter hook {hook} ")) && l.contains("policy drop;"))
    };
    let admitted = ruleset.lines().any(|l| l.contains("tcp dport") && l.contains("22") && l.contains("5432"));
    if !hook_drops("input") || !hook_drops("forward") || !admitted {
        bail!("{name}: the firewall is not input/forward policy drop with SSH and PostgreSQL admitted:\n{ruleset}");
    }
    println!("PASS {name}: nftables loaded: input and forward policy drop, tcp 22 and 5432 admitted");

    if extras.boot_analysis {
        // For the record (BENCHMARKS.md): where this boot's time went.
        let out = ssh(&with_key, &sudo("systemd-analyze critical-chain truthdb-boot-marker.service"))?;
        println!("{name}: systemd-analyze critical-chain:\n{}", String::from_utf8_lossy(&out.stdout).trim_end());
    }
    if let Some(other) = extras.refused_key {
        let other = other.to_string_lossy().into_owned();
        let out = ssh(&["-i", other.as_str(), "-o", "IdentitiesOnly=yes"], "true")?;
        let said = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !said.contains("Permission denied") {
            bail!("{name}: another appliance's key ({other}) was not refused: {said}");
        }
        println!("PASS {name}: another appliance's admin key is refused");
    }
    let out = ssh(
        &with_key,
        "cat /etc/machine-id; ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub | cut -d' ' -f2; \
         df --block-size=1M --output=size /var/lib/postgresql | tail -n 1",
    )?;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let facts: Vec<&str> = said.lines().map(str::trim).collect();
    let identifier =
        psql("127.0.0.1", &require, &credentials.password, "select system_identifier from pg_control_system()")?;
    let system_identifier = String::from_utf8_lossy(&identifier.stdout).trim().to_owned();
    let [machine_id, host_key, data_mib] = facts.as_slice() else {
        bail!("{name}: unexpected facts over ssh: {facts:?}");
    };
    if let Some(acknowledged) = extras.rows_committed {
        // Rows the database acknowledged before an earlier boot's power cut.
        let sql =
            format!("select count(*) || ' ' || coalesce(max(id), 0) from {POWER_CUT_TABLE} where id <= {acknowledged}");
        let out = psql("127.0.0.1", &require, &credentials.password, &sql)?;
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !out.status.success() || said != format!("{acknowledged} {acknowledged}") {
            bail!(
                "{name}: after the power cut, rows 1-{acknowledged} (each committed before it) should all be there;                  count and highest id: {said:?} {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        println!("PASS {name}: all {acknowledged} rows committed before the power cut are there");
    }
    let mut facts = ApplianceFacts {
        machine_id: machine_id.to_string(),
        host_key: host_key.to_string(),
        data_mib: data_mib.parse().with_context(|| format!("{name}: data size {data_mib:?}"))?,
        system_identifier,
        serial: vm.serial(),
        rows_committed: None,
    };
    if facts.machine_id.len() != 32 || !facts.host_key.starts_with("SHA256:") || facts.system_identifier.is_empty() {
        bail!(
            "{name}: incomplete facts: machine-id {:?}, host key {:?}, cluster {:?}",
            facts.machine_id,
            facts.host_key,
            facts.system_identifier
        );
    }
    if extras.write_then_cut {
        // Rows inserted one transaction at a time; the power is cut while the next is in flight.
        // Each acknowledged commit is durable (synchronous_commit): the next boot must have all.
        let create = format!("create table if not exists {POWER_CUT_TABLE} (id bigint primary key, at timestamptz)");
        let out = psql("127.0.0.1", &require, &credentials.password, &create)?;
        if !out.status.success() {
            bail!("{name}: creating {POWER_CUT_TABLE}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let acknowledged = std::sync::atomic::AtomicU64::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            scope.spawn(|| {
                let mut id = 1;
                while !stop.load(SeqCst) {
                    let sql = format!("insert into {POWER_CUT_TABLE} values ({id}, now())");
                    match psql("127.0.0.1", &require, &credentials.password, &sql) {
                        Ok(out) if out.status.success() => {
                            acknowledged.store(id, SeqCst);
                            id += 1;
                        }
                        _ => break,
                    }
                }
            });
            let started = Instant::now();
            while acknowledged.load(SeqCst) < 10 {
                if started.elapsed() > Duration::from_secs(180) {
                    stop.store(true, SeqCst);
                    bail!("{name}: fewer than 10 rows committed in 3 minutes");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            vm.power_cut();
            stop.store(true, SeqCst);
            Ok(())
        })?;
        let rows = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
        println!("PASS {name}: power cut while rows were being inserted ({rows} committed before it)");
        facts.rows_committed = Some(rows);
    } else {
        let pressed = Instant::now();
        vm.power_off(crate::vm::qemu::POWER_OFF_PATIENCE).with_context(|| format!("{name}: the clean shutdown"))?;
        println!("PASS {name}: shut down cleanly (ACPI power button) in {}", format_duration(pressed.elapsed()));
    }
    Ok(facts)
}

/// What a boot of the appliance gets besides its disk, and checks besides the usual.
#[derive(Default)]
pub struct BootExtras<'a> {
    /// More QEMU arguments: a NoCloud seed, SMBIOS credentials.
    pub qemu_args: Vec<String>,
    /// A key that must not log in (another appliance's admin's).
    pub refused_key: Option<&'a Path>,
    /// Print `systemd-analyze critical-chain` of the boot marker (where the boot's time went).
    pub boot_analysis: bool,
    /// End with a power cut while rows are inserted into the database, instead of a clean
    /// shutdown; [`ApplianceFacts::rows_committed`] says how many were acknowledged.
    pub write_then_cut: bool,
    /// Rows an earlier boot's `write_then_cut` had committed: all must be there.
    pub rows_committed: Option<u64>,
}

/// What an appliance says about itself, to tell appliances (and boots of one) apart.
#[derive(Debug)]
pub struct ApplianceFacts {
    pub machine_id: String,
    /// The SHA-256 fingerprint of its ed25519 SSH host key.
    pub host_key: String,
    /// The database cluster's system identifier (pg_control_system()).
    pub system_identifier: String,
    /// The data file system's size in MiB.
    pub data_mib: u64,
    /// The serial console, up to the checks' end.
    pub serial: String,
    /// With [`BootExtras::write_then_cut`]: the rows committed before the power cut.
    pub rows_committed: Option<u64>,
}

/// The SHA-256 fingerprint of a PEM certificate as `openssl x509 -noout -fingerprint -sha256`
/// prints it (upper-case hex pairs joined by colons): the digest of its DER bytes.
fn pem_sha256_fingerprint(pem: &str) -> Result<String> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        bail!("no PEM certificate in {pem:?}");
    }
    let der = base64_decode(&body)?;
    Ok(Sha256::digest(&der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":"))
}

/// Standard base64 (RFC 4648, padded), as PEM bodies are.
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => bail!("not base64: {:?}", c as char),
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// The disk a refusal test offers the installer.
enum Target<'a> {
    /// A small blank virtio disk.
    BlankVirtio,
    /// A small blank disk on USB.
    Usb,
    /// A copy-on-write overlay of an installed disk: its contents must stay the installed ones.
    Installed(&'a Path),
}

/// Boots the ISO with `install_config` on it and the disk `target`; the installer must refuse
/// with `expected` in its message and the disk must be unchanged.
fn check_refusal(
    name: &str,
    iso: &Path,
    install_config: &str,
    as_usb: bool,
    target: &Target,
    expected: &str,
    config: &InstallTestConfig,
) -> Result<()> {
    let dir = &config.work_dir;
    let iso = remaster(iso, install_config, dir, name)?;
    let mut storage = if as_usb { usb_stick(&iso) } else { cdrom(&iso) };
    let (disk, before) = match target {
        Target::BlankVirtio | Target::Usb => {
            let disk = dir.join(format!("{name}.raw"));
            // Refusals come before any size check, so a small disk will do (and hashes quickly).
            blank_disk(&disk, REFUSAL_DISK_GIB)?;
            storage.extend(match target {
                Target::Usb => usb_disk(&disk, TARGET_SERIAL),
                _ => virtio_disk(&disk, "raw", TARGET_SERIAL),
            });
            let before = sha256_of(&disk)?;
            (disk, before)
        }
        Target::Installed(installed) => {
            let overlay = dir.join(format!("{name}.qcow2"));
            let _ = std::fs::remove_file(&overlay);
            Cmd::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                .arg(installed)
                .arg(&overlay)
                .run()?;
            storage.extend(virtio_disk(&overlay, "qcow2", TARGET_SERIAL));
            (overlay, String::new())
        }
    };
    let vm = Vm::start(&VmSpec::uefi(name, dir).memory(config.memory_mib).media(storage))?;
    let refusal = vm.wait_for("the installer's refusal", config.timeout, |serial, _| {
        if serial.contains("TRUTHDB-INSTALL-DONE") {
            return Some(Err(anyhow::anyhow!("the installer installed instead of refusing")));
        }
        let line = serial.lines().find(|l| l.contains("TRUTHDB-INSTALL-REFUSED"))?;
        Some(Ok(line.trim().to_owned()))
    })?;
    // A live system that wrote no disk: nothing to lose.
    vm.power_cut();
    drop(vm);
    if !refusal.contains(expected) {
        bail!("{name}: the refusal does not say {expected:?}: {refusal}");
    }
    let unchanged = match target {
        Target::Installed(installed) => {
            // What the guest sees through the overlay, sector by sector, is the installed disk.
            let compared =
                Cmd::new("qemu-img").args(["compare", "-q", "-f", "qcow2", "-F", "raw"]).arg(&disk).arg(installed);
            if compared.run().is_err() {
                bail!("{name}: the installer refused, but the installed disk's contents changed");
            }
            "contents compared with qemu-img".to_owned()
        }
        _ => {
            let after = sha256_of(&disk)?;
            if before != after {
                bail!("{name}: the installer refused, but the disk changed (sha256 {before} -> {after})");
            }
            format!("sha256 {}", &after[..16])
        }
    };
    let _ = std::fs::remove_file(&disk);
    println!("PASS {name}: refused ({refusal}); disk unchanged ({unchanged})");
    Ok(())
}

/// Runs `attempt` until it succeeds or `patience` runs out (services may still be starting
/// right after the marker); the last error is returned.
fn retry<T>(patience: Duration, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate the payload's configure program made (P-256, CN db1.example.org) and the
    /// fingerprint `openssl x509 -noout -fingerprint -sha256` printed for it.
    const CERT: &str = "\
-----BEGIN CERTIFICATE-----
MIIBqjCCAVCgAwIBAgIUUd+C4QXNZejeawoisgP9dMgTD8swCgYIKoZIzj0EAwIw
GjEYMBYGA1UEAwwPZGIxLmV4YW1wbGUub3JnMB4XDTI2MTEzMDA4NDAxMVoXDTM2
MTEyNzA4NDAxMVowGjEYMBYGA1UEAwwPZGIxLmV4YW1wbGUub3JnMFkwEwYHKoZI
zj0CAQYIKoZIzj0DAQcDQgAEGfIiw7vAcJ9FlM+ZD97Fg36xD5Zm5fwXrrBZ1//B
/7aZzSUntXry1K/D6cR0ZE9ScblVgmCA2E3TiJ3CsTETOKN0MHIwHQYDVR0OBBYE
FNUUPGnGP+UH+8PJHg6myQXntcA9MB8GA1UdIwQYMBaAFNUUPGnGP+UH+8PJHg6m
yQXntcA9MA8GA1UdEwEB/wQFMAMBAf8wHwYDVR0RBBgwFoIPZGIxLmV4YW1wbGUu
b3JnggNkYjEwCgYIKoZIzj0EAwIDSAAwRQIhAKJFOQyxP7v+CbiYd290/+yR/lz7
1ab8vDrcW6cDkUJKAiA7WWrwashMtkHhPTOis64kA9gFYByv720Q6rm406L0xw==
-----END CERTIFICATE-----
";

    #[test]
    fn a_certificate_fingerprint_is_what_openssl_prints() {
        assert_eq!(
            pem_sha256_fingerprint(CERT).unwrap(),
            "1B:4E:D4:AA:BF:B9:D9:D0:2B:48:4E:D0:E8:E1:E1:16:F3:8D:FE:A6:76:1E:0F:A2:E0:07:87:0C:72:33:D1:1C"
        );
        // As it comes over ssh: CRLF line ends, text around it.
        let noisy = format!("motd\r\n{}\r\n", CERT.replace('\n', "\r\n"));
        assert_eq!(pem_sha256_fingerprint(&noisy).unwrap(), pem_sha256_fingerprint(CERT).unwrap());
        assert!(pem_sha256_fingerprint("no certificate").is_err());
        assert!(
            pem_sha256_fingerprint("-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n").is_err()
        );
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8hIQ==").unwrap(), b"hello!!");
        assert_eq!(base64_decode("aGk/").unwrap(), b"hi?");
        assert_eq!(base64_decode("").unwrap(), b"");
    }
}
