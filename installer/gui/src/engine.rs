//! Runs the installer engine on a thread while the UI keeps drawing. Its progress events go
//! to the UI loop as messages, and every event is also printed on the console (serial), as
//! the unattended install prints them, with the same final `TRUTHDB-INSTALL-*` line.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use truthdb_installer::block_devices::Disk;
use truthdb_installer::config::InstallConfig;
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

/// Starts the install; the handle lets the front end wait for it: whatever happens to the
/// UI, the process must not exit while the install writes the disk.
pub fn start(disk: Disk, config: InstallConfig, spec: ImageSpec, mailbox: Mailbox) -> std::thread::JoinHandle<()> {
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
    })
}

/// Runs the front end's loop, `ui`, which may start the install into the slot it is given,
/// and however the loop ends (done, an input or display error, a failed rescan, a panic),
/// waits for an install under way to finish or fail by itself before passing that on:
/// exiting would kill the install halfway through writing the disk, its mounts left behind.
/// The loop's own state (display, VT) is dropped before the wait, so the console shows the
/// engine's progress meanwhile.
pub fn outlive_install<T>(ui: impl FnOnce(&mut Option<JoinHandle<()>>) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut install = None;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| ui(&mut install)));
    if let Some(thread) = install.take().filter(|thread| !thread.is_finished()) {
        let why = match &outcome {
            Ok(Ok(_)) => "the installer is ending".to_owned(),
            Ok(Err(e)) => format!("error: {e:#}"),
            Err(_) => "the installer crashed".to_owned(),
        };
        println!("truthdb-installer-gui: {why}; waiting for the install under way to finish before exiting");
        let _ = thread.join();
        println!("truthdb-installer-gui: the install has ended; exiting");
    }
    outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn an_install_under_way_outlives_an_error_or_a_panic_of_the_ui() {
        for panics in [false, true] {
            let ended = Arc::new(AtomicBool::new(false));
            let install_ended = ended.clone();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                outlive_install(|install| -> anyhow::Result<()> {
                    *install = Some(std::thread::spawn(move || {
                        std::thread::sleep(Duration::from_millis(300));
                        install_ended.store(true, Ordering::SeqCst);
                    }));
                    if panics {
                        panic!("the UI crashed");
                    }
                    anyhow::bail!("the input devices went away")
                })
            }));
            assert!(ended.load(Ordering::SeqCst), "returned before the install ended (panic: {panics})");
            match result {
                Err(_) => assert!(panics, "only the panic is passed on as one"),
                Ok(outcome) => assert!(!panics && outcome.unwrap_err().to_string().contains("went away")),
            }
        }
    }
}
