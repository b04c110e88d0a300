//! The virtual terminal under the installer: its keyboard off (keys typed into the installer
//! must not also reach the console) and in graphics mode (the kernel leaves the screen to us).
//! Both are put back when the guard drops, also when the installer panics (unwinding).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

// <linux/kd.h>
const KDSETMODE: libc::c_ulong = 0x4B3A;
const KD_TEXT: libc::c_int = 0x00;
const KD_GRAPHICS: libc::c_int = 0x01;
const KDGKBMODE: libc::c_ulong = 0x4B44;
const KDSKBMODE: libc::c_ulong = 0x4B45;
const K_OFF: libc::c_int = 0x04;

pub struct VtGuard {
    tty: File,
    keyboard_mode: libc::c_int,
}

impl VtGuard {
    pub fn take(path: &Path) -> io::Result<VtGuard> {
        let tty = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = tty.as_raw_fd();
        let mut keyboard_mode: libc::c_int = 0;
        // SAFETY: kd ioctls on a file descriptor we own; KDGKBMODE writes one int.
        unsafe {
            if libc::ioctl(fd, KDGKBMODE, &mut keyboard_mode) < 0
                || libc::ioctl(fd, KDSKBMODE, K_OFF) < 0
                || libc::ioctl(fd, KDSETMODE, KD_GRAPHICS) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(VtGuard { tty, keyboard_mode })
    }
}

impl Drop for VtGuard {
    fn drop(&mut self) {
        let fd = self.tty.as_raw_fd();
        // SAFETY: as in take().
        unsafe {
            libc::ioctl(fd, KDSETMODE, KD_TEXT);
            libc::ioctl(fd, KDSKBMODE, self.keyboard_mode);
        }
    }
}
