//! `truthdb-installer-gui bench-render`: full-frame render times of four screens with
//! tiny-skia on the CPU, for BENCHMARKS.md (no display needed).

use std::time::{Duration, Instant};

use truthdb_installer::block_devices::Disk;
use truthdb_installer::events::{Event, Step};

use crate::app::{App, Machine, Msg};
use crate::shell::Shell;

/// One line per size and screen: first frame (layout, glyph cache cold) and the mean and
/// worst of `frames` full redraws.
pub fn run(sizes: &[(u32, u32)], frames: u32) -> Vec<String> {
    let mut lines = Vec::new();
    for &(width, height) in sizes {
        for (name, mut app) in screens() {
            let mut shell = Shell::new(width, height);
            let started = Instant::now();
            shell.feed(&mut app);
            shell.draw(&app);
            let first = started.elapsed();
            let mut total = Duration::ZERO;
            let mut worst = Duration::ZERO;
            for _ in 0..frames {
                shell.invalidate();
                let t = Instant::now();
                shell.feed(&mut app);
                shell.draw(&app);
                let took = t.elapsed();
                total += took;
                worst = worst.max(took);
            }
            lines.push(format!(
                "{width}x{height} {name:<10} first {:6.1} ms   full frame mean {:5.1} ms   worst {:5.1} ms",
                ms(first),
                ms(total / frames.max(1)),
                ms(worst)
            ));
        }
    }
    lines
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn screens() -> Vec<(&'static str, App)> {
    let disk = Disk {
        path: "/dev/nvme0n1".into(),
        by_id: vec!["nvme-Samsung_SSD_980_S64".into()],
        model: Some("Samsung SSD 980 1TB".into()),
        serial: Some("S64ANS0T123456".into()),
        size_bytes: 1_000_204_886_016,
        transport: Some("nvme".into()),
        removable: false,
        read_only: false,
        children: vec![],
    };
    let machine = Machine { version: crate::VERSION.into(), disks: vec![disk], min_disk_bytes: 10 << 30 };
    let welcome = App::new(machine.clone());
    let mut disk_screen = App::new(machine.clone());
    disk_screen.update(Msg::Next);
    let mut settings = App::new(machine.clone());
    settings.update(Msg::Next);
    settings.update(Msg::Next);
    for m in [Msg::Hostname("db1.example.org".into()), Msg::AdminPassword("x".into())] {
        settings.update(m);
    }
    let mut installing = App::new(machine);
    for m in [
        Msg::Next,
        Msg::Next,
        Msg::Hostname("db1".into()),
        Msg::AdminPassword("long enough".into()),
        Msg::DatabasePassword("correct horse battery".into()),
        Msg::Next,
        Msg::ConfirmText("nvme0n1".into()),
        Msg::Next,
    ] {
        installing.update(m);
    }
    for i in 0..12 {
        installing.update(Msg::Progress(Event::new(Step::CopySystem, i as f64 / 12.0, format!("copying file {i}"))));
    }
    vec![("welcome", welcome), ("disk", disk_screen), ("settings", settings), ("installing", installing)]
}
