//! Stage "boot test": boots the published ISO in QEMU the four ways a user boots a hybrid
//! image (BIOS and UEFI, each from a CD and from a USB stick), through the image's own boot
//! loaders, and waits for the appliance's boot marker on the serial console.
//!
//! The marker comes from `truthdb-boot-marker.service` in `overlay/`:
//! `TRUTHDB-OS-BOOTED version=<version> kernel=<uname -r>`. Headless: the serial console goes
//! to a log file per mode, kept under `target/truthdb-os/boot-test/`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::progress::{self, format_duration};
use crate::run::{Cmd, tail};

pub const MARKER: &str = "TRUTHDB-OS-BOOTED";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BootMode {
    BiosCd,
    BiosUsb,
    UefiCd,
    UefiUsb,
}

impl BootMode {
    pub const ALL: [BootMode; 4] = [BootMode::BiosCd, BootMode::BiosUsb, BootMode::UefiCd, BootMode::UefiUsb];

    fn is_uefi(self) -> bool {
        matches!(self, BootMode::UefiCd | BootMode::UefiUsb)
    }
    fn is_usb(self) -> bool {
        matches!(self, BootMode::BiosUsb | BootMode::UefiUsb)
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootMode::BiosCd => "bios-cd",
            BootMode::BiosUsb => "bios-usb",
            BootMode::UefiCd => "uefi-cd",
            BootMode::UefiUsb => "uefi-usb",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// Software emulation: works everywhere.
    Tcg,
    /// Hardware virtualisation, unconditionally.
    Kvm,
    /// Boot the first mode with KVM as a probe; if its marker does not show within the probe
    /// time, use TCG for everything (a KVM guest can hang on some hosts).
    Auto,
}

#[derive(Clone, Debug)]
pub struct BootTestConfig {
    pub iso: PathBuf,
    pub modes: Vec<BootMode>,
    pub accel: Accel,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub expected_version: String,
    pub log_dir: PathBuf,
}

/// What one boot showed.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    pub mode: BootMode,
    pub marker_line: String,
    pub elapsed: Duration,
    pub accel: &'static str,
}

/// UEFI firmware files: (code, vars template). Debian 12/13 and Ubuntu 22.04+ ship the 4M pair.
const OVMF_CANDIDATES: [(&str, &str); 2] = [
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
];

pub fn ovmf_files() -> Result<(PathBuf, PathBuf)> {
    OVMF_CANDIDATES
        .iter()
        .find(|(code, vars)| Path::new(code).is_file() && Path::new(vars).is_file())
        .map(|(code, vars)| (PathBuf::from(code), PathBuf::from(vars)))
        .context("no OVMF firmware found (apt-get install ovmf)")
}

/// The QEMU command line for one boot: always through the image's own boot loader.
fn qemu_command(
    mode: BootMode,
    iso: &Path,
    serial_log: &Path,
    vars: Option<&Path>,
    kvm: bool,
    memory_mib: u32,
) -> Result<Cmd> {
    let mut cmd = Cmd::new("qemu-system-x86_64")
        // Single-threaded TCG: with one host thread per vCPU (MTTCG) a guest kernel patching its
        // own code (static keys, int3) while another vCPU runs it crashed here once in ~25 boots.
        .args(["-machine", "q35", "-accel", if kvm { "kvm" } else { "tcg,thread=single" }])
        .args(["-m", &memory_mib.to_string(), "-smp", "2"])
        .args(["-display", "none", "-vga", "std", "-no-reboot", "-net", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", serial_log.display()));
    if mode.is_uefi() {
        let (code, _) = ovmf_files()?;
        let vars = vars.context("UEFI boot needs a writable OVMF vars file")?;
        cmd = cmd
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
    }
    // snapshot=on: the guest may write to the "stick"; the ISO on disk stays unchanged.
    let iso = iso.display();
    if mode.is_usb() {
        cmd = cmd.arg("-drive").arg(format!("if=none,id=stick,format=raw,snapshot=on,file={iso}")).args([
            "-device",
            "qemu-xhci,id=xhci",
            "-device",
            "usb-storage,bus=xhci.0,drive=stick,bootindex=0",
        ]);
    } else {
        cmd = cmd
            .arg("-drive")
            .arg(format!("if=none,id=cd,format=raw,media=cdrom,readonly=on,file={iso}"))
            .args(["-device", "ide-cd,drive=cd,bootindex=0"]);
    }
    Ok(cmd)
}

/// Boots once and waits up to `timeout` for the marker.
fn boot_once(config: &BootTestConfig, mode: BootMode, kvm: bool, timeout: Duration) -> Result<BootOutcome> {
    std::fs::create_dir_all(&config.log_dir)?;
    let serial_log = config.log_dir.join(format!("{mode}.serial.log"));
    let qemu_log = config.log_dir.join(format!("{mode}.qemu.log"));
    let _ = std::fs::remove_file(&serial_log);
    let vars_dir = tempfile::tempdir()?;
    let vars = if mode.is_uefi() {
        let (_, template) = ovmf_files()?;
        let copy = vars_dir.path().join("OVMF_VARS.fd");
        std::fs::copy(&template, &copy).with_context(|| format!("copying {}", template.display()))?;
        Some(copy)
    } else {
        None
    };
    let cmd = qemu_command(mode, &config.iso, &serial_log, vars.as_deref(), kvm, config.memory_mib)?;
    let start = Instant::now();
    let qemu = cmd.start_logged(&qemu_log)?;
    let outcome = loop {
        let serial = std::fs::read(&serial_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        // The console may put terminal escapes before the marker on its line (getty resets).
        if let Some(line) = serial.lines().find_map(|l| l.find(MARKER).map(|at| &l[at..])) {
            break Ok(line.trim().to_owned());
        }
        // A panicked guest never prints the marker; say so now, not at the timeout.
        if serial.contains("Kernel panic - not syncing") {
            break Err(anyhow::anyhow!(
                "the guest kernel panicked\nserial console ({}), last lines:\n{}",
                serial_log.display(),
                tail(&serial, 30)
            ));
        }
        if let Some(output) = qemu.try_wait()? {
            let said = std::fs::read_to_string(&qemu_log).unwrap_or_default();
            break Err(anyhow::anyhow!(
                "QEMU exited ({}) before the boot marker\nQEMU said:\n{}\nserial console ({}), last lines:\n{}",
                crate::run::describe_status(output.status),
                tail(&said, 10),
                serial_log.display(),
                tail(&serial, 30)
            ));
        }
        if start.elapsed() > timeout {
            break Err(anyhow::anyhow!(
                "no boot marker after {} ({})\nserial console ({}), last lines:\n{}",
                format_duration(timeout),
                if kvm { "kvm" } else { "tcg" },
                serial_log.display(),
                tail(&serial, 30)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = qemu.kill();
    let marker_line = outcome.with_context(|| format!("boot mode {mode}"))?;
    Ok(BootOutcome { mode, marker_line, elapsed: start.elapsed(), accel: if kvm { "kvm" } else { "tcg" } })
}

/// Checks the marker names the expected version and a kernel release.
pub fn check_marker(line: &str, expected_version: &str) -> Result<()> {
    let field =
        |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key).map(str::to_owned)).unwrap_or_default();
    let version = field("version=");
    if version != expected_version {
        bail!("the booted image says version {version:?}, expected {expected_version:?}: {line:?}");
    }
    if field("kernel=").is_empty() {
        bail!("the boot marker names no kernel release: {line:?}");
    }
    Ok(())
}

/// How long the `auto` probe waits for a KVM boot before falling back to TCG.
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run(config: &BootTestConfig) -> Result<Vec<BootOutcome>> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    let mut kvm = config.accel == Accel::Kvm;
    let mut outcomes = Vec::new();
    let mut modes = config.modes.clone();
    if config.accel == Accel::Auto && Path::new("/dev/kvm").exists() && !modes.is_empty() {
        let first = modes[0];
        match progress::stage("kvm probe", |_| boot_once(config, first, true, KVM_PROBE_TIMEOUT)) {
            Ok(outcome) => {
                kvm = true;
                check_marker(&outcome.marker_line, &config.expected_version)?;
                report(&outcome);
                outcomes.push(outcome);
                modes.remove(0);
            }
            Err(e) => eprintln!("KVM probe failed, using TCG: {}", format!("{e:#}").lines().next().unwrap_or("")),
        }
    }
    let mut failures = Vec::new();
    let at_once = crate::qemu::vms_at_once();
    for batch in modes.chunks(at_once) {
        let names: Vec<String> = batch.iter().map(|m| m.to_string()).collect();
        let results = progress::stage("boot test", |stage| {
            stage.set(&format!("{} ({}, {} at once)", names.join(" + "), if kvm { "kvm" } else { "tcg" }, batch.len()));
            Ok(crate::qemu::in_parallel(batch, |&mode| boot_once(config, mode, kvm, config.timeout)))
        })?;
        for (&mode, result) in batch.iter().zip(results) {
            match result.and_then(|o| check_marker(&o.marker_line, &config.expected_version).map(|_| o)) {
                Ok(outcome) => {
                    report(&outcome);
                    outcomes.push(outcome);
                }
                Err(e) => {
                    eprintln!("FAIL {mode}: {e:#}");
                    failures.push(mode.to_string());
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("boot test failed in {} mode(s): {}", failures.len(), failures.join(", "));
    }
    Ok(outcomes)
}

fn report(outcome: &BootOutcome) {
    println!(
        "PASS {:<8} {:>7} ({})  {}",
        outcome.mode.to_string(),
        format_duration(outcome.elapsed),
        outcome.accel,
        outcome.marker_line
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_must_name_the_version_and_a_kernel() {
        check_marker("TRUTHDB-OS-BOOTED version=0.1.0 kernel=6.12.57+deb13-amd64", "0.1.0").unwrap();
        assert!(check_marker("TRUTHDB-OS-BOOTED version=0.0.9 kernel=6.12", "0.1.0").is_err());
        assert!(check_marker("TRUTHDB-OS-BOOTED version=0.1.0 kernel=", "0.1.0").is_err());
    }

    #[test]
    fn usb_modes_boot_from_a_usb_stick_and_cd_modes_from_a_cd() {
        let dir = tempfile::tempdir().unwrap();
        let iso = dir.path().join("x.iso");
        let bios_usb =
            qemu_command(BootMode::BiosUsb, &iso, &dir.path().join("s"), None, false, 1024).unwrap().to_string();
        assert!(bios_usb.contains("usb-storage") && !bios_usb.contains("media=cdrom") && !bios_usb.contains("pflash"));
        let bios_cd =
            qemu_command(BootMode::BiosCd, &iso, &dir.path().join("s"), None, false, 1024).unwrap().to_string();
        assert!(bios_cd.contains("media=cdrom") && bios_cd.contains("-accel tcg") && !bios_cd.contains("-kernel"));
        assert!(bios_cd.contains("-accel tcg,thread=single"), "{bios_cd}");
    }
}
