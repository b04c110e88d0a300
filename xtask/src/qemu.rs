//! A QEMU virtual machine for the install test: UEFI (OVMF, a private copy of its variables),
//! single-threaded TCG, serial console to a log file, optional user networking with ports
//! forwarded from 127.0.0.1, and a way to wait for what the serial console says.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use crate::progress::format_duration;
use crate::run::{Cmd, tail};

pub struct VmSpec {
    /// Names the log files: `<name>.serial.log`, `<name>.qemu.log`.
    pub name: String,
    pub memory_mib: u32,
    /// `-drive`/`-device` arguments for the machine's disks.
    pub storage: Vec<String>,
    /// (host port on 127.0.0.1, guest port) pairs; none: no network card.
    pub forwards: Vec<(u16, u16)>,
    pub log_dir: PathBuf,
    /// A QMP control socket (screendump, key presses), for the graphical installer's test.
    pub qmp_socket: Option<PathBuf>,
    /// A standard VGA adapter (`-vga std`: the firmware's framebuffer, then bochs-drm); without
    /// one the machine has no display at all.
    pub graphics: bool,
}

pub struct Vm {
    handle: duct::Handle,
    pub serial_log: PathBuf,
    qemu_log: PathBuf,
    started: Instant,
    _vars: tempfile::TempDir,
}

/// A free TCP port on 127.0.0.1 (free when asked; QEMU binds it right after).
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

impl Vm {
    pub fn start(spec: &VmSpec) -> Result<Vm> {
        std::fs::create_dir_all(&spec.log_dir)?;
        let serial_log = spec.log_dir.join(format!("{}.serial.log", spec.name));
        let qemu_log = spec.log_dir.join(format!("{}.qemu.log", spec.name));
        let _ = std::fs::remove_file(&serial_log);
        let vars_dir = tempfile::tempdir()?;
        let (code, template) = crate::boot_test::ovmf_files()?;
        let vars = vars_dir.path().join("OVMF_VARS.fd");
        std::fs::copy(&template, &vars).with_context(|| format!("copying {}", template.display()))?;
        let mut cmd = Cmd::new("qemu-system-x86_64")
            // Single-threaded TCG, as in the boot test (see boot_test.rs for why).
            .args(["-machine", "q35", "-accel", "tcg,thread=single", "-smp", "2"])
            .args(["-m", &spec.memory_mib.to_string()])
            .args(["-display", "none", "-vga", if spec.graphics { "std" } else { "none" }])
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,unit=1,file={}", vars.display()))
            .args(&spec.storage);
        if let Some(socket) = &spec.qmp_socket {
            let _ = std::fs::remove_file(socket);
            cmd = cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", socket.display()));
        }
        if spec.forwards.is_empty() {
            cmd = cmd.args(["-net", "none"]);
        } else {
            let forwards: Vec<String> =
                spec.forwards.iter().map(|(host, guest)| format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}")).collect();
            cmd = cmd
                .arg("-netdev")
                .arg(format!("user,id=net0{}", forwards.concat()))
                .args(["-device", "virtio-net-pci,netdev=net0"]);
        }
        let handle = cmd.start_logged(&qemu_log)?;
        Ok(Vm { handle, serial_log, qemu_log, started: Instant::now(), _vars: vars_dir })
    }

    pub fn serial(&self) -> String {
        std::fs::read(&self.serial_log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Polls the serial console until `check(serial, exited)` decides. Fails at once on a
    /// guest kernel panic, when QEMU exits and `check` does not accept that, or at `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str, bool) -> Option<Result<T>>,
    ) -> Result<T> {
        loop {
            let exited = self.handle.try_wait()?.is_some();
            let serial = self.serial();
            if let Some(decided) = check(&serial, exited) {
                return decided.with_context(|| self.context(what, &serial));
            }
            let failure = if serial.contains("Kernel panic - not syncing") {
                Some("the guest kernel panicked".to_owned())
            } else if exited {
                let said = std::fs::read_to_string(&self.qemu_log).unwrap_or_default();
                Some(format!("QEMU exited first; it said:\n{}", tail(&said, 10)))
            } else if self.started.elapsed() > timeout {
                Some(format!("nothing after {}", format_duration(timeout)))
            } else {
                None
            };
            if let Some(failure) = failure {
                return Err(anyhow!("{failure}")).with_context(|| self.context(what, &serial));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn context(&self, what: &str, serial: &str) -> String {
        format!("waiting for {what}; serial console ({}), last lines:\n{}", self.serial_log.display(), tail(serial, 25))
    }

    /// Stops the machine and reaps QEMU.
    pub fn kill(&self) {
        let _ = self.handle.kill();
        let _ = self.handle.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A virtio disk with a serial number (how install configs select it).
pub fn virtio_disk(file: &Path, format: &str, serial: &str) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("if=none,id={serial},format={format},file={}", file.display()),
        "-device".into(),
        format!("virtio-blk-pci,drive={serial},serial={serial}"),
    ]
}

/// How many VMs the tests run side by side: single-threaded TCG keeps one host core busy per
/// VM, so one per core (two on the 2-core machines CI runs on), at most four.
pub fn vms_at_once() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 4)
}

/// Runs `job` for every item at once, each on its own thread, and returns the results in
/// order. (QEMU started by a job dies with the thread that started it: see
/// [`crate::run::Cmd::die_with_parent`]; the thread lives until its job is done.)
pub fn in_parallel<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> Result<R> + Sync) -> Vec<Result<R>> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.iter().map(|item| scope.spawn(|| job(item))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a VM's thread panicked"))))
            .collect()
    })
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

/// The ISO written to a USB stick (writes go to a temporary overlay).
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
