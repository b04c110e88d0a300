//! Mounts the install makes, undone in reverse order when the guard goes away, on success,
//! error or panic, so a failed install leaves nothing mounted.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::tool::{Log, Tool, io_error};

/// Runs `umount [--lazy] target` (a parameter so the tests can stand in for it).
type Umount = fn(&Log, &Path, bool) -> Result<()>;

fn umount(log: &Log, target: &Path, lazy: bool) -> Result<()> {
    let tool = if lazy { Tool::new("umount").arg("--lazy") } else { Tool::new("umount") };
    tool.arg(target.to_string_lossy()).run(log).map(drop)
}

pub struct Mounts<'a> {
    log: &'a Log,
    stack: Vec<PathBuf>,
    umount: Umount,
}

impl<'a> Mounts<'a> {
    pub fn new(log: &'a Log) -> Mounts<'a> {
        Mounts { log, stack: Vec::new(), umount }
    }

    /// `mount [options] source target`, creating `target` first.
    pub fn mount(&mut self, source: &str, target: &Path, options: &[&str]) -> Result<()> {
        std::fs::create_dir_all(target).map_err(|e| io_error(target, e))?;
        Tool::new("mount").args(options).arg(source).arg(target.to_string_lossy()).run(self.log)?;
        self.stack.push(target.to_owned());
        Ok(())
    }

    /// The kernel file systems a program run with chroot in `root` expects.
    pub fn chroot_api(&mut self, root: &Path) -> Result<()> {
        self.mount("proc", &root.join("proc"), &["-t", "proc"])?;
        self.mount("sysfs", &root.join("sys"), &["-t", "sysfs"])?;
        self.mount("/dev", &root.join("dev"), &["--bind"])?;
        self.mount("devpts", &root.join("dev/pts"), &["-t", "devpts"])?;
        self.mount("tmpfs", &root.join("run"), &["-t", "tmpfs", "-o", "mode=0755"])?;
        Ok(())
    }

    /// Unmounts one mount made earlier (nothing may be mounted below it).
    pub fn unmount(&mut self, target: &Path) -> Result<()> {
        if let Some(at) = self.stack.iter().rposition(|m| m == target) {
            (self.umount)(self.log, target, false)?;
            self.stack.remove(at);
        }
        Ok(())
    }

    /// Unmounts everything, in reverse order. A mount that fails to go stays on the stack, so
    /// the guard still detaches it (and those under it) when it goes away.
    pub fn unmount_all(&mut self) -> Result<()> {
        while let Some(last) = self.stack.last() {
            (self.umount)(self.log, last, false)?;
            self.stack.pop();
        }
        Ok(())
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        // Best effort after an error: a busy mount is detached lazily rather than left behind.
        while let Some(last) = self.stack.pop() {
            if (self.umount)(self.log, &last, false).is_err() {
                let _ = (self.umount)(self.log, &last, true);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// The umount calls made: (target, lazy).
        static CALLS: RefCell<Vec<(String, bool)>> = const { RefCell::new(Vec::new()) };
    }

    /// A umount that fails (but for `--lazy`) on a mount point called "busy".
    fn fake_umount(_log: &Log, target: &Path, lazy: bool) -> Result<()> {
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        CALLS.with(|c| c.borrow_mut().push((name.clone(), lazy)));
        if name == "busy" && !lazy {
            return Err(crate::Error::Tool { command: format!("umount {name}"), message: "target is busy".into() });
        }
        Ok(())
    }

    fn calls() -> Vec<(String, bool)> {
        CALLS.with(|c| c.borrow_mut().drain(..).collect())
    }

    fn mounts<'a>(log: &'a Log, names: &[&str]) -> Mounts<'a> {
        Mounts { log, stack: names.iter().map(|n| PathBuf::from("/run/t").join(n)).collect(), umount: fake_umount }
    }

    fn log() -> (tempfile::TempDir, Log) {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::create(&dir.path().join("log")).unwrap();
        (dir, log)
    }

    #[test]
    fn a_failed_unmount_is_left_for_the_guard_which_detaches_it() {
        let (_dir, log) = log();
        let mut m = mounts(&log, &["source", "busy", "data"]);
        assert!(m.unmount_all().is_err());
        drop(m);
        let busy_then_lazy = [("busy".to_owned(), false), ("busy".to_owned(), true)];
        let made = calls();
        assert!(made.windows(2).any(|w| w == busy_then_lazy), "{made:?}");
        assert_eq!(made.last().unwrap(), &("source".to_owned(), false), "{made:?}");
    }

    #[test]
    fn a_panic_unmounts_everything_in_reverse_order() {
        let (_dir, log) = log();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _m = mounts(&log, &["source", "target", "data"]);
            panic!("the install broke");
        }));
        assert!(result.is_err());
        let names: Vec<String> = calls().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["data", "target", "source"]);
    }

    #[test]
    fn an_error_return_unmounts_everything() {
        let (_dir, log) = log();
        let install = || -> Result<()> {
            let _m = mounts(&log, &["source", "busy", "target"]);
            Err(crate::Error::Tool { command: "unsquashfs".into(), message: "no space".into() })
        };
        assert!(install().is_err());
        let made = calls();
        assert_eq!(
            made,
            [("target".into(), false), ("busy".into(), false), ("busy".into(), true), ("source".into(), false)]
        );
    }
}
