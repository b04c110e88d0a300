//! The shell as the installer runs it (no simulator): frames into the shadow buffer, damage.

use truthdb_installer::disks::Disk;
use truthdb_installer_gui::app::{App, Machine, Msg};
use truthdb_installer_gui::shell::{PixelRect, Shell};

fn disk_screen() -> App {
    let disk = Disk {
        path: "/dev/vda".into(),
        by_id: vec![],
        model: Some("QEMU HARDDISK".into()),
        serial: Some("TDB".into()),
        size_bytes: 16 << 30,
        transport: None,
        removable: false,
        read_only: false,
        children: vec![],
    };
    let mut app = App::new(Machine { version: "0.1.0".into(), disks: vec![disk], min_disk_bytes: 10 << 30 });
    app.update(Msg::Next);
    app
}

#[test]
fn widgets_draw_in_their_live_colours_and_unchanged_frames_draw_nothing() {
    let app = disk_screen();
    let mut shell = Shell::new(1024, 768);
    assert!(shell.update(&app).is_empty());
    assert_eq!(shell.draw(&app), vec![PixelRect { x: 0, y: 0, width: 1024, height: 768 }]);
    // XRGB8888: the theme's background and its primary blue (the selected disk and Next).
    // Widgets that were never told of a redraw would be drawn faded, as disabled.
    let count = |rgb: u32| shell.pixels().iter().filter(|&&p| p & 0x00ff_ffff == rgb).count();
    assert!(count(0x161b22) > 1024 * 768 / 2, "background");
    assert!(count(0x1a5fb4) > 20_000, "primary blue: {} pixels", count(0x1a5fb4));
    assert_eq!(shell.draw(&app), vec![], "an unchanged frame was drawn again");
}

#[test]
fn a_frame_drawn_from_damage_equals_the_same_frame_drawn_whole() {
    let mut app = disk_screen();
    let mut incremental = Shell::new(1280, 800);
    incremental.update(&app);
    incremental.draw(&app);
    // Disk -> settings -> confirmation: titles of other widths, fields, buttons move.
    for msg in [
        Msg::Next,
        Msg::Hostname("db1".into()),
        Msg::AdminPassword("long enough".into()),
        Msg::DatabasePassword("correct horse battery".into()),
        Msg::Next,
    ] {
        app.update(msg);
        incremental.update(&app);
        let damage = incremental.draw(&app);
        assert!(!damage.is_empty());
    }
    let mut whole = Shell::new(1280, 800);
    whole.update(&app);
    whole.draw(&app);
    // Anti-aliased edges drawn through a clip mask may round one step differently: tolerated.
    // A stale remnant (a glyph on the background) differs by far more.
    let channel_gap =
        |a: u32, b: u32| (0..3).map(|k| ((a >> (8 * k)) & 0xff).abs_diff((b >> (8 * k)) & 0xff)).max().unwrap();
    let stale: Vec<(usize, usize)> = incremental
        .pixels()
        .iter()
        .zip(whole.pixels())
        .enumerate()
        .filter(|(_, (a, b))| channel_gap(**a, **b) > 8)
        .map(|(i, _)| (i % 1280, i / 1280))
        .collect();
    assert!(
        stale.is_empty(),
        "{} pixels left behind by damage-only drawing, first at {:?}",
        stale.len(),
        stale.first()
    );
}
