//! The one QEMU harness. Every virtual machine xtask starts is a [`VmSpec`]: the boot test's,
//! the install and GUI tests', and `cargo xtask vm`'s. A spec says the firmware (SeaBIOS, or
//! OVMF with a private copy of its variables), the boot media and disks (built with [`cdrom`],
//! [`usb_stick`], [`virtio_disk`], [`usb_disk`]), where the serial console goes (a log file for
//! the tests, the terminal for a person), QMP, ports forwarded from 127.0.0.1, graphics and
//! display, and the accelerator (single-threaded TCG, or KVM). [`Vm`] starts one and waits for
//! what its serial console says; [`Vm::run_interactive`] gives it the terminal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::util::progress::format_duration;
use crate::util::run::{Cmd, tail};

/// The firmware the machine starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, QEMU's default: no pflash drives.
    Bios,
    /// OVMF: its code read-only, its variables a private copy per machine.
    Uefi,
}

/// How the guest's CPU runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accelerator {
    /// Software emulation, single-threaded (`-accel tcg,thread=single`): with one host thread
    /// per vCPU (MTTCG) a guest kernel patching its own code (static keys, int3) while another
    /// vCPU runs it crashed here once in ~25 boots.
    Tcg,
    /// Hardware virtualisation (`/dev/kvm`).
    Kvm,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Tcg => "tcg",
            Accelerator::Kvm => "kvm",
        }
    }
}

/// What a command's `--accel` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// Software emulation: works everywhere.
    Tcg,
    /// Hardware virtualisation, unconditionally.
    Kvm,
    /// KVM only when /dev/kvm is usable and a probe boot shows a KVM guest runs here (a KVM
    /// guest can hang on some hosts); TCG otherwise.
    Auto,
}

/// Where the machine's screen goes (its graphics adapter is [`VmSpec::graphics`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Display {
    /// Nowhere (`-display none`): the tests, which take QMP screendumps if they look at all.
    None,
    /// A window on the person's desktop: QEMU's `gtk` or `sdl` display.
    Window(&'static str),
    /// A VNC server on 127.0.0.1, display number `n` (TCP port 5900 + n).
    Vnc(u16),
}

/// Where the serial console goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serial {
    /// `<log_dir>/<name>.serial.log`, read by [`Vm::wait_for`].
    LogFile,
    /// This terminal, multiplexed with QEMU's monitor (`-serial mon:stdio`: Ctrl-A X quits,
    /// Ctrl-A C switches to the monitor).
    Terminal,
}

/// A machine to start. [`VmSpec::new`] and [`VmSpec::uefi`] give the defaults (2 GiB,
/// single-threaded TCG, `-vga std` shown nowhere, serial console to a log file, no network,
/// `-no-reboot`); the builder methods change them.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Names the log files: `<name>.serial.log`, `<name>.qemu.log`.
    pub name: String,
    pub firmware: Firmware,
    pub accel: Accelerator,
    pub memory_mib: u32,
    /// `-drive`/`-device` arguments for the machine's boot media and disks.
    pub storage: Vec<String>,
    /// (host port on 127.0.0.1, guest port) pairs; none: no network card.
    pub forwards: Vec<(u16, u16)>,
    pub log_dir: PathBuf,
    /// A QMP control socket (screendump, key presses), for the graphical installer's test.
    pub qmp_socket: Option<PathBuf>,
    /// The display adapter, QEMU's `-vga` type: `std` (the firmware's framebuffer, then
    /// bochs-drm) by default; `virtio`, `qxl`, `vmware`, `cirrus`; `none`: no adapter at all
    /// (unless one is added as a device, as `ramfb`).
    pub vga: &'static str,
    pub display: Display,
    pub serial: Serial,
    /// The log-file serial console also takes typed input, through a Unix socket
    /// (`<name>.serial.sock`; [`Vm::type_on_serial`]): a serial console's dialog.
    pub serial_input: bool,
    /// A guest reboot ends QEMU (`-no-reboot`), as the tests want; off, it reboots.
    pub no_reboot: bool,
    /// How long the guest may say nothing on its serial console before a wait gives up on it
    /// as stuck ([`Vm::wait_for`]): a VM idle at a prompt nobody answers must not hold a test
    /// until its overall timeout.
    pub silence_limit: Duration,
}

/// A guest silent this long is taken as stuck: about twice the longest quiet stretch seen in
/// a live or installed boot under TCG on a slow day (the installer's copy step is longer; the
/// install tests raise it with [`VmSpec::silence_limit`]).
pub const DEFAULT_SILENCE_LIMIT: Duration = Duration::from_secs(5 * 60);

impl VmSpec {
    pub fn new(firmware: Firmware, name: impl Into<String>, log_dir: impl Into<PathBuf>) -> VmSpec {
        VmSpec {
            name: name.into(),
            firmware,
            accel: Accelerator::Tcg,
            memory_mib: 2048,
            storage: Vec::new(),
            forwards: Vec::new(),
            log_dir: log_dir.into(),
            qmp_socket: None,
            vga: "std",
            display: Display::None,
            serial: Serial::LogFile,
            serial_input: false,
            no_reboot: true,
            silence_limit: DEFAULT_SILENCE_LIMIT,
        }
    }

    /// A UEFI machine (OVMF) with the defaults.
    pub fn uefi(name: impl Into<String>, log_dir: impl Into<PathBuf>) -> VmSpec {
        VmSpec::new(Firmware::Uefi, name, log_dir)
    }

    pub fn memory(mut self, mib: u32) -> VmSpec {
        self.memory_mib = mib;
        self
    }

    /// Adds drives and devices (see [`cdrom`], [`usb_stick`], [`virtio_disk`], [`usb_disk`]).
    pub fn media(mut self, args: Vec<String>) -> VmSpec {
        self.storage.extend(args);
        self
    }

    /// Forwards `host` on 127.0.0.1 to the guest's TCP port `guest` (adds a network card).
    pub fn forward(mut self, host: u16, guest: u16) -> VmSpec {
        self.forwards.push((host, guest));
        self
    }

    pub fn qmp(mut self, socket: impl Into<PathBuf>) -> VmSpec {
        self.qmp_socket = Some(socket.into());
        self
    }

    /// No display adapter at all (`-vga none`).
    pub fn no_graphics(mut self) -> VmSpec {
        self.vga = "none";
        self
    }

    /// The display adapter (QEMU's `-vga` type, see [`VmSpec::vga`]).
    pub fn vga(mut self, vga: &'static str) -> VmSpec {
        self.vga = vga;
        self
    }

    pub fn accel(mut self, accel: Accelerator) -> VmSpec {
        self.accel = accel;
        self
    }

    pub fn display(mut self, display: Display) -> VmSpec {
        self.display = display;
        self
    }

    /// The serial console on this terminal (see [`Serial::Terminal`]), for a person.
    pub fn serial_on_terminal(mut self) -> VmSpec {
        self.serial = Serial::Terminal;
        self
    }

    /// Input can be typed on the serial console (see [`VmSpec::serial_input`]).
    pub fn serial_input(mut self) -> VmSpec {
        self.serial_input = true;
        self
    }

    /// Waits give up after the guest has been silent this long (default
    /// [`DEFAULT_SILENCE_LIMIT`]).
    pub fn silence_limit(mut self, limit: Duration) -> VmSpec {
        self.silence_limit = limit;
        self
    }

    /// A guest reboot reboots the machine instead of ending QEMU.
    pub fn allow_reboot(mut self) -> VmSpec {
        self.no_reboot = false;
        self
    }

    pub fn serial_log(&self) -> PathBuf {
        self.log_dir.join(format!("{}.serial.log", self.name))
    }

    pub fn serial_socket(&self) -> PathBuf {
        self.log_dir.join(format!("{}.serial.sock", self.name))
    }

    pub fn qemu_log(&self) -> PathBuf {
        self.log_dir.join(format!("{}.qemu.log", self.name))
    }

    /// The QEMU command line. `ovmf`: the firmware's code and this machine's private copy of
    /// its variables, which a UEFI machine needs and a BIOS machine must not have.
    pub fn command(&self, ovmf: Option<(&Path, &Path)>) -> Result<Cmd> {
        let accel = match self.accel {
            Accelerator::Tcg => "tcg,thread=single",
            Accelerator::Kvm => "kvm",
        };
        let mut cmd = Cmd::new("qemu-system-x86_64")
            .args(["-machine", "q35", "-accel", accel, "-smp", "2"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-vga", self.vga]);
        cmd = match &self.display {
            Display::None => cmd.args(["-display", "none"]),
            Display::Window(kind) => cmd.args(["-display", kind]),
            Display::Vnc(n) => cmd.args(["-display", "none", "-vnc"]).arg(format!("127.0.0.1:{n}")),
        };
        cmd = cmd.args(["-monitor", "none"]);
        cmd = match self.serial {
            // Not the chardev's own `logfile=`: QEMU's 16550 retries a byte the socket could not
            // take at once (EAGAIN), and the chardev logs the byte on the failed try and again
            // on the retry, so the log doubled characters the guest printed once ("/dev/vdda").
            // The log is what Vm::start's reader takes off the socket; QEMU waits for that
            // reader (`wait=on`) before the guest runs, so nothing said is lost.
            Serial::LogFile if self.serial_input => cmd
                .arg("-chardev")
                .arg(format!("socket,id=serial0,path={},server=on,wait=on", self.serial_socket().display()))
                .args(["-serial", "chardev:serial0"]),
            Serial::LogFile => cmd.arg("-serial").arg(format!("file:{}", self.serial_log().display())),
            Serial::Terminal => cmd.args(["-serial", "mon:stdio"]),
        };
        if self.no_reboot {
            cmd = cmd.arg("-no-reboot");
        }
        match (self.firmware, ovmf) {
            (Firmware::Uefi, Some((code, vars))) => {
                cmd = cmd
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
                    .arg("-drive")
                    .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
            }
            (Firmware::Uefi, None) => bail!("a UEFI machine needs OVMF's code and a writable copy of its variables"),
            (Firmware::Bios, Some(_)) => bail!("a BIOS machine takes no OVMF firmware"),
            (Firmware::Bios, None) => {}
        }
        cmd = cmd.args(&self.storage);
        if let Some(socket) = &self.qmp_socket {
            cmd = cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
        }
        if self.forwards.is_empty() {
            cmd = cmd.args(["-net", "none"]);
        } else {
            let forwards: Vec<String> =
                self.forwards.iter().map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}")).collect();
            cmd = cmd
                .arg("-netdev")
                .arg(format!("user,id=net0{}", forwards.concat()))
                .args(["-device", "virtio-net-pci,netdev=net0"]);
        }
        Ok(cmd)
    }

    /// The command line with its firmware in place: for UEFI, a private copy of OVMF's
    /// variables in a temporary directory that must live as long as the machine.
    fn prepare(&self) -> Result<(Cmd, Option<tempfile::TempDir>)> {
        match self.firmware {
            Firmware::Bios => Ok((self.command(None)?, None)),
            Firmware::Uefi => {
                let (code, template) = ovmf_files()?;
                let dir = tempfile::tempdir()?;
                let vars = dir.path().join("OVMF_VARS.fd");
                std::fs::copy(&template, &vars).with_context(|| format!("copying {}", template.display()))?;
                Ok((self.command(Some((&code, &vars)))?, Some(dir)))
            }
        }
    }
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

/// A running machine whose serial console goes to a log file.
pub struct Vm {
    handle: duct::Handle,
    pub serial_log: PathBuf,
    /// Connected to the serial console's socket when the spec asked for input.
    serial_input: Option<std::os::unix::net::UnixStream>,
    qemu_log: PathBuf,
    started: Instant,
    pub accel: Accelerator,
    /// QEMU's QMP socket: the ACPI power button for [`Vm::power_off`].
    qmp_socket: Option<PathBuf>,
    silence_limit: Duration,
    _vars: Option<tempfile::TempDir>,
    /// Dropped after the fields above: QEMU is reaped (`Drop`) before the slot is free.
    _slot: crate::util::lock::Lock,
}

/// A free TCP port on 127.0.0.1 (free when asked; QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Vm {
    /// Starts the machine in the background; it dies with xtask.
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        if spec.serial != Serial::LogFile {
            bail!("Vm::start reads the serial console from its log file; use Vm::run_interactive");
        }
        std::fs::create_dir_all(&spec.log_dir)?;
        let (serial_log, qemu_log) = (spec.serial_log(), spec.qemu_log());
        let _ = std::fs::remove_file(&serial_log);
        // Every machine the tests start has a QMP socket: its power button. (A Unix socket's
        // path has room for 107 bytes: a deep work directory puts it in the temporary one.)
        let mut spec = spec.clone();
        if spec.qmp_socket.is_none() {
            let beside_logs = spec.log_dir.join(format!("{}.qmp", spec.name));
            spec.qmp_socket = Some(if beside_logs.as_os_str().len() < 100 {
                beside_logs
            } else {
                std::env::temp_dir().join(format!("truthdb-os-{}-{}.qmp", std::process::id(), spec.name))
            });
        }
        if let Some(socket) = &spec.qmp_socket {
            let _ = std::fs::remove_file(socket);
        }
        let spec = &spec;
        let (cmd, vars) = spec.prepare()?;
        let slot = take_vm_slot(&vm_slot_dir(), vms_at_once(), &spec.name)?;
        let socket = spec.serial_socket();
        if spec.serial_input {
            let _ = std::fs::remove_file(&socket);
        }
        let handle = cmd.start_logged(&qemu_log)?;
        let mut vm = Vm {
            handle,
            serial_log,
            serial_input: None,
            qemu_log,
            started: Instant::now(),
            accel: spec.accel,
            qmp_socket: spec.qmp_socket.clone(),
            silence_limit: spec.silence_limit,
            _vars: vars,
            _slot: slot,
        };
        if spec.serial_input {
            vm.serial_input = Some(vm.connect_serial(&socket)?);
        }
        Ok(vm)
    }

    /// Runs the machine with this terminal as its serial console until QEMU ends (the guest
    /// powers off, or Ctrl-A X). QEMU dies with xtask.
    pub fn run_interactive(spec: &VmSpec, env: &[(String, String)]) -> Result<()> {
        if spec.serial != Serial::Terminal {
            bail!("Vm::run_interactive gives the machine this terminal; set VmSpec::serial_on_terminal");
        }
        if let Some(socket) = &spec.qmp_socket {
            let _ = std::fs::remove_file(socket);
        }
        let (mut cmd, _vars) = spec.prepare()?;
        for (key, value) in env {
            cmd = cmd.env(key, value);
        }
        cmd.die_with_parent().run_inherit()
    }

    /// Connects to the serial console's socket once QEMU has made it, and copies what the
    /// guest says through it into the serial log on a thread: the log is exactly what came
    /// through the socket, and the socket, read at once, never stalls the guest's serial port.
    fn connect_serial(&self, socket: &Path) -> Result<std::os::unix::net::UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow!("connecting to the serial console's socket {}: {e}", socket.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let mut from_guest = stream.try_clone().context("cloning the serial console's socket")?;
        let mut log = std::fs::File::create(&self.serial_log)
            .with_context(|| format!("creating the serial log {}", self.serial_log.display()))?;
        std::thread::spawn(move || std::io::copy(&mut from_guest, &mut log));
        Ok(stream)
    }

    /// Types `text` on the serial console, as a person at a serial terminal (`\r` ends a line
    /// there). Needs [`VmSpec::serial_input`].
    pub fn type_on_serial(&self, text: &str) -> Result<()> {
        use std::io::Write;
        let mut stream =
            self.serial_input.as_ref().context("this machine takes no serial input (VmSpec::serial_input)")?;
        stream.write_all(text.as_bytes()).context("typing on the serial console")
    }

    pub fn serial(&self) -> String {
        std::fs::read(&self.serial_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Polls the serial console until `check(serial, exited)` decides. Fails at once on a
    /// guest kernel panic, when QEMU exits and `check` does not accept that, or at `timeout`
    /// after the machine started.
    ///
    /// A guest that has said nothing on its serial console for the spec's silence limit is
    /// stuck (idle at a prompt nobody answers, hung): the wait ends then, naming what it
    /// waited for and the last lines it saw, not at the end of `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str, bool) -> Option<Result<T>>,
    ) -> Result<T> {
        let (mut said_len, mut last_said) = (0, Instant::now());
        loop {
            let status = self.handle.try_wait()?.map(|output| output.status);
            let serial = self.serial();
            if serial.len() != said_len {
                (said_len, last_said) = (serial.len(), Instant::now());
            }
            if let Some(decided) = check(&serial, status.is_some()) {
                return decided.map_err(|e| self.failure(what, &serial, &format!("{e:#}")));
            }
            // A panicked guest never gets there; say so now, not at the timeout.
            let failure = if serial.contains("Kernel panic - not syncing") {
                Some("the guest kernel panicked".to_owned())
            } else if let Some(error) = self.kvm_stopped() {
                Some(error)
            } else if let Some(status) = status {
                let said = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
                Some(format!(
                    "QEMU exited first ({}); it said ({}):\n{}",
                    crate::util::run::describe_status(status),
                    self.qemu_log.display(),
                    tail(&said, 10)
                ))
            } else if self.started.elapsed() > timeout {
                Some(format!("nothing after {} ({})", format_duration(timeout), self.accel.name()))
            } else if last_said.elapsed() > self.silence_limit {
                Some(format!(
                    "the guest has said nothing on its serial console for {}: stuck ({} after power-on, {})",
                    format_duration(self.silence_limit),
                    format_duration(self.started.elapsed()),
                    self.accel.name()
                ))
            } else {
                None
            };
            if let Some(failure) = failure {
                return Err(self.failure(what, &serial, &failure));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// A KVM guest QEMU stopped on a KVM internal error (an instruction the host's KVM cannot
    /// emulate, as nested KVM on some hosts): QEMU keeps running a guest that never resumes.
    fn kvm_stopped(&self) -> Option<String> {
        if self.accel != Accelerator::Kvm {
            return None;
        }
        let said = std::fs::read_to_string(&self.qemu_log).ok()?;
        let line = said.lines().find(|l| l.starts_with("KVM internal error"))?;
        let kind = if said.contains("emulation failure") { " (emulation failure)" } else { "" };
        Some(format!("QEMU stopped the guest: {}{kind} ({})", line.trim(), self.qemu_log.display()))
    }

    /// "waiting for <what>: <why>" first (a one-line summary), then the serial console's end.
    fn failure(&self, what: &str, serial: &str, why: &str) -> anyhow::Error {
        anyhow!("{why}\nserial console ({}), last lines:\n{}", self.serial_log.display(), tail(serial, 30))
            .context(format!("waiting for {what}"))
    }

    /// Cuts the machine's power: QEMU killed at once, reaped. What the guest had not yet
    /// written to its disks is lost, as in a power failure. The tests do it on purpose (the
    /// power-cut checks), to a live system that writes no disk, and on their failure paths.
    pub fn power_cut(&self) {
        let _ = self.handle.kill();
        let _ = self.handle.wait();
    }

    /// Shuts the machine down the way a hypervisor does: the ACPI power button (QMP
    /// `system_powerdown`), then waits for the guest to power off and QEMU to end. How a
    /// check of an installed system ends, so that the next boot of its disk never depends on
    /// what happened to be written back.
    pub fn power_off(&self, patience: Duration) -> Result<()> {
        if self.handle.try_wait()?.is_none() {
            let socket = self.qmp_socket.as_deref().context("this machine has no QMP socket")?;
            let mut qmp = crate::vm::qmp::Qmp::connect(socket, Duration::from_secs(30))?;
            qmp.execute("system_powerdown", serde_json::json!({}))?;
        }
        let asked = Instant::now();
        while self.handle.try_wait()?.is_none() {
            if asked.elapsed() > patience {
                let why = format!("still running {} after the ACPI power button", format_duration(patience));
                return Err(self.failure("the guest to power off", &self.serial(), &why));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }
}

impl Drop for Vm {
    /// A machine still running here is on a failure path (or a live system the test is done
    /// with): its power is cut.
    fn drop(&mut self) {
        self.power_cut();
    }
}

/// QEMU arguments for a machine whose power a test is going to cut: a systemd credential
/// (`sysctl.extra`, read by systemd-sysctl early in the boot) that turns the guest kernel's
/// periodic writeback off. Until a program syncs, what it wrote then stays in the guest's page
/// cache, and the power cut loses it: the worst case of a real power cut, every time, instead
/// of whatever the 5-30 s of background writeback happened to save before the cut.
pub fn no_periodic_writeback() -> Vec<String> {
    vec!["-smbios".into(), "type=11,value=io.systemd.credential:sysctl.extra=vm.dirty_writeback_centisecs=0".into()]
}

/// How long a clean shutdown of the appliance may take under TCG on a slow day (PostgreSQL's
/// checkpoint, the journal, unmounting): measured 10-40 s.
pub const POWER_OFF_PATIENCE: Duration = Duration::from_secs(180);

/// The first serial console line holding `marker`, from the marker on, trimmed. (The console
/// may put terminal escapes before a marker on its line: getty resets.)
pub fn line_from(serial: &str, marker: &str) -> Option<String> {
    serial.lines().find_map(|l| l.find(marker).map(|at| l[at..].trim().to_owned()))
}

/// The installer's latest progress on the serial console (`truthdb-installer: [3/9] ...`),
/// from the `[` on, when it differs from `last` (which it then becomes).
pub fn installer_progress(serial: &str, last: &mut String) -> Option<String> {
    let progress = serial.lines().rev().find_map(|l| l.split("truthdb-installer: [").nth(1))?;
    if progress == last {
        return None;
    }
    progress.clone_into(last);
    Some(format!("[{}", progress.trim()))
}

/// Whether this user can use KVM: `/dev/kvm` opens for reading and writing. Err says why not.
pub fn kvm_usable() -> std::result::Result<(), String> {
    match std::fs::File::options().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("this host has no /dev/kvm".to_owned()),
        Err(e) => Err(format!("/dev/kvm is not usable by this user ({e})")),
    }
}

/// What a KVM probe's result holds for: this QEMU on this host kernel.
pub fn kvm_probe_key() -> String {
    let qemu = Cmd::new("qemu-system-x86_64").arg("--version").read().unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "qemu={}\nhost-kernel={}",
        qemu.lines().next().unwrap_or("unknown").trim(),
        kernel.trim().lines().next().unwrap_or("unknown")
    )
}

/// A KVM probe's result: whether a KVM guest ran, and how that was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvmProbe {
    pub works: bool,
    pub how: String,
}

/// The probe result recorded in `cache` for `key` (see [`kvm_probe_key`]), if any.
pub fn cached_kvm_probe(cache: &Path, key: &str) -> Option<KvmProbe> {
    parse_kvm_probe(&std::fs::read_to_string(cache).ok()?, key)
}

fn parse_kvm_probe(text: &str, key: &str) -> Option<KvmProbe> {
    let (recorded_key, rest) = text.split_once("\nkvm=")?;
    if recorded_key != key {
        return None;
    }
    let (result, how) = rest.split_once("\nhow=")?;
    let works = match result {
        "works" => true,
        "hangs" => false,
        _ => return None,
    };
    Some(KvmProbe { works, how: how.trim().to_owned() })
}

fn format_kvm_probe(key: &str, probe: &KvmProbe) -> String {
    format!("{key}\nkvm={}\nhow={}\n", if probe.works { "works" } else { "hangs" }, probe.how.replace('\n', " "))
}

/// Records a probe's result for `key` (written beside and renamed: boot-test and vm share it).
pub fn record_kvm_probe(cache: &Path, key: &str, probe: &KvmProbe) -> Result<()> {
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = cache.with_extension(format!("partial.{}", std::process::id()));
    std::fs::write(&partial, format_kvm_probe(key, probe)).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, cache).with_context(|| format!("writing {}", cache.display()))
}

/// How many VMs the tests run side by side: single-threaded TCG keeps one host core busy per
/// VM, so one per core (two on the 2-core machines CI runs on), at most four.
pub fn vms_at_once() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4)
}

/// Where the machine's VM slots are: one lock file per slot, shared by every xtask on the
/// machine (a tmpfs, so a reboot leaves none behind).
fn vm_slot_dir() -> PathBuf {
    if crate::util::host::is_root() {
        PathBuf::from("/run/truthdb-os/vm-slots")
    } else {
        std::env::temp_dir().join("truthdb-os-vm-slots")
    }
}

/// One of the machine's VM slots for CPU-heavy work on the host beside the test VMs (a disk
/// image's build: unsquashfs, mkfs, the UKI), held while it runs. A third busy thing on two
/// cores starves a TCG guest for seconds, and its PS/2 keyboard then drops typed keys.
pub fn take_slot_for_host_work(what: &str) -> Result<crate::util::lock::Lock> {
    take_vm_slot(&vm_slot_dir(), vms_at_once(), what)
}

/// One of the machine's `slots` VM slots, waiting for one to come free. Every test VM takes
/// one for its life ([`Vm::start`]), so tests run side by side (`cargo xtask test` starts the
/// VM-only e2e tests together) never run more VMs than the machine has cores: a third VM on
/// two cores would slow the other two down and eat into their timeouts. Every VM ends on its
/// own (no VM's end depends on another VM starting), so waiting for a slot cannot deadlock.
fn take_vm_slot(dir: &Path, slots: usize, name: &str) -> Result<crate::util::lock::Lock> {
    let mut said = false;
    loop {
        for n in 0..slots {
            if let Some(lock) = crate::util::lock::try_acquire(&dir.join(format!("slot-{n}")))? {
                return Ok(lock);
            }
        }
        if !said {
            eprintln!(
                "    VM {name}: waiting for a VM slot ({slots} VMs already run on this machine; {})",
                dir.display()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `job` for every item at once, each on its own thread, and returns the results in
/// order. (QEMU started by a job dies with the thread that started it: see
/// [`crate::util::run::Cmd::die_with_parent`]; the thread lives until its job is done.)
pub fn in_parallel<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> Result<R> + Sync) -> Vec<Result<R>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.iter().map(|item| scope.spawn(|| job(item))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a VM's thread panicked"))))
            .collect()
    })
}

/// What the guest's writes to a disk do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// They go to the file.
    ToFile,
    /// They go to a temporary overlay, dropped when QEMU ends (`snapshot=on`).
    Discarded,
}

/// A virtio disk with a serial number (how install configs select it).
pub fn virtio_disk(file: &Path, format: &str, serial: &str) -> Vec<String> {
    virtio_drive(file, format, serial, Writes::ToFile, None)
}

/// A virtio disk the machine boots from first.
pub fn virtio_boot_disk(file: &Path, format: &str, serial: &str, writes: Writes) -> Vec<String> {
    virtio_drive(file, format, serial, writes, Some(0))
}

fn virtio_drive(file: &Path, format: &str, serial: &str, writes: Writes, bootindex: Option<u8>) -> Vec<String> {
    let snapshot = if writes == Writes::Discarded { ",snapshot=on" } else { "" };
    let bootindex = bootindex.map(|i| format!(",bootindex={i}")).unwrap_or_default();
    vec![
        "-drive".into(),
        format!("if=none,id={serial},format={format}{snapshot},file={}", file.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={serial},serial={serial}{bootindex}"),
    ]
}

/// A disk on a USB bus (what `largest` must never pick unless it is named).
pub fn usb_disk(file: &Path, serial: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id={serial},format=raw,file={}", file.display()),
        "-device".into(),
        "qemu-xhci,id=xhci-disk".into(),
        "-device".into(),
        format!("usb-storage,bus=xhci-disk.0,drive={serial},serial={serial},removable=off"),
    ]
}

/// The ISO as a CD.
pub fn cdrom(iso: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id=cd,format=raw,media=cdrom,readonly=on,file={}", iso.display()),
        "-device".into(),
        "ide-cd,drive=cd,bootindex=0".into(),
    ]
}

/// The ISO written to a USB stick (writes go to a temporary overlay: the ISO stays unchanged).
pub fn usb_stick(iso: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id=stick,format=raw,snapshot=on,file={}", iso.display()),
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-device".into(),
        "usb-storage,bus=xhci.0,drive=stick,bootindex=0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(spec: &VmSpec) -> String {
        let ovmf = (spec.firmware == Firmware::Uefi).then_some((Path::new("/fw/CODE.fd"), Path::new("/tmp/VARS.fd")));
        spec.command(ovmf).unwrap().to_string()
    }

    #[test]
    fn bios_has_no_pflash_and_uefi_has_the_code_read_only_and_a_private_vars_copy() {
        let bios = line(&VmSpec::new(Firmware::Bios, "b", "/logs").media(cdrom(Path::new("/x.iso"))));
        assert!(!bios.contains("pflash"), "{bios}");
        let uefi = line(&VmSpec::uefi("u", "/logs"));
        assert!(uefi.contains("-drive if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd"), "{uefi}");
        assert!(uefi.contains("-drive if=pflash,format=raw,unit=1,file=/tmp/VARS.fd"), "{uefi}");
        // Firmware files must match the firmware.
        assert!(VmSpec::uefi("u", "/logs").command(None).is_err());
        assert!(VmSpec::new(Firmware::Bios, "b", "/logs").command(Some((Path::new("/a"), Path::new("/b")))).is_err());
    }

    #[test]
    fn defaults_are_the_tests_machine() {
        let spec = VmSpec::uefi("install", "/logs");
        let cmd = line(&spec);
        for part in [
            "-machine q35 -accel tcg,thread=single -smp 2",
            "-m 2048",
            "-vga std",
            "-display none",
            "-monitor none",
            "-serial file:/logs/install.serial.log",
            "-no-reboot",
            "-net none",
        ] {
            assert!(cmd.contains(part), "{part:?} missing: {cmd}");
        }
        assert!(!cmd.contains("-qmp") && !cmd.contains("-vnc") && !cmd.contains("hostfwd"), "{cmd}");
        assert_eq!(spec.qemu_log(), Path::new("/logs/install.qemu.log"));
    }

    #[test]
    fn builder_methods_change_what_they_say() {
        let spec = VmSpec::new(Firmware::Bios, "look", "/logs")
            .memory(4096)
            .accel(Accelerator::Kvm)
            .forward(2222, 22)
            .forward(5433, 5432)
            .qmp("/run/q.sock")
            .no_graphics()
            .display(Display::Vnc(3))
            .serial_on_terminal()
            .allow_reboot();
        let cmd = line(&spec);
        assert!(cmd.contains("-accel kvm ") && !cmd.contains("tcg"), "{cmd}");
        assert!(cmd.contains("-m 4096") && cmd.contains("-vga none"), "{cmd}");
        assert!(cmd.contains("-display none -vnc 127.0.0.1:3"), "{cmd}");
        assert!(cmd.contains("-serial mon:stdio") && !cmd.contains("serial.log"), "{cmd}");
        assert!(!cmd.contains("-no-reboot"), "{cmd}");
        assert!(cmd.contains("-qmp unix:/run/q.sock,server=on,wait=off"), "{cmd}");
        assert!(
            cmd.contains("-netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=tcp:127.0.0.1:5433-:5432"),
            "{cmd}"
        );
        assert!(!cmd.contains("-net none"), "{cmd}");
        let window = line(&VmSpec::uefi("w", "/logs").display(Display::Window("gtk")));
        assert!(window.contains("-display gtk") && !window.contains("-display none"), "{window}");
        // Typed input: a socket that QEMU waits for, and no chardev log file (it doubles
        // bytes the socket took on a retry); the harness writes the log from the socket.
        let typed = line(&VmSpec::uefi("s", "/logs").serial_input());
        assert!(
            typed.contains(
                "-chardev socket,id=serial0,path=/logs/s.serial.sock,server=on,wait=on -serial chardev:serial0"
            ),
            "{typed}"
        );
        assert!(!typed.contains("-serial file:") && !typed.contains("logfile="), "{typed}");
    }

    #[test]
    fn the_tests_vm_must_log_its_serial_console_and_a_person_s_must_not() {
        let interactive = VmSpec::new(Firmware::Bios, "x", "/nonexistent").serial_on_terminal();
        assert!(format!("{:#}", Vm::start(&interactive).err().unwrap()).contains("run_interactive"));
        let logged = VmSpec::new(Firmware::Bios, "x", "/nonexistent");
        assert!(format!("{:#}", Vm::run_interactive(&logged, &[]).unwrap_err()).contains("serial_on_terminal"));
    }

    /// A stand-in for QEMU: a shell that writes `serial` to the serial log, then runs `then`.
    fn fake_vm(dir: &Path, serial: &str, then: &str) -> Vm {
        fake_vm_on(dir, serial, then, Accelerator::Tcg)
    }

    fn fake_vm_on(dir: &Path, serial: &str, then: &str, accel: Accelerator) -> Vm {
        let name = std::fs::read_dir(dir).unwrap().count();
        let serial_log = dir.join(format!("{name}.serial.log"));
        let qemu_log = dir.join(format!("{name}.qemu.log"));
        let script = format!("printf '%s' \"$1\" > \"$2\"; {then}");
        let handle =
            Cmd::new("sh").args(["-c", &script, "fake"]).arg(serial).arg(&serial_log).start_logged(&qemu_log).unwrap();
        let slot = take_vm_slot(&dir.join("slots"), 1_000, "fake").unwrap();
        Vm {
            handle,
            serial_log,
            serial_input: None,
            qemu_log,
            started: Instant::now(),
            accel,
            qmp_socket: None,
            silence_limit: Duration::from_secs(60),
            _vars: None,
            _slot: slot,
        }
    }

    #[test]
    fn waiting_fails_first_line_first_with_the_serial_console_after() {
        let dir = tempfile::tempdir().unwrap();
        let marker = |serial: &str, _| line_from(serial, "MARKER").map(Ok);

        let vm = fake_vm(dir.path(), "booting\nx MARKER version=1\n", "sleep 30");
        assert_eq!(vm.wait_for("the marker", Duration::from_secs(20), marker).unwrap(), "MARKER version=1");

        let vm = fake_vm(dir.path(), "booting\n", "sleep 30");
        let err = format!("{:#}", vm.wait_for("the marker", Duration::from_secs(1), marker).unwrap_err());
        assert!(err.starts_with("waiting for the marker: nothing after 1.0s (tcg)\nserial console ("), "{err}");
        assert!(err.ends_with("last lines:\nbooting"), "{err}");

        let vm = fake_vm(dir.path(), "booting\n", "echo no such drive >&2; exit 3");
        let err = format!("{:#}", vm.wait_for("the marker", Duration::from_secs(20), marker).unwrap_err());
        assert!(err.starts_with("waiting for the marker: QEMU exited first (exit code 3)"), "{err}");
        assert!(err.contains("no such drive") && err.contains("booting"), "{err}");

        let vm = fake_vm(dir.path(), "Kernel panic - not syncing: VFS\n", "sleep 30");
        let err = format!("{:#}", vm.wait_for("the marker", Duration::from_secs(20), marker).unwrap_err());
        assert!(err.starts_with("waiting for the marker: the guest kernel panicked\n"), "{err}");

        // A KVM guest stopped by a KVM internal error is said at once, not at the timeout.
        let stopped = "echo 'KVM internal error. Suberror: 1' >&2; echo 'emulation failure' >&2; sleep 30";
        let vm = fake_vm_on(dir.path(), "", stopped, Accelerator::Kvm);
        let err = format!("{:#}", vm.wait_for("the marker", Duration::from_secs(20), marker).unwrap_err());
        assert!(
            err.starts_with(
                "waiting for the marker: QEMU stopped the guest: KVM internal error. Suberror: 1 (emulation failure)"
            ),
            "{err}"
        );
        assert!(vm.elapsed() < Duration::from_secs(10), "{:?}", vm.elapsed());

        // What the check itself decides keeps its words, and the serial console follows.
        let vm = fake_vm(dir.path(), "TRUTHDB-INSTALL-FAILED: no disk\n", "sleep 30");
        let err = vm
            .wait_for("the install", Duration::from_secs(20), |serial, _| -> Option<Result<()>> {
                line_from(serial, "TRUTHDB-INSTALL-FAILED").map(|l| Err(anyhow!("the installer failed: {l}")))
            })
            .unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.starts_with("waiting for the install: the installer failed: TRUTHDB-INSTALL-FAILED: no disk\n"),
            "{err}"
        );
    }

    #[test]
    fn a_silent_guest_ends_the_wait_long_before_its_timeout_and_a_talking_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let marker = |serial: &str, _| line_from(serial, "MARKER").map(Ok);

        // Idle at a prompt nobody answers: given up after the silence limit, not the timeout.
        let mut vm = fake_vm(dir.path(), "booting\nType /dev/vda to install there: ", "sleep 60");
        vm.silence_limit = Duration::from_secs(2);
        let err = format!("{:#}", vm.wait_for("the marker", Duration::from_secs(50), marker).unwrap_err());
        assert!(
            err.starts_with("waiting for the marker: the guest has said nothing on its serial console for 2.0s: stuck"),
            "{err}"
        );
        assert!(err.ends_with("Type /dev/vda to install there: "), "{err}");
        assert!(vm.elapsed() < Duration::from_secs(10), "{:?}", vm.elapsed());

        // Saying something every half second, for longer than the limit, is not silence.
        let talking =
            "for i in 1 2 3 4 5 6 7 8; do sleep 0.5; echo tick >> \"$2\"; done; echo MARKER done >> \"$2\"; sleep 60";
        let mut vm = fake_vm(dir.path(), "booting\n", talking);
        vm.silence_limit = Duration::from_secs(2);
        assert_eq!(vm.wait_for("the marker", Duration::from_secs(50), marker).unwrap(), "MARKER done");
    }

    #[test]
    fn a_vm_waits_for_a_free_slot_and_takes_it_when_one_is_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = take_vm_slot(dir.path(), 2, "a").unwrap();
        let second = take_vm_slot(dir.path(), 2, "b").unwrap();
        let (sent, got) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        let third = std::thread::spawn(move || {
            let slot = take_vm_slot(&path, 2, "c").unwrap();
            sent.send(()).unwrap();
            slot
        });
        assert!(got.recv_timeout(Duration::from_millis(1500)).is_err(), "a third VM got a slot beside two");
        drop(second);
        got.recv_timeout(Duration::from_secs(5)).expect("the third VM did not take the slot given back");
        drop((first, third.join().unwrap()));
    }

    #[test]
    fn disks_keep_or_discard_writes_as_asked() {
        let kept = virtio_boot_disk(Path::new("/d.qcow2"), "qcow2", "disk", Writes::ToFile).join(" ");
        assert!(!kept.contains("snapshot") && kept.contains("bootindex=0"), "{kept}");
        let discarded = virtio_boot_disk(Path::new("/d.raw"), "raw", "disk", Writes::Discarded).join(" ");
        assert!(discarded.contains("format=raw,snapshot=on,file=/d.raw"), "{discarded}");
        let plain = virtio_disk(Path::new("/t.raw"), "raw", "truthdb-target").join(" ");
        assert_eq!(
            plain,
            "-drive if=none,id=truthdb-target,format=raw,file=/t.raw \
             -device virtio-blk-pci,drive=truthdb-target,serial=truthdb-target"
        );
        assert!(usb_stick(Path::new("/x.iso")).join(" ").contains("snapshot=on"));
        assert!(cdrom(Path::new("/x.iso")).join(" ").contains("readonly=on"));
    }

    #[test]
    fn markers_and_progress_are_found_on_the_serial_console() {
        let serial = "boot\n\x1b[0mTRUTHDB-OS-BOOTED version=1 kernel=6  \nTRUTHDB-OS-BOOTED version=2\n";
        assert_eq!(line_from(serial, "TRUTHDB-OS-BOOTED").as_deref(), Some("TRUTHDB-OS-BOOTED version=1 kernel=6"));
        assert_eq!(line_from(serial, "TRUTHDB-NOTHING"), None);

        let mut last = String::new();
        let serial = "truthdb-installer: [1/3] partitioning\nnoise\ntruthdb-installer: [2/3] copying \n";
        assert_eq!(installer_progress(serial, &mut last).as_deref(), Some("[2/3] copying"));
        assert_eq!(installer_progress(serial, &mut last), None, "unchanged progress is not news");
        assert_eq!(installer_progress("nothing yet", &mut last), None);
    }

    #[test]
    fn a_kvm_probe_is_reused_only_for_the_same_qemu_and_host_kernel() {
        let key = "qemu=QEMU emulator version 7.2.22\nhost-kernel=6.1.0-40-amd64";
        let probe = KvmProbe { works: false, how: "no kernel\nmessage in 60 s".into() };
        let text = format_kvm_probe(key, &probe);
        assert_eq!(
            parse_kvm_probe(&text, key),
            Some(KvmProbe { works: false, how: "no kernel message in 60 s".into() })
        );
        assert_eq!(parse_kvm_probe(&text, "qemu=QEMU emulator version 8.2.2\nhost-kernel=6.1.0-40-amd64"), None);
        assert_eq!(parse_kvm_probe("garbage", key), None);

        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("kvm-probe");
        assert_eq!(cached_kvm_probe(&cache, key), None);
        let works = KvmProbe { works: true, how: "marker in 20 s".into() };
        record_kvm_probe(&cache, key, &works).unwrap();
        assert_eq!(cached_kvm_probe(&cache, key), Some(works));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no partial file left");
    }
}
