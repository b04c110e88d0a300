//! Mounts the install makes, undone in reverse order when the guard goes away, on success,
//! error or panic, so a failed install leaves nothing mounted.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::tool::{Log, Tool, io_error};

pub struct Mounts<'a> {
    log: &'a Log,
    stack: Vec<PathBuf>,
}

impl<'a> Mounts<'a> {
    pub fn new(log: &'a Log) -> Mounts<'a> {
        Mounts { log, stack: Vec::new() }
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
            Tool::new("umount").arg(target.to_string_lossy()).run(self.log)?;
            self.stack.remove(at);
        }
        Ok(())
    }

    /// Unmounts everything, in reverse order.
    pub fn unmount_all(&mut self) -> Result<()> {
        while let Some(last) = self.stack.pop() {
            Tool::new("umount").arg(last.to_string_lossy()).run(self.log)?;
        }
        Ok(())
    }
}

impl Drop for Mounts<'_> {
    fn drop(&mut self) {
        // Best effort after an error: a busy mount is detached lazily rather than left behind.
        while let Some(last) = self.stack.pop() {
            if Tool::new("umount").arg(last.to_string_lossy()).run(self.log).is_err() {
                let _ = Tool::new("umount").arg("--lazy").arg(last.to_string_lossy()).run(self.log);
            }
        }
    }
}
