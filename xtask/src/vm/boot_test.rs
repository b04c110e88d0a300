//! Stage "boot test": boots the published ISO in QEMU the four ways a user boots a hybrid
//! image (BIOS and UEFI, each from a CD and from a USB stick), through the image's own boot
//! loaders, and waits for the appliance's boot marker on the serial console.
//!
//! The marker comes from `truthdb-boot-marker.service` in `overlay/`:
//! `TRUTHDB-OS-BOOTED version=<version> kernel=<uname -r>`. Headless: the serial console goes
//! to a log file per mode, kept under `target/truthdb-os/boot-test/`. The machines are
//! [`crate::vm::qemu`]'s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::project::Project;
use crate::util::progress::{self, format_duration};
use crate::vm::qemu::{AccelChoice, Accelerator, Firmware, KvmProbe, Vm, VmSpec, cdrom, line_from, usb_stick};

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

    /// A machine that boots `iso` this way: its firmware, and the ISO as its boot medium (a CD,
    /// or a USB stick whose writes go to a temporary overlay).
    pub fn machine(self, name: impl Into<String>, log_dir: impl Into<PathBuf>, iso: &Path) -> VmSpec {
        let firmware = if self.is_uefi() { Firmware::Uefi } else { Firmware::Bios };
        VmSpec::new(firmware, name, log_dir).media(if self.is_usb() { usb_stick(iso) } else { cdrom(iso) })
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

#[derive(Clone, Debug)]
pub struct BootTestConfig {
    pub iso: PathBuf,
    pub modes: Vec<BootMode>,
    pub accel: AccelChoice,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub expected_version: String,
    pub log_dir: PathBuf,
    /// Report as JSON on stdout instead of `PASS` lines.
    pub json: bool,
    /// Where the `auto` probe's result is recorded for `cargo xtask vm` (see
    /// [`crate::vm::qemu::record_kvm_probe`]).
    pub kvm_probe_cache: PathBuf,
}

/// What one boot showed.
#[derive(Clone, Debug)]
pub struct BootOutcome {
    pub mode: BootMode,
    pub marker_line: String,
    pub elapsed: Duration,
    pub accel: &'static str,
}

/// The machine for one boot: always through the image's own boot loader (SeaBIOS or OVMF,
/// the ISO as a CD or as a USB stick whose writes go to a temporary overlay).
fn spec(config: &BootTestConfig, mode: BootMode, accel: Accelerator) -> VmSpec {
    mode.machine(mode.to_string(), &config.log_dir, &config.iso).memory(config.memory_mib).accel(accel)
}

/// The boot marker's line on the serial console, if it is there yet.
pub fn marker_line(serial: &str) -> Option<String> {
    line_from(serial, MARKER)
}

/// Boots `spec` and waits up to `timeout` for the boot marker: its line, and how long it took.
pub fn boot_to_marker(spec: &VmSpec, timeout: Duration) -> Result<(String, Duration)> {
    let vm = Vm::start(spec)?;
    let line = vm.wait_for("the boot marker", timeout, |serial, _| marker_line(serial).map(Ok))?;
    // A live system that writes no disk: nothing to lose.
    vm.power_cut();
    Ok((line, vm.elapsed()))
}

/// Boots once and waits up to `timeout` for the marker.
fn boot_once(config: &BootTestConfig, mode: BootMode, accel: Accelerator, timeout: Duration) -> Result<BootOutcome> {
    let (marker_line, elapsed) =
        boot_to_marker(&spec(config, mode, accel), timeout).with_context(|| format!("boot mode {mode}"))?;
    Ok(BootOutcome { mode, marker_line, elapsed, accel: accel.name() })
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
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(90);

/// `cargo xtask boot-test`.
#[derive(clap::Args, Debug)]
pub struct BootTestArgs {
    /// ISO to boot (default: the one `iso` publishes into dist/).
    #[arg(long)]
    iso: Option<PathBuf>,
    /// Boot modes to test (default: all four).
    #[arg(long = "mode", value_enum)]
    modes: Vec<BootMode>,
    /// CPU emulation: tcg (default), kvm, or auto (boot the first mode with KVM as the probe:
    /// if its marker does not show within 90 s, TCG for everything; the result is recorded
    /// for `vm`).
    #[arg(long, value_enum, default_value = "tcg")]
    accel: AccelChoice,
    /// Seconds to wait for the marker in each mode.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Print the result of each mode as JSON on stdout (also when a mode fails).
    #[arg(long)]
    json: bool,
}

impl BootTestArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let _locks = project.lock_work_subdir("boot-test")?;
        crate::doctor::ensure(&[crate::doctor::Purpose::BootTest])?;
        let config = BootTestConfig {
            iso: self.iso.unwrap_or_else(|| project.default_iso()),
            modes: if self.modes.is_empty() { BootMode::ALL.to_vec() } else { self.modes },
            accel: self.accel,
            timeout: Duration::from_secs(self.timeout),
            memory_mib: self.memory,
            expected_version: project.version.clone(),
            log_dir: project.work_dir().join("boot-test"),
            kvm_probe_cache: project.kvm_probe_file(),
            json: self.json,
        };
        run(&config)?;
        Ok(())
    }
}

pub fn run(config: &BootTestConfig) -> Result<Vec<BootOutcome>> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    let mut accel = if config.accel == AccelChoice::Kvm { Accelerator::Kvm } else { Accelerator::Tcg };
    let mut outcomes = Vec::new();
    let mut modes = config.modes.clone();
    if config.accel == AccelChoice::Auto && !modes.is_empty() {
        match crate::vm::qemu::kvm_usable() {
            Err(why) => eprintln!("KVM not usable, using TCG: {why}"),
            Ok(()) => {
                let first = modes[0];
                let probe =
                    progress::stage("kvm probe", |_| boot_once(config, first, Accelerator::Kvm, KVM_PROBE_TIMEOUT));
                let seen = match &probe {
                    Ok(o) => KvmProbe {
                        works: true,
                        how: format!("boot-test: {first} marker in {}", format_duration(o.elapsed)),
                    },
                    Err(e) => KvmProbe {
                        works: false,
                        how: format!("boot-test: {first}: {}", format!("{e:#}").lines().next().unwrap_or("")),
                    },
                };
                if let Err(e) =
                    crate::vm::qemu::record_kvm_probe(&config.kvm_probe_cache, &crate::vm::qemu::kvm_probe_key(), &seen)
                {
                    eprintln!("note: the KVM probe's result was not recorded: {e:#}");
                }
                match probe {
                    Ok(outcome) => {
                        accel = Accelerator::Kvm;
                        check_marker(&outcome.marker_line, &config.expected_version)?;
                        report(&outcome);
                        outcomes.push(outcome);
                        modes.remove(0);
                    }
                    Err(e) => {
                        eprintln!("KVM probe failed, using TCG: {}", format!("{e:#}").lines().next().unwrap_or(""))
                    }
                }
            }
        }
    }
    let mut failures = Vec::new();
    let mut json_rows = Vec::new();
    let at_once = crate::vm::qemu::vms_at_once();
    for batch in modes.chunks(at_once) {
        let names: Vec<String> = batch.iter().map(|m| m.to_string()).collect();
        let results = progress::stage("boot test", |stage| {
            stage.set(&format!("{} ({}, {} at once)", names.join(" + "), accel.name(), batch.len()));
            Ok(crate::vm::qemu::in_parallel(batch, |&mode| boot_once(config, mode, accel, config.timeout)))
        })?;
        for (&mode, result) in batch.iter().zip(results) {
            match result.and_then(|o| check_marker(&o.marker_line, &config.expected_version).map(|_| o)) {
                Ok(outcome) => {
                    if config.json {
                        json_rows.push(serde_json::json!({
                            "mode": mode.to_string(), "ok": true, "accel": outcome.accel,
                            "seconds": outcome.elapsed.as_secs_f64(), "marker": outcome.marker_line,
                        }));
                    } else {
                        report(&outcome);
                    }
                    outcomes.push(outcome);
                }
                Err(e) => {
                    eprintln!("FAIL {mode}: {e:#}");
                    json_rows
                        .push(serde_json::json!({"mode": mode.to_string(), "ok": false, "error": format!("{e:#}")}));
                    failures.push(mode.to_string());
                }
            }
        }
    }
    if config.json {
        println!("{}", serde_json::to_string_pretty(&json_rows)?);
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
        let config = BootTestConfig {
            iso: "/x.iso".into(),
            modes: BootMode::ALL.to_vec(),
            accel: AccelChoice::Tcg,
            timeout: Duration::from_secs(600),
            memory_mib: 1024,
            expected_version: "0.1.0".into(),
            log_dir: "/logs".into(),
            kvm_probe_cache: "/kvm-probe".into(),
            json: false,
        };
        let ovmf = (std::path::Path::new("/CODE.fd"), std::path::Path::new("/VARS.fd"));
        let line = |mode: BootMode, accel| {
            let spec = spec(&config, mode, accel);
            spec.command(mode.is_uefi().then_some(ovmf)).unwrap().to_string()
        };
        let bios_usb = line(BootMode::BiosUsb, Accelerator::Tcg);
        assert!(bios_usb.contains("usb-storage") && !bios_usb.contains("media=cdrom") && !bios_usb.contains("pflash"));
        assert!(bios_usb.contains("snapshot=on,file=/x.iso"), "the ISO must stay unchanged: {bios_usb}");
        let bios_cd = line(BootMode::BiosCd, Accelerator::Tcg);
        assert!(bios_cd.contains("media=cdrom") && bios_cd.contains("-accel tcg") && !bios_cd.contains("-kernel"));
        assert!(bios_cd.contains("-accel tcg,thread=single"), "{bios_cd}");
        assert!(bios_cd.contains("-serial file:/logs/bios-cd.serial.log") && bios_cd.contains("-m 1024"), "{bios_cd}");
        let uefi_usb = line(BootMode::UefiUsb, Accelerator::Kvm);
        assert!(uefi_usb.contains("usb-storage") && uefi_usb.contains("unit=1,file=/VARS.fd"), "{uefi_usb}");
        assert!(uefi_usb.contains("-accel kvm "), "{uefi_usb}");
        let uefi_cd = line(BootMode::UefiCd, Accelerator::Tcg);
        assert!(uefi_cd.contains("media=cdrom") && uefi_cd.contains("readonly=on,file=/CODE.fd"), "{uefi_cd}");
    }

    #[test]
    fn the_marker_is_found_after_terminal_escapes() {
        let serial = "Welcome\n\x1b[H\x1b[JTRUTHDB-OS-BOOTED version=0.1.0 kernel=6.12 system=live\n";
        assert_eq!(marker_line(serial).as_deref(), Some("TRUTHDB-OS-BOOTED version=0.1.0 kernel=6.12 system=live"));
        assert_eq!(marker_line("still booting"), None);
    }
}
