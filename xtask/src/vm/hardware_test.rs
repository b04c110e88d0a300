//! `cargo xtask hardware-test`: the hardware matrix. Boots the ISO through its own boot
//! loaders on four machines that carry the network cards, storage controllers and display
//! adapters QEMU emulates for the hypervisors and servers in README's support list, each
//! machine in another of the four ways a hybrid image boots (BIOS or UEFI, CD or USB stick), and
//! reads from the serial console the boot marker (the image's version, our kernel), and that
//! each device was bound to its driver: the `TRUTHDB-HW` lines of
//! `overlay/usr/lib/truthdb/hardware-report` (network cards with link up and a DHCP lease,
//! disks behind their controller's driver, the DRM card's driver) and the graphical
//! installer's first frame drawn through that DRM driver (`TRUTHDB-GUI-SCREEN welcome`).
//!
//! The test suite runs this as its four-way boot (`e2e_04`): each boot proves its mode and its
//! hardware at once, four live boots where the plain boot test and the matrix took eight.
//! `cargo xtask boot-test` still boots the four ways on a plain machine.
//!
//! What QEMU cannot emulate (Hyper-V's and Xen's synthetic devices, VMware's SVGA II as vmwgfx
//! needs it, most bare-metal cards) is
//! covered by the kernel-config check of `kernel/config/70-hypervisors.config` and
//! `75-server-hardware.config` at build time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::project::Project;
use crate::util::progress::{self, format_duration};
use crate::util::run::Cmd;
use crate::vm::boot_test::BootMode;
use crate::vm::qemu::{Vm, line_from};

/// A network card: QEMU's device model and the Linux driver that must take it.
#[derive(Clone, Copy, Debug)]
pub struct Nic {
    pub model: &'static str,
    pub driver: &'static str,
}

/// A storage controller with one small disk behind it.
#[derive(Clone, Copy, Debug)]
pub struct Controller {
    pub name: &'static str,
    /// The controller's `-device` (none: the machine's own, e.g. q35's AHCI), with `{id}`.
    pub controller: Option<&'static str>,
    /// The disk's `-device`, with `{id}` (the controller) and `{drive}`.
    pub disk: &'static str,
    /// The driver that must appear between the disk and the machine.
    pub driver: &'static str,
}

/// A display adapter: its QEMU arguments and the DRM driver that must drive it.
#[derive(Clone, Copy, Debug)]
pub struct Adapter {
    pub name: &'static str,
    /// QEMU's `-vga` type.
    pub vga: &'static str,
    /// Extra `-device` for an adapter that is not a `-vga` type (ramfb).
    pub device: Option<&'static str>,
    /// The driver bound to the DRM card's device in sysfs.
    pub sysfs_driver: &'static str,
    /// The DRM driver's name as the installer reports its output (`output="kms <card> <name> ..."`).
    pub drm_name: &'static str,
}

/// One machine of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Machine {
    pub name: &'static str,
    /// How it boots the ISO: its firmware and the medium.
    pub mode: BootMode,
    pub adapter: Adapter,
    pub nics: &'static [Nic],
    pub controllers: &'static [Controller],
}

const NVME: Controller =
    Controller { name: "nvme", controller: None, disk: "nvme,drive={drive},serial={drive}", driver: "nvme" };
const AHCI: Controller =
    Controller { name: "ahci", controller: None, disk: "ide-hd,drive={drive},bus=ide.2", driver: "ahci" };
const MEGASAS: Controller = Controller {
    name: "megasas",
    controller: Some("megasas,id={id}"),
    disk: "scsi-hd,bus={id}.0,drive={drive}",
    driver: "megaraid_sas",
};
const VIRTIO_SCSI: Controller = Controller {
    name: "virtio-scsi",
    controller: Some("virtio-scsi-pci,id={id}"),
    disk: "scsi-hd,bus={id}.0,drive={drive}",
    driver: "virtio_scsi",
};
const LSI: Controller = Controller {
    name: "lsi53c895a",
    controller: Some("lsi53c895a,id={id}"),
    disk: "scsi-hd,bus={id}.0,drive={drive}",
    driver: "sym53c8xx",
};
const PVSCSI: Controller = Controller {
    name: "pvscsi",
    controller: Some("pvscsi,id={id}"),
    disk: "scsi-hd,bus={id}.0,drive={drive}",
    driver: "vmw_pvscsi",
};

/// The matrix: every emulated device once and every boot mode once, four machines (two at a
/// time under the VM slots).
pub const MATRIX: [Machine; 4] = [
    Machine {
        name: "hw-virtio-gpu",
        mode: BootMode::BiosCd,
        adapter: Adapter {
            name: "virtio-vga",
            vga: "virtio",
            device: None,
            // The DRM card's parent is the PCI function (virtio-pci); the DRM driver's own name
            // is what the installer reports.
            sysfs_driver: "virtio-pci",
            drm_name: "virtio_gpu",
        },
        nics: &[Nic { model: "e1000", driver: "e1000" }, Nic { model: "rtl8139", driver: "8139cp" }],
        controllers: &[NVME, MEGASAS],
    },
    Machine {
        name: "hw-qxl",
        mode: BootMode::BiosUsb,
        adapter: Adapter { name: "qxl-vga", vga: "qxl", device: None, sysfs_driver: "qxl", drm_name: "qxl" },
        nics: &[Nic { model: "e1000e", driver: "e1000e" }, Nic { model: "vmxnet3", driver: "vmxnet3" }],
        controllers: &[VIRTIO_SCSI, LSI],
    },
    // QEMU's vmware-svga is not here: vmwgfx (built for VMware's own SVGA II) refuses QEMU's
    // emulation ("unsupported hypervisor", "Hardware has no pitchlock", probe error -38; see
    // README), so the machine carries VMware's PVSCSI with the Cirrus display.
    Machine {
        name: "hw-cirrus",
        mode: BootMode::UefiCd,
        adapter: Adapter {
            name: "cirrus-vga",
            vga: "cirrus",
            device: None,
            sysfs_driver: "cirrus",
            drm_name: "cirrus",
        },
        nics: &[Nic { model: "virtio-net-pci", driver: "virtio_net" }],
        controllers: &[PVSCSI, AHCI],
    },
    // ramfb shows a picture only through the UEFI firmware's framebuffer (simpledrm).
    Machine {
        name: "hw-ramfb",
        mode: BootMode::UefiUsb,
        adapter: Adapter {
            name: "ramfb",
            vga: "none",
            device: Some("ramfb"),
            sysfs_driver: "simple-framebuffer",
            drm_name: "simpledrm",
        },
        // Intel's 82576 (igb, servers' usual 1 GbE): QEMU 8.0 and later.
        nics: &[Nic { model: "igb", driver: "igb" }],
        controllers: &[],
    },
];

/// Each disk's size: 64 MiB + its index, so a disk line is matched to its controller by size.
fn disk_bytes(index: usize) -> u64 {
    (64 + index as u64) << 20
}

/// The QEMU arguments of `machine`'s network cards and disks (the disks' files in `dir`).
fn device_args(machine: &Machine, dir: &Path) -> Vec<String> {
    let mut args = Vec::new();
    for (i, nic) in machine.nics.iter().enumerate() {
        args.extend(["-netdev".to_owned(), format!("user,id=hwnet{i}")]);
        args.extend(["-device".to_owned(), format!("{},netdev=hwnet{i},mac=52:54:00:7e:00:{:02x}", nic.model, i + 1)]);
    }
    for (i, controller) in machine.controllers.iter().enumerate() {
        let (id, drive) = (format!("hwc{i}"), format!("hwd{i}"));
        let file = dir.join(format!("{}-{}.raw", machine.name, controller.name));
        args.extend(["-drive".to_owned(), format!("if=none,id={drive},format=raw,file={}", file.display())]);
        if let Some(device) = controller.controller {
            args.extend(["-device".to_owned(), device.replace("{id}", &id)]);
        }
        args.extend(["-device".to_owned(), controller.disk.replace("{id}", &id).replace("{drive}", &drive)]);
    }
    if let Some(device) = machine.adapter.device {
        args.extend(["-device".to_owned(), device.to_owned()]);
    }
    args
}

/// The network cards of `machines` that QEMU's `-device help` (`models`) does not list.
fn missing_device_models(machines: &[Machine], models: &str) -> Vec<&'static str> {
    let listed = |model: &str| models.lines().any(|l| l.starts_with(&format!("name \"{model}\"")));
    machines.iter().flat_map(|m| m.nics.iter().map(|n| n.model)).filter(|model| !listed(model)).collect()
}

/// The value of `key=` in a `TRUTHDB-HW` line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Whether a comma-separated driver chain holds `driver`.
fn has_driver(chain: &str, driver: &str) -> bool {
    chain.split(',').any(|d| d == driver)
}

/// Checks one machine's serial console against what it carries; the findings, one per device.
pub fn check(machine: &Machine, serial: &str) -> Result<Vec<String>> {
    let lines: Vec<&str> =
        serial.lines().filter_map(|l| l.find("TRUTHDB-HW ").map(|at| l[at + "TRUTHDB-HW ".len()..].trim())).collect();
    let of_kind = |kind: &'static str| lines.iter().filter(move |l| l.split_whitespace().next() == Some(kind)).copied();
    let mut found = Vec::new();
    for nic in machine.nics {
        let line = of_kind("net")
            .find(|l| field(l, "driver").is_some_and(|c| has_driver(c, nic.driver)))
            .with_context(|| format!("no network interface bound to {} (the {} card)", nic.driver, nic.model))?;
        if field(line, "link") != Some("up") || field(line, "ipv4").is_none_or(|a| a == "none") {
            bail!("the {} card ({}) has no link or no DHCP lease: {line}", nic.model, nic.driver);
        }
        found.push(format!("{}: {line}", nic.model));
    }
    for (i, controller) in machine.controllers.iter().enumerate() {
        let bytes = disk_bytes(i).to_string();
        let line = of_kind("disk")
            .find(|l| field(l, "bytes") == Some(bytes.as_str()))
            .with_context(|| format!("the disk behind {} ({bytes} bytes) is not visible", controller.name))?;
        if !field(line, "drivers").is_some_and(|c| has_driver(c, controller.driver)) {
            bail!("the disk behind {} is not driven by {}: {line}", controller.name, controller.driver);
        }
        found.push(format!("{}: {line}", controller.name));
    }
    let adapter = &machine.adapter;
    let drm = of_kind("drm")
        .find(|l| field(l, "drivers").is_some_and(|c| has_driver(c, adapter.sysfs_driver)))
        .with_context(|| format!("no DRM card driven by {} (the {} adapter)", adapter.sysfs_driver, adapter.name))?;
    found.push(format!("{}: {drm}", adapter.name));
    let frame = line_from(serial, "TRUTHDB-GUI-SCREEN welcome").context("the installer drew no first frame")?;
    let output = frame.split("output=\"").nth(1).and_then(|o| o.split('"').next()).unwrap_or("");
    if !output.starts_with("kms ") || !output.split_whitespace().any(|w| w == adapter.drm_name) {
        bail!("the installer's first frame is not on {} through KMS: {frame}", adapter.drm_name);
    }
    found.push(format!("installer's first frame: output=\"{output}\""));
    Ok(found)
}

/// What the hardware test needs: all paths explicit.
#[derive(Clone, Debug)]
pub struct HardwareTestConfig {
    pub iso: PathBuf,
    pub machines: Vec<Machine>,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub expected_version: String,
    pub work_dir: PathBuf,
}

/// Boots one machine until its boot marker, its report and the installer's first frame are all
/// there.
fn boot(config: &HardwareTestConfig, machine: &Machine) -> Result<(Vec<String>, Duration)> {
    for (i, controller) in machine.controllers.iter().enumerate() {
        let file = config.work_dir.join(format!("{}-{}.raw", machine.name, controller.name));
        let disk = std::fs::File::create(&file).with_context(|| format!("creating {}", file.display()))?;
        disk.set_len(disk_bytes(i)).with_context(|| format!("sizing {}", file.display()))?;
    }
    let spec = machine
        .mode
        .machine(machine.name, &config.work_dir, &config.iso)
        .memory(config.memory_mib)
        .vga(machine.adapter.vga)
        .media(device_args(machine, &config.work_dir));
    let vm = Vm::start(&spec)?;
    let what = "the boot marker, the hardware report and the installer's first frame";
    let serial = vm.wait_for(what, config.timeout, |serial, _| {
        let done = serial.contains("TRUTHDB-HW done")
            && serial.contains("TRUTHDB-GUI-SCREEN welcome")
            && crate::vm::boot_test::marker_line(serial).is_some();
        done.then(|| Ok(serial.to_owned()))
    })?;
    let elapsed = vm.elapsed();
    // A live system that writes no disk: nothing to lose.
    vm.power_cut();
    let context = || format!("machine {} ({}, {})", machine.name, machine.mode, vm.serial_log.display());
    let marker = crate::vm::boot_test::marker_line(&serial).expect("waited for");
    crate::vm::boot_test::check_marker(&marker, &config.expected_version).with_context(context)?;
    let mut found = vec![format!("boot marker: {marker}")];
    found.extend(check(machine, &serial).with_context(context)?);
    Ok((found, elapsed))
}

pub fn run(config: &HardwareTestConfig) -> Result<()> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    std::fs::create_dir_all(&config.work_dir).with_context(|| format!("creating {}", config.work_dir.display()))?;
    let models = Cmd::new("qemu-system-x86_64").args(["-device", "help"]).read()?;
    let missing = missing_device_models(&config.machines, &models);
    if !missing.is_empty() {
        bail!(
            "this QEMU has no {} device (igb needs QEMU 8.0 or later; on Debian 12 `cargo xtask doctor --install` \
             installs QEMU 10 from bookworm-backports)",
            missing.join(", ")
        );
    }
    let names: Vec<&str> = config.machines.iter().map(|m| m.name).collect();
    let results = progress::stage("hardware test", |s| {
        s.set(&format!("{} ({} at once)", names.join(" + "), crate::vm::qemu::vms_at_once()));
        Ok(crate::vm::qemu::in_parallel(&config.machines, |machine| boot(config, machine)))
    })?;
    let mut failed = 0;
    for (machine, result) in config.machines.iter().zip(results) {
        match result {
            Ok((found, elapsed)) => {
                println!("PASS {} ({}, {}, TCG)", machine.name, machine.mode, format_duration(elapsed));
                for line in found {
                    println!("  {line}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e:#}", machine.name);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} machines failed the hardware test", config.machines.len());
    }
    Ok(())
}

/// `cargo xtask hardware-test`.
#[derive(clap::Args, Debug)]
pub struct HardwareTestArgs {
    /// ISO to boot (default: the one `iso` publishes into dist/).
    #[arg(long)]
    iso: Option<PathBuf>,
    /// Machines to boot (default: the whole matrix): hw-virtio-gpu, hw-qxl, hw-cirrus, hw-ramfb.
    #[arg(long = "machine", value_name = "NAME")]
    machines: Vec<String>,
    /// Seconds to wait for each machine's report and first frame.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
}

impl HardwareTestArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        let _locks = project.lock_work_subdir("hardware-test")?;
        crate::doctor::ensure(&[crate::doctor::Purpose::BootTest])?;
        let mut machines = Vec::new();
        for name in &self.machines {
            match MATRIX.iter().find(|m| m.name == name) {
                Some(machine) => machines.push(*machine),
                None => crate::util::usage_error!(
                    "--machine {name:?}: not in the matrix ({})",
                    MATRIX.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        let config = HardwareTestConfig {
            iso: self.iso.unwrap_or_else(|| project.default_iso()),
            machines: if machines.is_empty() { MATRIX.to_vec() } else { machines },
            timeout: Duration::from_secs(self.timeout),
            memory_mib: self.memory,
            expected_version: project.version.clone(),
            work_dir: project.work_dir().join("hardware-test"),
        };
        run(&config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial_of(machine: &Machine) -> String {
        let mut serial = String::from("[  1.0] boot\n");
        for (i, nic) in machine.nics.iter().enumerate() {
            serial += &format!("TRUTHDB-HW net enp{i}s0 driver={},pcieport link=up ipv4=10.0.2.15/24\n", nic.driver);
        }
        for (i, c) in machine.controllers.iter().enumerate() {
            serial += &format!("TRUTHDB-HW disk sd{i} drivers=sd,{} bytes={}\n", c.driver, disk_bytes(i));
        }
        serial += &format!("TRUTHDB-HW drm card0 drivers={}\nTRUTHDB-HW done\n", machine.adapter.sysfs_driver);
        serial += &format!(
            "[ 99.0] truthdb-installer-gui[1]: TRUTHDB-GUI-SCREEN welcome uptime=99s output=\"kms /dev/dri/card0 {} 1024x768\"\n",
            machine.adapter.drm_name
        );
        serial
    }

    #[test]
    fn every_device_of_a_machine_must_be_found_on_its_driver() {
        for machine in &MATRIX {
            let serial = serial_of(machine);
            let found = check(machine, &serial).unwrap();
            assert_eq!(found.len(), machine.nics.len() + machine.controllers.len() + 2, "{found:?}");
            // Each device missing, or on another driver, fails naming it.
            for nic in machine.nics {
                let wrong = serial.replace(&format!("driver={},", nic.driver), "driver=other,");
                let msg = format!("{:#}", check(machine, &wrong).unwrap_err());
                assert!(msg.contains(nic.model), "{msg}");
                let down = serial.replace("link=up", "link=down");
                assert!(format!("{:#}", check(machine, &down).unwrap_err()).contains("no link"));
                let no_lease = serial.replace("ipv4=10.0.2.15/24", "ipv4=none");
                assert!(check(machine, &no_lease).is_err());
            }
            for (i, c) in machine.controllers.iter().enumerate() {
                let gone = serial.replace(&format!("bytes={}", disk_bytes(i)), "bytes=1");
                assert!(format!("{:#}", check(machine, &gone).unwrap_err()).contains(c.name));
                let other = serial.replace(&format!("drivers=sd,{} ", c.driver), "drivers=sd,ahci_other ");
                assert!(format!("{:#}", check(machine, &other).unwrap_err()).contains(c.driver));
            }
            let no_frame = serial.replace("TRUTHDB-GUI-SCREEN welcome", "nothing");
            assert!(format!("{:#}", check(machine, &no_frame).unwrap_err()).contains("first frame"));
            let fbdev = serial.replace("output=\"kms /dev/dri/card0", "output=\"fbdev /dev/fb0");
            assert!(check(machine, &fbdev).is_err(), "a frame drawn without KMS passed");
        }
    }

    #[test]
    fn the_matrix_covers_each_emulated_device_once_and_its_disks_differ_in_size() {
        let nics: Vec<&str> = MATRIX.iter().flat_map(|m| m.nics.iter().map(|n| n.model)).collect();
        for model in ["e1000", "e1000e", "igb", "rtl8139", "vmxnet3", "virtio-net-pci"] {
            assert_eq!(nics.iter().filter(|n| **n == model).count(), 1, "{model}");
        }
        let controllers: Vec<&str> = MATRIX.iter().flat_map(|m| m.controllers.iter().map(|c| c.name)).collect();
        for name in ["nvme", "ahci", "megasas", "virtio-scsi", "lsi53c895a", "pvscsi"] {
            assert_eq!(controllers.iter().filter(|c| **c == name).count(), 1, "{name}");
        }
        let adapters: Vec<&str> = MATRIX.iter().map(|m| m.adapter.name).collect();
        assert_eq!(adapters, ["virtio-vga", "qxl-vga", "cirrus-vga", "ramfb"]);
        // The suite's four-way boot is this matrix: each mode exactly once.
        let modes: Vec<BootMode> = MATRIX.iter().map(|m| m.mode).collect();
        for mode in BootMode::ALL {
            assert_eq!(modes.iter().filter(|m| **m == mode).count(), 1, "{mode}");
        }
        let args = device_args(&MATRIX[0], Path::new("/w")).join(" ");
        assert!(args.contains("-device nvme,drive=hwd0,serial=hwd0"), "{args}");
        assert!(args.contains("-device megasas,id=hwc1 -device scsi-hd,bus=hwc1.0,drive=hwd1"), "{args}");
        assert!(args.contains("-netdev user,id=hwnet1 -device rtl8139,netdev=hwnet1"), "{args}");
        assert!(device_args(&MATRIX[3], Path::new("/w")).join(" ").contains("-device ramfb"));
    }

    #[test]
    fn a_qemu_without_a_card_of_the_matrix_is_named_before_any_boot() {
        // QEMU 10's `-device help` lists every card; QEMU 7.2's has no igb.
        let all: String = MATRIX
            .iter()
            .flat_map(|m| m.nics.iter())
            .map(|n| format!("name \"{}\", bus PCI, desc \"a card\"\n", n.model))
            .collect();
        assert!(missing_device_models(&MATRIX, &all).is_empty());
        let without_igb = all.replace("name \"igb\"", "name \"igbvf\"");
        assert_eq!(missing_device_models(&MATRIX, &without_igb), ["igb"]);
    }
}
