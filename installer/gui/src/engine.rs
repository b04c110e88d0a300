//! Runs the installer engine on a thread while the UI keeps drawing. Its progress events go
//! to the UI loop as messages, and every event is also printed on the console (serial), as
//! the unattended install prints them, with the same final `TRUTHDB-INSTALL-*` line.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::Sender;

use truthdb_installer::config::InstallConfig;
use truthdb_installer::disks::Disk;
use truthdb_installer::install::{self, InstallRequest};
use truthdb_installer::spec::ImageSpec;
use truthdb_installer::tool::Log;

use crate::app::{LOG_PATH, Msg};

/// Sends messages to the UI loop and wakes it (it polls the other end of the socket).
#[derive(Clone)]
pub struct Mailbox {
    pub sender: Sender<Msg>,
    pub wake: std::sync::Arc<UnixStream>,
}

impl Mailbox {
    pub fn send(&self, msg: Msg) {
        if self.sender.send(msg).is_ok() {
            let _ = (&*self.wake).write(&[1]);
        }
    }
}

pub fn start(disk: Disk, config: InstallConfig, spec: ImageSpec, mailbox: Mailbox) {
    std::thread::spawn(move || {
        // A panic here would leave the progress screen up forever: it becomes the failure
        // screen instead (the panic hook has already said it on the console).
        let result =
            std::panic::catch_unwind(AssertUnwindSafe(|| run(disk, config, spec, &mailbox))).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                println!("TRUTHDB-INSTALL-FAILED: the installer crashed: {what}");
                Err(format!("the installer crashed: {what}"))
            });
        mailbox.send(Msg::Finished(result));
    });
}

fn run(disk: Disk, config: InstallConfig, spec: ImageSpec, mailbox: &Mailbox) -> Result<String, String> {
    let log = Log::create(Path::new(LOG_PATH)).map_err(|e| e.to_string())?;
    let request = InstallRequest::from_live_medium(config, disk, spec);
    println!("truthdb-installer-gui: installing to {}", request.disk.describe());
    let result = install::install(&request, &log, &mut |event| {
        println!("truthdb-installer: {event}");
        mailbox.send(Msg::Progress(event));
    });
    match result {
        Ok(report) => {
            println!(
                "TRUTHDB-INSTALL-DONE disk={} kernel={} version={}",
                request.disk.path, report.kernel_release, request.spec.version
            );
            Ok(report.kernel_release)
        }
        Err(e) => {
            log.line(&format!("INSTALL FAILED: {e}"));
            println!("TRUTHDB-INSTALL-FAILED: {e}");
            Err(e.to_string())
        }
    }
}
