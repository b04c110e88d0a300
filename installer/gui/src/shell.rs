//! Drives the iced program without winit: events in, messages out, frames rendered by
//! tiny-skia into a shadow buffer of XRGB8888 pixels with the damaged rectangles.
//!
//! The shadow buffer exists because tiny-skia knows no row stride and because scan-out
//! memory (a dumb buffer, /dev/fb0) is often write-combined and slow to read: we render here
//! and only copy the damaged rows out (`display::present`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use iced_core::widget::operation::{Operation, Outcome, focusable};
use iced_core::{
    Event, Font, Pixels, Point, Rectangle, Size, Theme, clipboard, event, keyboard, mouse, renderer, window,
};
use iced_graphics::{Viewport, damage};
use iced_runtime::user_interface::{self, State, UserInterface};
use iced_tiny_skia::Layer;

use crate::app::{App, Msg, Renderer, Request, Screen};

/// The UI font: Fira Sans, embedded by iced_renderer (no font files needed in the image).
pub const FONT: Font = Font::with_name("Fira Sans");

/// A rectangle of pixels (physical, already clamped to the screen).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PixelRect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

pub struct Shell {
    renderer: Renderer,
    cache: user_interface::Cache,
    theme: Theme,
    width: u32,
    height: u32,
    scale: f32,
    pixels: Vec<u32>,
    mask: tiny_skia::Mask,
    /// The layers of the last frame drawn, to diff against; `None` redraws everything.
    previous: Option<Vec<Layer>>,
    cursor: mouse::Cursor,
    events: VecDeque<Event>,
    next_redraw: Option<Instant>,
    /// The screen whose first field got the keyboard focus.
    focused_screen: Option<Screen>,
}

impl Shell {
    pub fn new(width: u32, height: u32) -> Shell {
        Shell {
            renderer: Renderer::new(FONT, Pixels(16.0)),
            cache: user_interface::Cache::default(),
            theme: crate::app::theme(),
            width,
            height,
            scale: scale_for(width, height),
            pixels: vec![0; (width * height) as usize],
            mask: tiny_skia::Mask::new(width.max(1), height.max(1)).expect("non-empty screen"),
            previous: None,
            cursor: mouse::Cursor::Unavailable,
            events: VecDeque::new(),
            next_redraw: Some(Instant::now()),
            focused_screen: None,
        }
    }

    /// A new screen size (another display, another mode): everything is laid out and drawn again.
    pub fn resize(&mut self, width: u32, height: u32) {
        let cursor = self.cursor;
        *self = Shell { cursor, ..Shell::new(width, height) };
    }

    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The UI's size in logical units (pixels divided by the scale).
    pub fn logical_size(&self) -> Size {
        Size::new(self.width as f32 / self.scale, self.height as f32 / self.scale)
    }

    pub fn pixels(&self) -> &[u32] {
        &self.pixels
    }

    /// Where the pointer is, in physical pixels (for the software cursor).
    pub fn cursor_pixel(&self) -> Option<(u32, u32)> {
        self.cursor.position().map(|p| ((p.x * self.scale) as u32, (p.y * self.scale) as u32))
    }

    /// Moves the pointer to a physical position (clamped to the screen).
    pub fn move_cursor_to(&mut self, x: f32, y: f32) {
        let size = self.logical_size();
        let p =
            Point::new((x / self.scale).clamp(0.0, size.width - 1.0), (y / self.scale).clamp(0.0, size.height - 1.0));
        self.cursor = mouse::Cursor::Available(p);
        self.events.push_back(Event::Mouse(mouse::Event::CursorMoved { position: p }));
    }

    /// Moves the pointer by a relative motion in physical pixels.
    pub fn move_cursor_by(&mut self, dx: f64, dy: f64) {
        let (x, y) = match self.cursor.position() {
            Some(p) => (p.x * self.scale, p.y * self.scale),
            None => (self.width as f32 / 2.0, self.height as f32 / 2.0),
        };
        self.move_cursor_to(x + dx as f32, y + dy as f32);
    }

    pub fn push(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Whether input is queued that [`Shell::feed`] has not run through the UI yet.
    pub fn has_input(&self) -> bool {
        !self.events.is_empty()
    }

    /// When the UI wants to be drawn again on its own (a blinking text cursor).
    pub fn next_redraw(&self) -> Option<Instant> {
        self.next_redraw
    }

    /// Forgets the last frame: the next [`Shell::draw`] repaints the whole screen.
    pub fn invalidate(&mut self) {
        self.previous = None;
        self.next_redraw = Some(Instant::now());
    }

    /// Runs the queued input through the UI into `app` and returns what the screens asked
    /// the shell to do. Stops after the first request (a keyboard layout switch must apply to
    /// the keys after it): call again while [`Shell::has_input`].
    ///
    /// Input is taken in order, and the UI is built anew from `app` after every event that
    /// changed something: under a slow machine several key presses arrive in one batch, and a
    /// Tab or an Enter in it must move the focus or the screen before the next key is read
    /// (one UI for the whole batch typed the keys after a Tab into the previous field).
    pub fn feed(&mut self, app: &mut App) -> Vec<Request> {
        let mut requests = Vec::new();
        self.follow_screen(app);
        while requests.is_empty() && !self.events.is_empty() {
            for msg in self.update_until_change(app) {
                requests.extend(app.update(msg));
            }
            self.follow_screen(app);
        }
        requests
    }

    /// Runs queued events through one UI built from `app` until an event produces messages or
    /// moves the focus; returns those messages: widgets' own, then the screen's shortcuts for
    /// keys no widget took.
    fn update_until_change(&mut self, app: &App) -> Vec<Msg> {
        let mut messages = Vec::new();
        let cache = std::mem::take(&mut self.cache);
        let mut ui = UserInterface::build(app.view(), self.logical_size(), cache, &mut self.renderer);
        while let Some(event) = self.events.pop_front() {
            let (_, statuses) = ui.update(
                std::slice::from_ref(&event),
                self.cursor,
                &mut self.renderer,
                &mut clipboard::Null,
                &mut messages,
            );
            let mut focus_moved = false;
            if let Event::Keyboard(keyboard::Event::KeyPressed { key, modifiers, .. }) = &event {
                let captured = statuses.first() == Some(&event::Status::Captured);
                match key {
                    keyboard::Key::Named(keyboard::key::Named::Tab) => {
                        let op: Box<dyn Operation> = if modifiers.shift() {
                            Box::new(focusable::focus_previous::<()>())
                        } else {
                            Box::new(focusable::focus_next::<()>())
                        };
                        run_operation(&mut ui, &self.renderer, op);
                        focus_moved = true;
                    }
                    other if !captured => messages.extend(app.shortcut(other)),
                    _ => {}
                }
            }
            if focus_moved || !messages.is_empty() {
                break;
            }
        }
        self.cache = ui.into_cache();
        messages
    }

    /// A screen just shown gets its first field focused, so typing goes there at once.
    pub fn follow_screen(&mut self, app: &App) {
        let screen = app.screen();
        if self.focused_screen == Some(screen) {
            return;
        }
        if let Some(id) = app.first_field() {
            self.focus(app, id);
        }
        self.focused_screen = Some(screen);
    }

    /// Puts the keyboard focus on the widget with this id (the first field of a form).
    fn focus(&mut self, app: &App, id: &'static str) {
        let cache = std::mem::take(&mut self.cache);
        let mut ui = UserInterface::build(app.view(), self.logical_size(), cache, &mut self.renderer);
        run_operation(&mut ui, &self.renderer, Box::new(focusable::focus::<()>(iced_core::widget::Id::new(id))));
        self.cache = ui.into_cache();
        self.next_redraw = Some(Instant::now());
    }

    /// Lays out and renders the app; returns the rectangles of pixels that changed (none
    /// when the frame is identical to the last one).
    pub fn draw(&mut self, app: &App) -> Vec<PixelRect> {
        let logical = self.logical_size();
        let cache = std::mem::take(&mut self.cache);
        let mut ui = UserInterface::build(app.view(), logical, cache, &mut self.renderer);
        // iced 0.14 widgets settle their look (hovered, focused, disabled) and schedule their
        // next frame (a blinking text cursor) when told a redraw is happening; a widget that
        // has not been told draws as disabled. The view is rebuilt for every frame, so every
        // frame starts with this event.
        let now = Instant::now();
        let redraw = [Event::Window(window::Event::RedrawRequested(now))];
        let mut ignored = Vec::new();
        let (state, _) = ui.update(&redraw, self.cursor, &mut self.renderer, &mut clipboard::Null, &mut ignored);
        self.next_redraw = match state {
            State::Updated { redraw_request: window::RedrawRequest::At(t), .. } => Some(t),
            State::Updated { redraw_request: window::RedrawRequest::NextFrame, .. } => {
                Some(now + Duration::from_millis(16))
            }
            _ => None,
        };
        let style = renderer::Style { text_color: self.theme.palette().text };
        ui.draw(&mut self.renderer, &self.theme, &style, self.cursor);
        self.cache = ui.into_cache();

        let screen = Rectangle::with_size(logical);
        let damage = match &self.previous {
            Some(previous) => damage::diff(previous, self.renderer.layers(), |l| vec![l.bounds], Layer::damage),
            None => vec![screen],
        };
        if damage.is_empty() {
            return Vec::new();
        }
        // Text damage is its layout bounds, but anti-aliased glyph edges can reach a pixel or
        // two past them (seen as stale dots after a screen change): grow each rectangle.
        let damage: Vec<Rectangle> =
            damage::group(damage, screen).into_iter().filter_map(|r| r.expand(2.0).intersection(&screen)).collect();
        let viewport = Viewport::with_physical_size(Size::new(self.width, self.height), self.scale);
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut self.pixels);
        let mut pixmap =
            tiny_skia::PixmapMut::from_bytes(bytes, self.width, self.height).expect("buffer fits the screen");
        let background = self.theme.palette().background;
        self.renderer.draw(&mut pixmap, &mut self.mask, &viewport, &damage, background);
        self.previous = Some(self.renderer.layers().to_vec());
        damage.iter().filter_map(|r| self.to_pixels(*r)).collect()
    }

    fn to_pixels(&self, r: Rectangle) -> Option<PixelRect> {
        let x0 = ((r.x * self.scale).floor().max(0.0) as u32).min(self.width);
        let y0 = ((r.y * self.scale).floor().max(0.0) as u32).min(self.height);
        let x1 = (((r.x + r.width) * self.scale).ceil().max(0.0) as u32).min(self.width);
        let y1 = (((r.y + r.height) * self.scale).ceil().max(0.0) as u32).min(self.height);
        (x1 > x0 && y1 > y0).then_some(PixelRect { x: x0, y: y0, width: x1 - x0, height: y1 - y0 })
    }
}

/// HiDPI: screens of 2560 pixels and wider get everything twice as large.
fn scale_for(width: u32, _height: u32) -> f32 {
    if width >= 2560 { 2.0 } else { 1.0 }
}

/// Runs a widget operation to the end: focus_next answers with a chained second operation,
/// and a single `operate` call alone would do nothing.
fn run_operation(ui: &mut UserInterface<'_, Msg, Theme, Renderer>, renderer: &Renderer, mut op: Box<dyn Operation>) {
    loop {
        ui.operate(renderer, op.as_mut());
        match op.finish() {
            Outcome::Chain(next) => op = next,
            _ => break,
        }
    }
}
