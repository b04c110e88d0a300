//! Keyboard and pointer: devices from libinput (hotplug, pointer acceleration, QEMU's absolute
//! tablet, touchpads), key symbols from xkbcommon in the chosen layout, turned into iced events.
//! libinput does not repeat keys; [`Input`] does (600 ms, then 25 per second). Touchpads get
//! tap-to-click.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use iced_core::keyboard::{self, Key, Modifiers, key::Named};
use iced_core::{Event, mouse};
use input::event::device::DeviceEvent::Added as DeviceAdded;
use input::event::keyboard::{KeyState, KeyboardEventTrait};
use input::event::pointer::{Axis, ButtonState, PointerEvent, PointerScrollEvent};
use input::event::{Event as DeviceEvent, EventTrait, KeyboardEvent};
use input::{Libinput, LibinputInterface};
use xkbcommon::xkb;

use crate::shell::Shell;

const REPEAT_DELAY: Duration = Duration::from_millis(600);
const REPEAT_INTERVAL: Duration = Duration::from_millis(40);

/// libinput opens device nodes through us (we run as root in the live system).
struct DeviceOpener;

impl LibinputInterface for DeviceOpener {
    fn open_restricted(&mut self, path: &Path, flags: i32) -> Result<OwnedFd, i32> {
        let access = flags & libc::O_ACCMODE;
        OpenOptions::new()
            .custom_flags(flags)
            .read(access == libc::O_RDONLY || access == libc::O_RDWR)
            .write(access == libc::O_WRONLY || access == libc::O_RDWR)
            .open(path)
            .map(OwnedFd::from)
            .map_err(|e| -e.raw_os_error().unwrap_or(libc::EIO))
    }

    fn close_restricted(&mut self, fd: OwnedFd) {
        drop(File::from(fd));
    }
}

/// A keyboard layout: xkb keymap and state (modifiers, locks).
pub struct Keyboard {
    keymap: xkb::Keymap,
    state: xkb::State,
}

impl Keyboard {
    /// `layout` is an xkb layout name (`us`, `de`, ...); needs xkb-data's files.
    pub fn new(layout: &str) -> Result<Keyboard> {
        let context = xkb::Context::new(xkb::CONTEXT_NO_FLAGS);
        let keymap = xkb::Keymap::new_from_names(&context, "", "pc105", layout, "", None, xkb::KEYMAP_COMPILE_NO_FLAGS)
            .ok_or_else(|| {
                anyhow!("keyboard layout {layout:?}: xkbcommon could not compile it (is xkb-data installed?)")
            })?;
        let state = xkb::State::new(&keymap);
        Ok(Keyboard { keymap, state })
    }

    /// One key going down or up (`code` is the evdev key code), as iced events.
    pub fn key(&mut self, code: u32, pressed: bool, repeat: bool) -> Vec<Event> {
        let keycode = xkb::Keycode::new(code + 8);
        // Symbol and text come from the state before this key changes it (Shift's own press
        // is not shifted).
        let sym = self.state.key_get_one_sym(keycode);
        let utf8 = self.state.key_get_utf8(keycode);
        if !repeat {
            let direction = if pressed { xkb::KeyDirection::Down } else { xkb::KeyDirection::Up };
            self.state.update_key(keycode, direction);
        }
        let key = match named(sym.raw()) {
            Some(named) => Key::Named(named),
            None if !utf8.is_empty() && !utf8.chars().any(char::is_control) => Key::Character(utf8.as_str().into()),
            None => Key::Unidentified,
        };
        let modifiers = self.modifiers();
        let physical = keyboard::key::Physical::Unidentified(keyboard::key::NativeCode::Xkb(keycode.raw()));
        let event = if pressed {
            let text = matches!(key, Key::Character(_)).then(|| utf8.as_str().into());
            keyboard::Event::KeyPressed {
                key: key.clone(),
                modified_key: key,
                physical_key: physical,
                location: keyboard::Location::Standard,
                modifiers,
                text,
                repeat,
            }
        } else {
            keyboard::Event::KeyReleased {
                key: key.clone(),
                modified_key: key,
                physical_key: physical,
                location: keyboard::Location::Standard,
                modifiers,
            }
        };
        // Widgets read Ctrl/Shift only from ModifiersChanged.
        vec![Event::Keyboard(keyboard::Event::ModifiersChanged(modifiers)), Event::Keyboard(event)]
    }

    pub fn repeats(&self, code: u32) -> bool {
        self.keymap.key_repeats(xkb::Keycode::new(code + 8))
    }

    fn modifiers(&self) -> Modifiers {
        let active = |name| self.state.mod_name_is_active(name, xkb::STATE_MODS_EFFECTIVE);
        let mut m = Modifiers::empty();
        for (name, flag) in [
            (xkb::MOD_NAME_SHIFT, Modifiers::SHIFT),
            (xkb::MOD_NAME_CTRL, Modifiers::CTRL),
            (xkb::MOD_NAME_ALT, Modifiers::ALT),
            (xkb::MOD_NAME_LOGO, Modifiers::LOGO),
        ] {
            if active(name) {
                m |= flag;
            }
        }
        m
    }
}

fn named(sym: u32) -> Option<Named> {
    use xkb::keysyms as k;
    Some(match sym {
        k::KEY_Return | k::KEY_KP_Enter => Named::Enter,
        k::KEY_BackSpace => Named::Backspace,
        k::KEY_Tab | k::KEY_ISO_Left_Tab => Named::Tab,
        k::KEY_Escape => Named::Escape,
        k::KEY_Delete | k::KEY_KP_Delete => Named::Delete,
        k::KEY_Left | k::KEY_KP_Left => Named::ArrowLeft,
        k::KEY_Right | k::KEY_KP_Right => Named::ArrowRight,
        k::KEY_Up | k::KEY_KP_Up => Named::ArrowUp,
        k::KEY_Down | k::KEY_KP_Down => Named::ArrowDown,
        k::KEY_Home | k::KEY_KP_Home => Named::Home,
        k::KEY_End | k::KEY_KP_End => Named::End,
        k::KEY_Shift_L | k::KEY_Shift_R => Named::Shift,
        k::KEY_Control_L | k::KEY_Control_R => Named::Control,
        k::KEY_Alt_L | k::KEY_Alt_R => Named::Alt,
        _ => return None,
    })
}

struct Repeat {
    code: u32,
    at: Instant,
}

/// All input devices of seat0.
pub struct Input {
    libinput: Libinput,
    keyboard: Keyboard,
    repeat: Option<Repeat>,
}

impl Input {
    pub fn open(layout: &str) -> Result<Input> {
        let keyboard = Keyboard::new(layout)?;
        let mut libinput = Libinput::new_with_udev(DeviceOpener);
        libinput.udev_assign_seat("seat0").map_err(|()| anyhow!("libinput: cannot assign seat0 (is udev running?)"))?;
        Ok(Input { libinput, keyboard, repeat: None })
    }

    pub fn set_layout(&mut self, layout: &str) -> Result<()> {
        self.keyboard = Keyboard::new(layout).with_context(|| format!("switching to layout {layout}"))?;
        self.repeat = None;
        Ok(())
    }

    pub fn fd(&self) -> RawFd {
        self.libinput.as_raw_fd()
    }

    /// When the held key repeats next.
    pub fn next_repeat(&self) -> Option<Instant> {
        self.repeat.as_ref().map(|r| r.at)
    }

    /// Reads what the devices reported and hands it to the shell as iced events.
    pub fn dispatch(&mut self, shell: &mut Shell) -> Result<()> {
        self.libinput.dispatch().context("reading input devices")?;
        let (width, height) = shell.size();
        for event in &mut self.libinput {
            match event {
                DeviceEvent::Keyboard(KeyboardEvent::Key(k)) => {
                    let pressed = k.key_state() == KeyState::Pressed;
                    for e in self.keyboard.key(k.key(), pressed, false) {
                        shell.push(e);
                    }
                    self.repeat = match (pressed, &self.repeat) {
                        (true, _) if self.keyboard.repeats(k.key()) => {
                            Some(Repeat { code: k.key(), at: Instant::now() + REPEAT_DELAY })
                        }
                        (false, Some(r)) if r.code != k.key() => self.repeat.take(),
                        _ => None,
                    };
                }
                // Touchpads come with tapping off; a person at a laptop expects a tap to click.
                DeviceEvent::Device(DeviceAdded(added)) => {
                    let mut device = added.device();
                    if device.config_tap_finger_count() > 0 {
                        let _ = device.config_tap_set_enabled(true);
                    }
                }
                DeviceEvent::Pointer(PointerEvent::Motion(m)) => shell.move_cursor_by(m.dx(), m.dy()),
                DeviceEvent::Pointer(PointerEvent::MotionAbsolute(a)) => shell
                    .move_cursor_to(a.absolute_x_transformed(width) as f32, a.absolute_y_transformed(height) as f32),
                DeviceEvent::Pointer(PointerEvent::Button(b)) => {
                    let button = match b.button() {
                        0x110 => mouse::Button::Left,
                        0x111 => mouse::Button::Right,
                        0x112 => mouse::Button::Middle,
                        other => mouse::Button::Other(other as u16),
                    };
                    shell.push(Event::Mouse(if b.button_state() == ButtonState::Pressed {
                        mouse::Event::ButtonPressed(button)
                    } else {
                        mouse::Event::ButtonReleased(button)
                    }));
                }
                DeviceEvent::Pointer(PointerEvent::ScrollWheel(w)) if w.has_axis(Axis::Vertical) => {
                    let lines = -(w.scroll_value_v120(Axis::Vertical) / 120.0) as f32;
                    shell.push(Event::Mouse(mouse::Event::WheelScrolled {
                        delta: mouse::ScrollDelta::Lines { x: 0.0, y: lines },
                    }));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sends the held key again if its time has come.
    pub fn repeat_due(&mut self, shell: &mut Shell) {
        let now = Instant::now();
        let Some(repeat) = self.repeat.as_mut().filter(|r| r.at <= now) else { return };
        repeat.at = now + REPEAT_INTERVAL;
        let code = repeat.code;
        for e in self.keyboard.key(code, true, true) {
            shell.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pressed(events: &[Event]) -> (Key, Option<String>, Modifiers) {
        match events.last() {
            Some(Event::Keyboard(keyboard::Event::KeyPressed { key, text, modifiers, .. })) => {
                (key.clone(), text.as_ref().map(|t| t.to_string()), *modifiers)
            }
            other => panic!("not a key press: {other:?}"),
        }
    }

    // evdev codes from <linux/input-event-codes.h>
    const KEY_Y: u32 = 21;
    const KEY_ENTER: u32 = 28;
    const KEY_LEFTSHIFT: u32 = 42;
    const KEY_TAB: u32 = 15;

    #[test]
    fn the_layout_decides_what_a_key_types() {
        let mut us = Keyboard::new("us").unwrap();
        assert_eq!(pressed(&us.key(KEY_Y, true, false)).1.as_deref(), Some("y"));
        // German keyboards swap Y and Z.
        let mut de = Keyboard::new("de").unwrap();
        assert_eq!(pressed(&de.key(KEY_Y, true, false)).1.as_deref(), Some("z"));
        assert!(Keyboard::new("no-such-layout").is_err());
    }

    #[test]
    fn shift_and_named_keys_come_through() {
        let mut kb = Keyboard::new("us").unwrap();
        kb.key(KEY_LEFTSHIFT, true, false);
        let (key, text, modifiers) = pressed(&kb.key(KEY_Y, true, false));
        assert_eq!((key, text.as_deref()), (Key::Character("Y".into()), Some("Y")));
        assert!(modifiers.shift());
        // Shift+Tab is ISO_Left_Tab in xkb, still Tab to the UI (with Shift held).
        let (key, text, modifiers) = pressed(&kb.key(KEY_TAB, true, false));
        assert_eq!((key, text), (Key::Named(Named::Tab), None));
        assert!(modifiers.shift());
        kb.key(KEY_LEFTSHIFT, false, false);
        assert_eq!(pressed(&kb.key(KEY_ENTER, true, false)).0, Key::Named(Named::Enter));
        assert!(kb.repeats(KEY_Y));
    }
}
