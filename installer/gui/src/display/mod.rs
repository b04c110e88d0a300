//! Where frames go: a DRM/KMS dumb buffer ([`kms`]) or, when no DRM device can be driven, the
//! legacy framebuffer `/dev/fb0` ([`fbdev`]). Both are plain XRGB8888 memory with a row pitch;
//! [`present`] copies the damaged rows of the shadow frame into it and draws the pointer.

pub mod fbdev;
pub mod kms;

use std::io;

use crate::shell::PixelRect;

/// Scan-out memory the installer can draw into.
pub trait Output {
    /// Width and height in pixels.
    fn size(&self) -> (u32, u32);
    /// What it is, for the log: `kms card1 bochs-drm 1280x800`.
    fn describe(&self) -> String;
    /// Gives `draw` the mapped pixels (XRGB8888 rows `pitch` bytes apart), then tells the
    /// device which rectangles changed (DIRTYFB: simpledrm and virtio-gpu copy on it).
    fn with_pixels(&mut self, rects: &[PixelRect], draw: &mut dyn FnMut(&mut [u8], usize)) -> io::Result<()>;
}

/// The software pointer: an arrow, 12x19, black outline (`#`) and white inside (`.`).
const ARROW: [&str; 19] = [
    "#           ",
    "##          ",
    "#.#         ",
    "#..#        ",
    "#...#       ",
    "#....#      ",
    "#.....#     ",
    "#......#    ",
    "#.......#   ",
    "#........#  ",
    "#.........# ",
    "#......#####",
    "#...#..#    ",
    "#..# #..#   ",
    "#.#  #..#   ",
    "##    #..#  ",
    "#     #..#  ",
    "       #..# ",
    "       ###  ",
];
pub const CURSOR_WIDTH: u32 = 12;
pub const CURSOR_HEIGHT: u32 = 19;

/// The pixels the pointer covers at `at`.
pub fn cursor_rect(at: (u32, u32), screen: (u32, u32)) -> Option<PixelRect> {
    let (x, y) = at;
    let width = CURSOR_WIDTH.min(screen.0.saturating_sub(x));
    let height = CURSOR_HEIGHT.min(screen.1.saturating_sub(y));
    (width > 0 && height > 0).then_some(PixelRect { x, y, width, height })
}

/// Copies `rects` of the shadow `frame` (`width` pixels a row) to the output and draws the
/// pointer on top when it is in one of them (the shadow never holds the pointer, so moving
/// it only needs its old and new rectangles copied again).
pub fn present(
    output: &mut dyn Output,
    frame: &[u32],
    width: u32,
    rects: &[PixelRect],
    cursor: Option<(u32, u32)>,
) -> io::Result<()> {
    let screen = output.size();
    output.with_pixels(rects, &mut |mapping, pitch| {
        for r in rects {
            for y in r.y..r.y + r.height {
                let src = &frame[(y * width + r.x) as usize..(y * width + r.x + r.width) as usize];
                let start = y as usize * pitch + r.x as usize * 4;
                let dst = &mut mapping[start..start + r.width as usize * 4];
                dst.copy_from_slice(bytemuck::cast_slice(src));
            }
        }
        if let Some((cx, cy)) = cursor {
            for (dy, line) in ARROW.iter().enumerate() {
                let y = cy + dy as u32;
                if y >= screen.1 {
                    break;
                }
                for (dx, c) in line.bytes().enumerate() {
                    let x = cx + dx as u32;
                    let colour: u32 = match c {
                        b'#' => 0xff00_0000,
                        b'.' => 0xffff_ffff,
                        _ => continue,
                    };
                    if x < screen.0 {
                        let at = y as usize * pitch + x as usize * 4;
                        mapping[at..at + 4].copy_from_slice(&colour.to_le_bytes());
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory-backed output with a pitch wider than the rows, as dumb buffers may have.
    struct Memory {
        pixels: Vec<u8>,
        pitch: usize,
        size: (u32, u32),
    }

    impl Output for Memory {
        fn size(&self) -> (u32, u32) {
            self.size
        }
        fn describe(&self) -> String {
            "memory".into()
        }
        fn with_pixels(&mut self, _: &[PixelRect], draw: &mut dyn FnMut(&mut [u8], usize)) -> io::Result<()> {
            draw(&mut self.pixels, self.pitch);
            Ok(())
        }
    }

    #[test]
    fn present_copies_only_the_damaged_rows_at_the_pitch_and_draws_the_pointer() {
        let (w, h) = (40u32, 30u32);
        let frame: Vec<u32> = (0..w * h).map(|i| 0xff00_0000 | i).collect();
        let mut out = Memory { pixels: vec![0; 64 * 4 * h as usize], pitch: 64 * 4, size: (w, h) };
        let rect = PixelRect { x: 2, y: 3, width: 5, height: 4 };
        present(&mut out, &frame, w, &[rect], Some((30, 20))).unwrap();
        let px = |x: usize, y: usize| {
            u32::from_le_bytes(out.pixels[y * 256 + x * 4..y * 256 + x * 4 + 4].try_into().unwrap())
        };
        assert_eq!(px(2, 3), 0xff00_0000 | (3 * 40 + 2));
        assert_eq!(px(6, 6), 0xff00_0000 | (6 * 40 + 6));
        assert_eq!(px(7, 6), 0, "outside the damage");
        assert_eq!(px(2, 7), 0, "outside the damage");
        assert_eq!(px(30, 20), 0xff00_0000, "pointer outline");
        assert_eq!(px(31, 22), 0xffff_ffff, "pointer inside");
        assert_eq!(cursor_rect((35, 25), (w, h)), Some(PixelRect { x: 35, y: 25, width: 5, height: 5 }));
    }
}
