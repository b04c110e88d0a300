//! Advisory locks (`flock`), so that two runs at once wait for each other instead of deleting
//! each other's build directory or cache entries: one lock per project work directory
//! (`target/truthdb-os/.lock`, taken by every command that writes there) and one per cache
//! entry while it is made or reused (`.<entry>.lock` beside it).
//!
//! The kernel drops a flock when its holder dies, however it dies: a killed run never leaves
//! a stale lock behind.

use std::fs::File;
#[cfg(unix)]
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

/// `--no-wait`: fail at once instead of waiting for another run's lock.
static NO_WAIT: AtomicBool = AtomicBool::new(false);

pub fn set_no_wait(no_wait: bool) {
    NO_WAIT.store(no_wait, Ordering::Relaxed);
}

/// A held lock; released when dropped (the file is closed).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the exclusive lock `path` (created if missing) for `what`. When another run holds
/// it, waits and says so, or fails naming both with `--no-wait`.
pub fn acquire(path: &Path, what: &str) -> Result<Lock> {
    take(path, what, LOCK_EX)
}

/// Takes `path` shared: any number of shared holders at once, none beside an exclusive one.
pub fn acquire_shared(path: &Path, what: &str) -> Result<Lock> {
    take(path, what, LOCK_SH)
}

/// Takes `path` exclusively if no one holds it; `None` at once if someone does.
pub fn try_acquire(path: &Path) -> Result<Option<Lock>> {
    let file = open(path)?;
    Ok(flock(&file, LOCK_EX | LOCK_NB).is_ok().then_some(Lock { _file: file }))
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = File::options();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path).with_context(|| format!("opening lock file {}", path.display()))
}

fn take(path: &Path, what: &str, mode: i32) -> Result<Lock> {
    let file = open(path)?;
    if flock(&file, mode | LOCK_NB).is_err() {
        if NO_WAIT.load(Ordering::Relaxed) {
            bail!(
                "{what} is in use by another run (lock {} is held); wait for it to finish, or run without --no-wait",
                path.display()
            );
        }
        eprintln!("waiting for another run to finish with {what} (lock {})...", path.display());
        flock(&file, mode).with_context(|| format!("waiting for lock {}", path.display()))?;
    }
    Ok(Lock { _file: file })
}

/// The lock of a project's work directory (`target/truthdb-os`).
pub fn work_dir(work_dir: &Path) -> Result<Lock> {
    acquire(&work_dir.join(".lock"), &format!("the work directory {}", work_dir.display()))
}

/// The locks of a VM test: the work directory shared (VM tests run side by side; a build,
/// which takes it exclusively, waits for them and they for it) and its own directory
/// `work_dir/<name>` exclusively (two runs of one test would share their disks and logs).
pub fn work_subdir(work_dir: &Path, name: &str) -> Result<[Lock; 2]> {
    let shared = acquire_shared(&work_dir.join(".lock"), &format!("the work directory {}", work_dir.display()))?;
    let own = acquire(&work_dir.join(format!(".{name}.lock")), &format!("{}", work_dir.join(name).display()))?;
    Ok([shared, own])
}

/// The lock of the cache entry `entry` (a file or directory that may not exist yet).
pub fn cache_entry(entry: &Path) -> Result<Lock> {
    let name = entry.file_name().context("cache entry has no name")?.to_string_lossy();
    let parent = entry.parent().context("cache entry has no parent")?;
    acquire(&parent.join(format!(".{name}.lock")), &format!("the cache entry {}", entry.display()))
}

#[cfg(unix)]
use libc::{LOCK_EX, LOCK_NB, LOCK_SH};

/// Not a Unix host: xtask only starts the builder container there, and the build inside it
/// takes its locks on Linux; the host side writes nothing another run could be using.
#[cfg(not(unix))]
const LOCK_EX: i32 = 2;
#[cfg(not(unix))]
const LOCK_NB: i32 = 4;
#[cfg(not(unix))]
const LOCK_SH: i32 = 1;

#[cfg(not(unix))]
fn flock(_file: &File, _operation: i32) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn flock(file: &File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: a plain syscall on a descriptor this function borrows.
        if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_second_taker_waits_for_the_first_or_fails_with_no_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = acquire(&path, "the test directory").unwrap();

        // flock locks belong to open files, so a second open in this process conflicts as a
        // second process would.
        set_no_wait(true);
        let msg = format!("{:#}", acquire(&path, "the test directory").unwrap_err());
        set_no_wait(false);
        assert!(msg.contains("the test directory is in use by another run") && msg.contains(".lock"), "{msg}");

        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            drop(first);
        });
        let start = Instant::now();
        let second = acquire(&path, "the test directory").unwrap();
        assert!(start.elapsed() >= Duration::from_millis(500), "did not wait for the holder");
        released.join().unwrap();
        drop(second);
        acquire(&path, "the test directory").unwrap();
    }

    #[test]
    fn shared_holders_go_together_and_keep_an_exclusive_one_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = acquire_shared(&path, "the test directory").unwrap();
        let second = acquire_shared(&path, "the test directory").unwrap();
        assert!(try_acquire(&path).unwrap().is_none(), "exclusive beside two shared holders");
        drop((first, second));
        let exclusive = try_acquire(&path).unwrap().expect("free once the shared holders are gone");
        // (Not through --no-wait: the other test here switches that flag.)
        let reader = open(&path).unwrap();
        assert!(flock(&reader, LOCK_SH | LOCK_NB).is_err(), "shared beside an exclusive holder");
        drop(exclusive);
        assert!(flock(&reader, LOCK_SH | LOCK_NB).is_ok());
    }
}
