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
