//! The TruthDB OS graphical installer: the screens ([`app`]) as an iced program, driven here
//! without winit ([`shell`]), drawn on DRM/KMS or /dev/fb0 ([`display`]), with keyboard and
//! pointer from libinput and xkbcommon ([`input`]) on a VT in graphics mode ([`vt`]). The
//! installing itself is the engine's (`truthdb-installer`).

pub mod app;
pub mod bench;
pub mod display;
pub mod engine;
pub mod input;
pub mod shell;
pub mod vt;

/// The installer's version: the image's (the engine's).
pub const VERSION: &str = truthdb_installer::VERSION;
