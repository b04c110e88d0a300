//! DRM/KMS output: one dumb buffer on the first connected connector at its preferred mode.
//!
//! Works with any KMS driver, accelerated or not: simpledrm (the firmware's framebuffer),
//! bochs-drm (QEMU `-vga std`), virtio-gpu, and real GPUs' drivers. No libdrm: the `drm` crate
//! issues the ioctls itself.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use drm::Device as _;
use drm::buffer::{Buffer, DrmFourcc};
use drm::control::{
    ClipRect, Device as ControlDevice, ModeTypeFlags, connector, crtc, dumbbuffer::DumbBuffer, framebuffer,
};

use super::Output;
use crate::shell::PixelRect;

struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl ControlDevice for Card {}

pub struct Kms {
    card: Card,
    path: PathBuf,
    driver: String,
    connector: connector::Handle,
    size: (u32, u32),
    buffer: DumbBuffer,
    framebuffer: framebuffer::Handle,
    /// The CRTC as we found it, put back when the installer exits.
    saved: Option<crtc::Info>,
    /// simpledrm and virtio-gpu need DIRTYFB; drivers without it answer ENOSYS once.
    dirty_supported: bool,
}

/// The DRM card nodes (`/dev/dri/card*`), in name order.
pub fn cards() -> Vec<PathBuf> {
    let mut cards: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("card")))
                .collect()
        })
        .unwrap_or_default();
    cards.sort();
    cards
}

/// Opens the best card that has a connected screen: a native driver before simpledrm (which
/// only lives until the native driver takes the hardware over).
pub fn open_best() -> io::Result<Kms> {
    let mut errors = Vec::new();
    let mut opened: Vec<Kms> = Vec::new();
    for path in cards() {
        match Kms::open(&path) {
            Ok(kms) => opened.push(kms),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    opened.sort_by_key(|k| k.driver == "simpledrm");
    let mut opened = opened.into_iter();
    match opened.next() {
        Some(best) => Ok(best),
        None if errors.is_empty() => Err(io::Error::new(io::ErrorKind::NotFound, "no DRM device in /dev/dri")),
        None => Err(io::Error::other(errors.join("; "))),
    }
}

impl Kms {
    pub fn open(path: &Path) -> io::Result<Kms> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let card = Card(file);
        let driver = card.get_driver().map(|d| d.name().to_string_lossy().into_owned()).unwrap_or_default();
        // The first opener is master already; this only matters if someone else was.
        let _ = card.acquire_master_lock();
        let resources = card.resource_handles()?;
        let info = resources
            .connectors()
            .iter()
            .filter_map(|&h| card.get_connector(h, true).ok())
            .find(|c| c.state() == connector::State::Connected && !c.modes().is_empty())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no connected screen"))?;
        let mode = info
            .modes()
            .iter()
            .find(|m| m.mode_type().contains(ModeTypeFlags::PREFERRED))
            .copied()
            .unwrap_or(info.modes()[0]);
        let crtc = info
            .current_encoder()
            .and_then(|e| card.get_encoder(e).ok())
            .and_then(|e| e.crtc())
            .or_else(|| {
                info.encoders()
                    .iter()
                    .filter_map(|&e| card.get_encoder(e).ok())
                    .flat_map(|e| resources.filter_crtcs(e.possible_crtcs()))
                    .next()
            })
            .ok_or_else(|| io::Error::other("no CRTC can drive the connected screen"))?;
        let saved = card.get_crtc(crtc).ok();
        let (w, h) = mode.size();
        let size = (u32::from(w), u32::from(h));
        let buffer = card.create_dumb_buffer(size, DrmFourcc::Xrgb8888, 32)?;
        let framebuffer = card.add_framebuffer(&buffer, 24, 32)?;
        card.set_crtc(crtc, Some(framebuffer), (0, 0), &[info.handle()], Some(mode))?;
        Ok(Kms {
            card,
            path: path.to_owned(),
            driver,
            connector: info.handle(),
            size,
            buffer,
            framebuffer,
            saved,
            dirty_supported: true,
        })
    }
}

impl Output for Kms {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn describe(&self) -> String {
        format!("kms {} {} {}x{}", self.path.display(), self.driver, self.size.0, self.size.1)
    }

    fn with_pixels(&mut self, rects: &[PixelRect], draw: &mut dyn FnMut(&mut [u8], usize)) -> io::Result<()> {
        let pitch = self.buffer.pitch() as usize;
        {
            let mut mapping = self.card.map_dumb_buffer(&mut self.buffer)?;
            draw(&mut mapping, pitch);
        }
        if self.dirty_supported && !rects.is_empty() {
            let clips: Vec<ClipRect> = rects
                .iter()
                .map(|r| {
                    let c = |v: u32| v.min(u32::from(u16::MAX)) as u16;
                    ClipRect::new(c(r.x), c(r.y), c(r.x + r.width), c(r.y + r.height))
                })
                .collect();
            match self.card.dirty_framebuffer(self.framebuffer, &clips) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => self.dirty_supported = false,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Kms {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = self.card.set_crtc(
                saved.handle(),
                saved.framebuffer(),
                saved.position(),
                &[self.connector],
                saved.mode(),
            );
        }
        let _ = self.card.destroy_framebuffer(self.framebuffer);
        let _ = self.card.release_master_lock();
    }
}
