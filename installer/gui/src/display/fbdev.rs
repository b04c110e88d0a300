//! The fallback output: the legacy framebuffer device (`/dev/fb0`), for when no DRM device can
//! be driven. Only 32-bit XRGB layouts are accepted; anything else is refused by name.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::Output;
use crate::shell::PixelRect;

// <linux/fb.h>
const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;

#[repr(C)]
#[derive(Default)]
struct Bitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

#[repr(C)]
#[derive(Default)]
struct VarScreenInfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: Bitfield,
    green: Bitfield,
    blue: Bitfield,
    transp: Bitfield,
    /// nonstd .. colorspace and reserved: not needed here.
    rest: [u32; 20],
}

// The kernel's sizes on 64-bit: a wrong layout would let the ioctl write past the struct.
const _: () = assert!(std::mem::size_of::<VarScreenInfo>() == 160);
const _: () = assert!(std::mem::size_of::<FixScreenInfo>() == 80);

#[repr(C)]
#[derive(Default)]
struct FixScreenInfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

pub struct Fbdev {
    _file: File,
    path: PathBuf,
    map: *mut u8,
    map_len: usize,
    pitch: usize,
    size: (u32, u32),
}

impl Fbdev {
    pub fn open(path: &Path) -> io::Result<Fbdev> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let fd = file.as_raw_fd();
        let mut var = VarScreenInfo::default();
        let mut fix = FixScreenInfo::default();
        // SAFETY: the kernel fills structs laid out as <linux/fb.h> declares them.
        if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO, &mut var) } < 0
            || unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO, &mut fix) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        if var.bits_per_pixel != 32 || var.red.offset != 16 || var.green.offset != 8 || var.blue.offset != 0 {
            return Err(io::Error::other(format!(
                "{}: {} bits per pixel with red at bit {}: only 32-bit XRGB is supported",
                path.display(),
                var.bits_per_pixel,
                var.red.offset
            )));
        }
        let pitch = fix.line_length as usize;
        let map_len = pitch * var.yres as usize;
        if map_len > fix.smem_len as usize {
            return Err(io::Error::other(format!("{}: its memory is smaller than one screen", path.display())));
        }
        // SAFETY: a shared, writable mapping of the device's memory, unmapped in Drop.
        let map = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Fbdev { _file: file, path: path.to_owned(), map: map.cast(), map_len, pitch, size: (var.xres, var.yres) })
    }
}

impl Output for Fbdev {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn describe(&self) -> String {
        format!("fbdev {} {}x{}", self.path.display(), self.size.0, self.size.1)
    }

    fn with_pixels(&mut self, _rects: &[PixelRect], draw: &mut dyn FnMut(&mut [u8], usize)) -> io::Result<()> {
        // SAFETY: the mapping is map_len bytes and lives as long as self.
        let pixels = unsafe { std::slice::from_raw_parts_mut(self.map, self.map_len) };
        draw(pixels, self.pitch);
        Ok(())
    }
}

impl Drop for Fbdev {
    fn drop(&mut self) {
        // SAFETY: unmapping what open() mapped.
        unsafe { libc::munmap(self.map.cast(), self.map_len) };
    }
}
