//! The shell as the installer runs it (no simulator): frames into the shadow buffer, damage.

use truthdb_installer::block_devices::Disk;
use truthdb_installer_gui::app::{App, Machine, Msg, Request, Screen};
use truthdb_installer_gui::input::Keyboard;
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
    let mut app = disk_screen();
    let mut shell = Shell::new(1024, 768);
    assert!(shell.feed(&mut app).is_empty());
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
    incremental.feed(&mut app);
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
        incremental.feed(&mut app);
        let damage = incremental.draw(&app);
        assert!(!damage.is_empty());
    }
    let mut whole = Shell::new(1280, 800);
    whole.feed(&mut app);
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

/// The evdev code of a key on a US keyboard (<linux/input-event-codes.h>), and whether Shift.
fn evdev_key(c: char) -> (u32, bool) {
    const ROWS: [(&str, u32); 4] = [("1234567890", 2), ("qwertyuiop", 16), ("asdfghjkl", 30), ("zxcvbnm", 44)];
    let lower = c.to_ascii_lowercase();
    let code = match lower {
        '-' => 12,
        '.' => 52,
        '\n' => 28,
        '\t' => 15,
        '\x08' => 14,
        _ => ROWS
            .iter()
            .find_map(|(row, first)| row.find(lower).map(|i| first + i as u32))
            .unwrap_or_else(|| panic!("no key for {c:?}")),
    };
    (code, c.is_ascii_uppercase())
}

/// Under TCG the installer reads keys slower than they are typed: many presses reach one
/// `feed`. Each key must land where it would have landed typed slowly: after a Tab in the
/// next field, after an Enter on the next screen.
#[test]
fn a_burst_of_keys_lands_in_order_across_fields_and_screens() {
    let mut app = disk_screen();
    let mut shell = Shell::new(1280, 800);
    shell.feed(&mut app);
    let mut keyboard = Keyboard::new("us").unwrap();
    // Enter (disk -> settings), host name, Tab, the login "admin" replaced by "dba", Tab,
    // admin password, Tab, (no SSH key) Tab, database password, Enter (-> confirmation).
    let typed = "\nappliance-1\t\x08\x08\x08\x08\x08dba\tAdmin-Pass-77\t\tDb-Secret-Pass-1234\n";
    const SHIFT: u32 = 42;
    for c in typed.chars() {
        let (code, shifted) = evdev_key(c);
        let mut press = |code, down| keyboard.key(code, down, false).into_iter().for_each(|e| shell.push(e));
        if shifted {
            press(SHIFT, true);
        }
        press(code, true);
        press(code, false);
        if shifted {
            press(SHIFT, false);
        }
    }
    let requests = shell.feed(&mut app);
    assert!(requests.is_empty(), "{requests:?}");
    assert!(!shell.has_input());
    assert_eq!(app.screen(), Screen::Confirm);
    let config = app.install_config().unwrap();
    assert_eq!(config.hostname, "appliance-1");
    assert_eq!(config.admin.as_ref().unwrap().user, "dba");
    assert!(config.admin.as_ref().unwrap().ssh_authorized_keys.is_empty());
    assert!(config.admin.as_ref().unwrap().password_hash.is_some());
    assert_eq!(config.database.as_ref().unwrap().admin_password, "Db-Secret-Pass-1234");

    // The confirmation's field has the focus at once: the disk's name and Enter start the install.
    for c in "vda\n".chars() {
        let (code, _) = evdev_key(c);
        for down in [true, false] {
            keyboard.key(code, down, false).into_iter().for_each(|e| shell.push(e));
        }
    }
    let requests = shell.feed(&mut app);
    assert!(matches!(requests.as_slice(), [Request::Install { .. }]), "{requests:?}");
    assert_eq!(app.screen(), Screen::Installing);
}
