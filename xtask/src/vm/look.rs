//! `cargo xtask vm`: boots the image in QEMU for a person to look at, on [`crate::vm::qemu`]'s
//! harness. The ISO (by default the one `cargo xtask iso` published into `dist/`) as a CD or a
//! USB stick, or a disk image (an installed disk, a `cargo xtask disk` image; raw or qcow2),
//! under OVMF or SeaBIOS. The screen goes to a window when there is a desktop, else to VNC on
//! 127.0.0.1; the serial console is this terminal (Ctrl-A X quits); SSH and PostgreSQL are
//! forwarded to free ports on 127.0.0.1. A user's disk image is never written unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::Project;
use crate::util::progress::format_duration;
use crate::util::run::Cmd;
use crate::vm::qemu::{
    AccelChoice, Accelerator, Display, Firmware, KvmProbe, Vm, VmSpec, Writes, cdrom, usb_stick, virtio_boot_disk,
    virtio_disk,
};

/// `cargo xtask vm`.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// ISO to boot (default: the one `cargo xtask iso` published into dist/).
    #[arg(long, value_name = "FILE", conflicts_with = "disk")]
    pub iso: Option<PathBuf>,
    /// Boot a disk image instead of the ISO: an installed disk or a `cargo xtask disk` image,
    /// raw or qcow2. The guest's writes are discarded when QEMU ends, unless --write.
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,
    /// Let the guest write to the --disk image itself.
    #[arg(long, requires = "disk")]
    pub write: bool,
    /// Boot with SeaBIOS (legacy BIOS) instead of UEFI (OVMF).
    #[arg(long)]
    pub bios: bool,
    /// Attach the ISO as a USB stick instead of a CD.
    #[arg(long, conflicts_with = "disk")]
    pub usb: bool,
    /// Also attach a blank disk of this many GiB to install onto (virtio, serial `scratch`;
    /// qcow2 in target/truthdb-os/vm/, made anew on every run that asks for one).
    #[arg(long, value_name = "GIB", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub scratch_disk: Option<u64>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    pub memory: u32,
    /// CPU emulation: auto (KVM only if a probe boot shows a KVM guest runs on this host; the
    /// result is kept per QEMU version and host kernel), kvm, or tcg.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// No window and no VNC: the serial console only.
    #[arg(long)]
    pub no_display: bool,
}

/// What the machine boots from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Medium {
    Iso { path: PathBuf, usb: bool },
    Disk { path: PathBuf, format: String, writes: Writes },
}

impl Medium {
    /// The drive arguments. `writes` overrides a disk's (the KVM probe never writes).
    fn media(&self, writes: Option<Writes>) -> Vec<String> {
        match self {
            Medium::Iso { path, usb: true } => usb_stick(path),
            Medium::Iso { path, usb: false } => cdrom(path),
            Medium::Disk { path, format, writes: own } => {
                virtio_boot_disk(path, format, "disk", writes.unwrap_or(*own))
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            Medium::Iso { path, usb } => format!("{} as a {}", path.display(), if *usb { "USB stick" } else { "CD" }),
            Medium::Disk { path, format, writes } => format!(
                "{} ({format}; {})",
                path.display(),
                match writes {
                    Writes::ToFile => "the guest writes to it: --write",
                    Writes::Discarded => "the guest's writes are discarded when QEMU ends; --write keeps them",
                }
            ),
        }
    }
}

/// What was found out about this host before the machine is put together.
#[derive(Clone, Debug)]
struct Host {
    /// `$DISPLAY` or `$WAYLAND_DISPLAY` is set.
    desktop: bool,
    /// The display backends this QEMU has (`-display help`).
    backends: Vec<String>,
    /// A free VNC display number on 127.0.0.1.
    vnc: u16,
    ssh_port: u16,
    pg_port: u16,
}

/// The machine and what to tell the person about it.
struct Plan {
    spec: VmSpec,
    lines: Vec<String>,
}

/// Where the screen goes, and why.
fn choose_display(no_display: bool, host: &Host) -> (Display, String) {
    if no_display {
        return (Display::None, "none (--no-display)".to_owned());
    }
    let vnc = |why: &str| (Display::Vnc(host.vnc), format!("VNC at vnc://127.0.0.1:{} ({why})", 5900 + host.vnc));
    if !host.desktop {
        return vnc("no $DISPLAY or $WAYLAND_DISPLAY");
    }
    match ["gtk", "sdl"].into_iter().find(|kind| host.backends.iter().any(|b| b == kind)) {
        Some(kind) => (Display::Window(kind), format!("a window ({kind})")),
        None => vnc("this QEMU has no gtk or sdl display: apt-get install qemu-system-gui"),
    }
}

fn plan(args: &VmArgs, medium: &Medium, accel: (Accelerator, String), host: &Host, scratch: Option<&Path>) -> Plan {
    let firmware = if args.bios { Firmware::Bios } else { Firmware::Uefi };
    let (display, display_said) = choose_display(args.no_display, host);
    let mut spec = VmSpec::new(firmware, "vm", "")
        .memory(args.memory)
        .accel(accel.0)
        .media(medium.media(None))
        .display(display)
        .serial_on_terminal()
        .forward(host.ssh_port, 22)
        .forward(host.pg_port, 5432);
    if let Some(scratch) = scratch {
        spec = spec.media(virtio_disk(scratch, "qcow2", "scratch"));
    }
    // From a disk, a reboot is a reboot; from the ISO it ends QEMU, so the medium does not
    // boot again over a fresh install.
    let reboot = if matches!(medium, Medium::Disk { .. }) {
        spec = spec.allow_reboot();
        "A guest reboot reboots."
    } else {
        "A guest reboot ends QEMU."
    };
    let mut lines = vec![
        format!("boot:        {}", medium.describe()),
        format!(
            "firmware:    {}, {} MiB",
            match firmware {
                Firmware::Uefi => "UEFI (OVMF, a private copy of its variables)",
                Firmware::Bios => "BIOS (SeaBIOS)",
            },
            args.memory
        ),
        format!("accelerator: {} ({})", accel.0.name(), accel.1),
        format!("display:     {display_said}"),
        format!("ssh:         ssh -p {} admin@127.0.0.1", host.ssh_port),
        format!(
            "postgresql:  psql \"host=127.0.0.1 port={} user=admin dbname=postgres sslmode=require\"",
            host.pg_port
        ),
        "             (an installed system; admin: the user chosen at install)".to_owned(),
    ];
    if let Some(scratch) = scratch {
        lines.push(format!(
            "scratch:     {} ({} GiB, blank, virtio serial \"scratch\")",
            scratch.display(),
            args.scratch_disk.unwrap_or_default()
        ));
    }
    lines.push(format!("The serial console follows; Ctrl-A X quits QEMU, Ctrl-A C its monitor. {reboot}"));
    Plan { spec, lines }
}

/// The disk image's format: what `qemu-img info` reads in it, or, without qemu-img, its
/// name's extension.
fn disk_format(path: &Path) -> Result<String> {
    if crate::util::run::on_path("qemu-img") {
        let info = Cmd::new("qemu-img").args(["info", "-U", "--output=json"]).arg(path).read()?;
        return format_from_info(&info).with_context(|| format!("qemu-img info {}", path.display()));
    }
    format_from_extension(path).map(str::to_owned).with_context(|| {
        format!("{}: no qemu-img to read its format and the name ends in neither .raw, .img nor .qcow2", path.display())
    })
}

fn format_from_info(json: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    value["format"].as_str().map(str::to_owned).context("no \"format\" in its answer")
}

fn format_from_extension(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "raw" | "img" => Some("raw"),
        "qcow2" => Some("qcow2"),
        _ => None,
    }
}

/// The accelerator and why: `auto` is KVM only when `/dev/kvm` is usable and a probe (a KVM
/// boot to the boot marker, run once per QEMU version and host kernel) showed a guest runs.
fn choose_accel(
    choice: AccelChoice,
    usable: std::result::Result<(), String>,
    cached: Option<KvmProbe>,
    probe: impl FnOnce() -> KvmProbe,
) -> Result<(Accelerator, String)> {
    match choice {
        AccelChoice::Tcg => Ok((Accelerator::Tcg, "--accel tcg".to_owned())),
        AccelChoice::Kvm => match usable {
            Ok(()) => Ok((Accelerator::Kvm, "--accel kvm".to_owned())),
            Err(why) => bail!("--accel kvm: {why}"),
        },
        AccelChoice::Auto => {
            if let Err(why) = usable {
                return Ok((Accelerator::Tcg, format!("auto: {why}")));
            }
            let (result, when) = match cached {
                Some(result) => (result, "recorded probe"),
                None => (probe(), "probe"),
            };
            Ok(if result.works {
                (Accelerator::Kvm, format!("auto: /dev/kvm usable and a KVM guest boots here; {when}: {}", result.how))
            } else {
                (Accelerator::Tcg, format!("auto: a KVM guest does not boot here; {when}: {}", result.how))
            })
        }
    }
}

/// A free VNC display number on 127.0.0.1 (port 5900 + n).
fn free_vnc_display() -> Result<u16> {
    (0..100)
        .find(|n| std::net::TcpListener::bind(("127.0.0.1", 5900 + n)).is_ok())
        .context("no free VNC port on 127.0.0.1 between 5900 and 5999")
}

/// The display backends this QEMU was built with (its `-display help` list).
fn display_backends() -> Vec<String> {
    let said = Cmd::new("qemu-system-x86_64").args(["-display", "help"]).read().unwrap_or_default();
    said.lines().skip_while(|l| !l.contains("display backend")).skip(1).map(|l| l.trim().to_owned()).collect()
}

/// What a window needs from the caller's environment (xtask's own tools get a fixed one).
fn desktop_env() -> Vec<(String, String)> {
    ["DISPLAY", "WAYLAND_DISPLAY", "XAUTHORITY", "XDG_RUNTIME_DIR"]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok().map(|value| (key.to_owned(), value)))
        .collect()
}

impl VmArgs {
    pub fn run(self, project: &Project) -> Result<()> {
        crate::doctor::ensure(&[crate::doctor::Purpose::BootTest])?;
        run(project, &self)
    }
}

fn run(project: &Project, args: &VmArgs) -> Result<()> {
    let medium = match &args.disk {
        Some(path) => {
            if !path.is_file() {
                bail!("no disk image at {}", path.display());
            }
            let writes = if args.write { Writes::ToFile } else { Writes::Discarded };
            Medium::Disk { path: path.clone(), format: disk_format(path)?, writes }
        }
        None => {
            let path = args.iso.clone().unwrap_or_else(|| project.default_dist_dir().join(project.iso_file_name()));
            if !path.is_file() {
                bail!(
                    "no ISO at {}: run `cargo xtask iso` to build it (or give --iso FILE, or --disk FILE)",
                    path.display()
                );
            }
            Medium::Iso { path, usb: args.usb }
        }
    };
    let vm_dir = project.vm_dir();
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("creating {}", vm_dir.display()))?;
    let firmware = if args.bios { Firmware::Bios } else { Firmware::Uefi };
    if firmware == Firmware::Uefi {
        crate::vm::qemu::ovmf_files()?;
    }

    let key = crate::vm::qemu::kvm_probe_key();
    let cache = project.kvm_probe_file();
    let accel = choose_accel(
        args.accel,
        crate::vm::qemu::kvm_usable(),
        if args.accel == AccelChoice::Auto { crate::vm::qemu::cached_kvm_probe(&cache, &key) } else { None },
        || {
            let timeout = crate::vm::boot_test::KVM_PROBE_TIMEOUT;
            eprintln!(
                "probing KVM: a KVM boot to the boot marker, up to {} (once per QEMU version and host kernel)",
                format_duration(timeout)
            );
            let spec = VmSpec::new(firmware, "kvm-probe", &vm_dir)
                .memory(args.memory)
                .accel(Accelerator::Kvm)
                .media(medium.media(Some(Writes::Discarded)));
            let result = match crate::vm::boot_test::boot_to_marker(&spec, timeout) {
                Ok((_, took)) => KvmProbe { works: true, how: format!("vm: boot marker in {}", format_duration(took)) },
                Err(e) => KvmProbe {
                    works: false,
                    how: format!("vm: {}", format!("{e:#}").lines().next().unwrap_or("no boot marker")),
                },
            };
            if let Err(e) = crate::vm::qemu::record_kvm_probe(&cache, &key, &result) {
                eprintln!("note: the KVM probe's result was not recorded: {e:#}");
            }
            result
        },
    )?;

    let scratch = match args.scratch_disk {
        Some(gib) => {
            let path = vm_dir.join("scratch.qcow2");
            let _ = std::fs::remove_file(&path);
            Cmd::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&path)
                .arg(format!("{gib}G"))
                .run()
                .context("creating the scratch disk")?;
            Some(path)
        }
        None => None,
    };
    let host = Host {
        desktop: ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty())),
        backends: display_backends(),
        vnc: if args.no_display { 0 } else { free_vnc_display()? },
        ssh_port: crate::vm::qemu::free_port()?,
        pg_port: crate::vm::qemu::free_port()?,
    };
    let Plan { spec, lines } = plan(args, &medium, accel, &host, scratch.as_deref());
    for line in &lines {
        println!("{line}");
    }
    std::io::stdout().flush()?;
    let env = if matches!(spec.display, Display::Window(_)) { desktop_env() } else { Vec::new() };
    Vm::run_interactive(&spec, &env)?;
    println!();
    if let Some(scratch) = &scratch {
        println!("QEMU ended. To boot what was installed: cargo xtask vm --disk {} --write", scratch.display());
    } else {
        println!("QEMU ended.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        vm: VmArgs,
    }

    fn args(line: &[&str]) -> VmArgs {
        Cli::try_parse_from(std::iter::once("vm").chain(line.iter().copied())).unwrap().vm
    }

    fn host(desktop: bool, backends: &[&str]) -> Host {
        Host {
            desktop,
            backends: backends.iter().map(|b| b.to_string()).collect(),
            vnc: 2,
            ssh_port: 40022,
            pg_port: 45432,
        }
    }

    fn iso() -> Medium {
        Medium::Iso { path: "/dist/t.iso".into(), usb: false }
    }

    fn command(plan: &Plan) -> String {
        let ovmf =
            (plan.spec.firmware == Firmware::Uefi).then_some((Path::new("/fw/CODE.fd"), Path::new("/tmp/VARS.fd")));
        plan.spec.command(ovmf).unwrap().to_string()
    }

    fn tcg() -> (Accelerator, String) {
        (Accelerator::Tcg, "--accel tcg".into())
    }

    #[test]
    fn uefi_by_default_and_bios_without_pflash() {
        let uefi = plan(&args(&[]), &iso(), tcg(), &host(false, &[]), None);
        assert_eq!(uefi.spec.firmware, Firmware::Uefi);
        let line = command(&uefi);
        assert!(line.contains("unit=0,readonly=on,file=/fw/CODE.fd") && line.contains("unit=1,file=/tmp/VARS.fd"));
        let bios = plan(&args(&["--bios"]), &iso(), tcg(), &host(false, &[]), None);
        assert_eq!(bios.spec.firmware, Firmware::Bios);
        assert!(!command(&bios).contains("pflash"), "{}", command(&bios));
    }

    #[test]
    fn the_iso_is_a_cd_or_a_usb_stick_and_is_never_written() {
        let cd = command(&plan(&args(&[]), &iso(), tcg(), &host(false, &[]), None));
        assert!(cd.contains("media=cdrom,readonly=on,file=/dist/t.iso") && cd.contains("bootindex=0"), "{cd}");
        let stick = Medium::Iso { path: "/dist/t.iso".into(), usb: true };
        let usb = command(&plan(&args(&["--usb"]), &stick, tcg(), &host(false, &[]), None));
        assert!(usb.contains("usb-storage") && usb.contains("snapshot=on,file=/dist/t.iso"), "{usb}");
        assert!(!usb.contains("media=cdrom"), "{usb}");
        assert!(cd.contains("-no-reboot"), "the ISO must not boot again over an install: {cd}");
    }

    #[test]
    fn a_disk_image_is_not_written_without_write() {
        let discarded =
            Medium::Disk { path: "/u/appliance.qcow2".into(), format: "qcow2".into(), writes: Writes::Discarded };
        let p = plan(&args(&["--disk", "/u/appliance.qcow2"]), &discarded, tcg(), &host(false, &[]), None);
        let line = command(&p);
        assert!(line.contains("format=qcow2,snapshot=on,file=/u/appliance.qcow2"), "{line}");
        assert!(p.lines[0].contains("discarded"), "{:?}", p.lines);
        assert!(!line.contains("-no-reboot"), "{line}");
        let written = Medium::Disk { path: "/u/a.raw".into(), format: "raw".into(), writes: Writes::ToFile };
        let line = command(&plan(&args(&["--disk", "/u/a.raw", "--write"]), &written, tcg(), &host(false, &[]), None));
        assert!(line.contains("format=raw,file=/u/a.raw") && !line.contains("snapshot"), "{line}");
        // The KVM probe boots the user's disk without writing to it, even with --write.
        assert!(written.media(Some(Writes::Discarded)).join(" ").contains("snapshot=on"));
    }

    #[test]
    fn arguments_that_do_not_go_together_are_refused() {
        let refused = |line: &[&str]| Cli::try_parse_from(std::iter::once("vm").chain(line.iter().copied())).is_err();
        assert!(refused(&["--write"]), "--write without --disk");
        assert!(refused(&["--iso", "a.iso", "--disk", "d.raw"]));
        assert!(refused(&["--usb", "--disk", "d.raw"]));
        assert!(refused(&["--scratch-disk", "0"]));
        let a = args(&[]);
        assert_eq!((a.memory, a.accel, a.no_display, a.bios, a.usb), (2048, AccelChoice::Auto, false, false, false));
    }

    #[test]
    fn vnc_without_a_desktop_and_a_window_with_one() {
        let (display, said) = choose_display(false, &host(false, &["gtk", "sdl"]));
        assert_eq!(display, Display::Vnc(2));
        assert!(said.contains("vnc://127.0.0.1:5902"), "{said}");
        assert_eq!(choose_display(false, &host(true, &["none", "sdl", "gtk"])).0, Display::Window("gtk"));
        assert_eq!(choose_display(false, &host(true, &["none", "sdl"])).0, Display::Window("sdl"));
        let (display, said) = choose_display(false, &host(true, &["none", "curses"]));
        assert_eq!(display, Display::Vnc(2));
        assert!(said.contains("qemu-system-gui"), "{said}");
        assert_eq!(choose_display(true, &host(true, &["gtk"])).0, Display::None);

        let p = plan(&args(&[]), &iso(), tcg(), &host(false, &[]), None);
        let line = command(&p);
        assert!(line.contains("-display none -vnc 127.0.0.1:2"), "{line}");
        assert!(p.lines.iter().any(|l| l.contains("vnc://127.0.0.1:5902")), "{:?}", p.lines);
    }

    #[test]
    fn serial_on_the_terminal_and_ssh_and_postgresql_forwarded() {
        let p = plan(&args(&[]), &iso(), tcg(), &host(false, &[]), None);
        let line = command(&p);
        assert!(line.contains("-serial mon:stdio"), "{line}");
        assert!(line.contains("hostfwd=tcp:127.0.0.1:40022-:22,hostfwd=tcp:127.0.0.1:45432-:5432"), "{line}");
        let said = p.lines.join("\n");
        assert!(said.contains("ssh -p 40022 admin@127.0.0.1"), "{said}");
        assert!(said.contains("psql \"host=127.0.0.1 port=45432 "), "{said}");
        assert!(said.contains("Ctrl-A X"), "{said}");
    }

    #[test]
    fn a_scratch_disk_is_a_virtio_disk_named_scratch() {
        let p = plan(&args(&["--scratch-disk", "20"]), &iso(), tcg(), &host(false, &[]), Some(Path::new("/w/s.qcow2")));
        let line = command(&p);
        assert!(line.contains("format=qcow2,file=/w/s.qcow2") && line.contains("serial=scratch"), "{line}");
        assert!(p.lines.iter().any(|l| l.contains("/w/s.qcow2 (20 GiB")), "{:?}", p.lines);
    }

    #[test]
    fn auto_uses_kvm_only_when_it_is_usable_and_a_guest_ran() {
        let never = || -> KvmProbe { panic!("probed") };
        let works = KvmProbe { works: true, how: "marker in 20 s".into() };
        let hangs = KvmProbe { works: false, how: "nothing after 1m30s".into() };
        let no_kvm = || Err("this host has no /dev/kvm".to_owned());
        assert_eq!(choose_accel(AccelChoice::Tcg, Ok(()), None, never).unwrap().0, Accelerator::Tcg);
        assert_eq!(choose_accel(AccelChoice::Kvm, Ok(()), None, never).unwrap().0, Accelerator::Kvm);
        assert!(choose_accel(AccelChoice::Kvm, no_kvm(), None, never).is_err());
        let (accel, why) = choose_accel(AccelChoice::Auto, no_kvm(), None, never).unwrap();
        assert_eq!(accel, Accelerator::Tcg);
        assert!(why.contains("no /dev/kvm"), "{why}");
        let (accel, why) = choose_accel(AccelChoice::Auto, Ok(()), Some(hangs.clone()), never).unwrap();
        assert_eq!(accel, Accelerator::Tcg);
        assert!(why.contains("does not boot") && why.contains("recorded"), "{why}");
        assert_eq!(choose_accel(AccelChoice::Auto, Ok(()), Some(works.clone()), never).unwrap().0, Accelerator::Kvm);
        assert_eq!(choose_accel(AccelChoice::Auto, Ok(()), None, || works).unwrap().0, Accelerator::Kvm);
        assert_eq!(choose_accel(AccelChoice::Auto, Ok(()), None, || hangs).unwrap().0, Accelerator::Tcg);
    }

    #[test]
    fn disk_formats_come_from_qemu_img_or_the_name() {
        assert_eq!(format_from_info(r#"{"virtual-size": 1, "format": "qcow2"}"#).unwrap(), "qcow2");
        assert!(format_from_info("{}").is_err());
        assert_eq!(format_from_extension(Path::new("/a/b.raw")), Some("raw"));
        assert_eq!(format_from_extension(Path::new("/a/b.img")), Some("raw"));
        assert_eq!(format_from_extension(Path::new("/a/b.qcow2")), Some("qcow2"));
        assert_eq!(format_from_extension(Path::new("/a/b.vdi")), None);
        // The real qemu-img, when there is one, on a real (sparse) file.
        if crate::util::run::on_path("qemu-img") {
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("disk");
            std::fs::File::create(&raw).unwrap().set_len(1 << 20).unwrap();
            assert_eq!(disk_format(&raw).unwrap(), "raw");
        }
    }
}
