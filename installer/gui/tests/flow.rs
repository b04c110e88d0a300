//! The whole installer flow through iced_test's simulator (clicks and typing, tiny-skia on the
//! CPU), plus a golden snapshot of every screen: the exact SHA-256 of its pixels, in
//! tests/snapshots/<screen>-tiny-skia.sha256, beside the PNG it was recorded from. A mismatch
//! names the screen, both hashes, the actual render (written to
//! target/golden-actual/<screen>-tiny-skia.png) and the box of pixels that differ from the
//! golden PNG. After an intended visual change, re-record every screen with
//! `TRUTHDB_RECORD_GOLDEN=1 cargo test -p truthdb-installer-gui --test flow`, look at the PNGs,
//! and commit them.

use std::path::{Path, PathBuf};

use iced_core::Settings;
use iced_core::keyboard::{Key, key::Named};
use iced_test::{Simulator, selector};
use truthdb_installer::block_devices::Disk;
use truthdb_installer::config::PowerAction;
use truthdb_installer::events::{Event as ProgressEvent, Step};
use truthdb_installer_gui::app::{App, Machine, Msg, Request, Screen, theme};
use truthdb_installer_gui::shell::FONT;

const SSH_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyForTheTests dba@laptop";

fn disk(path: &str, model: &str, serial: &str, gib: u64) -> Disk {
    Disk {
        path: path.into(),
        by_id: vec![format!("virtio-{serial}")],
        model: Some(model.into()),
        serial: Some(serial.into()),
        size_bytes: gib << 30,
        transport: Some("virtio".into()),
        removable: false,
        read_only: false,
        children: vec![],
    }
}

fn machine(disks: Vec<Disk>) -> Machine {
    Machine { version: "0.1.0".into(), disks, min_disk_bytes: 10 << 30 }
}

fn sim(app: &App) -> Simulator<'_, Msg, iced_core::Theme, truthdb_installer_gui::app::Renderer> {
    Simulator::with_size(Settings { default_font: FONT, ..Settings::default() }, (1024.0, 768.0), app.view())
}

/// Applies what the simulated UI produced; returns the requests the shell would carry out.
fn apply(app: &mut App, messages: Vec<Msg>) -> Vec<Request> {
    messages.into_iter().filter_map(|m| app.update(m)).collect()
}

fn click(app: &mut App, label: &str) -> Vec<Request> {
    let screen = app.screen();
    let mut ui = sim(app);
    ui.click(label).unwrap_or_else(|e| panic!("clicking {label:?} on {screen:?}: {e:?}"));
    let messages = ui.into_messages().collect();
    apply(app, messages)
}

fn type_into(app: &mut App, id: &'static str, text: &str) {
    let screen = app.screen();
    let mut ui = sim(app);
    ui.click(selector::id(id)).unwrap_or_else(|e| panic!("no field {id} on {screen:?}: {e:?}"));
    ui.typewrite(text);
    let messages = ui.into_messages().collect();
    apply(app, messages);
}

/// Re-record the golden snapshots instead of checking them.
const RECORD: &str = "TRUTHDB_RECORD_GOLDEN";
/// What iced_test appends to a snapshot's name (the renderer).
const RENDERER: &str = "tiny-skia";

/// Checks the screen against its golden hash (recording it when there is none, or when
/// [`RECORD`] is set); on a mismatch, fails with everything needed to see why.
fn snapshot(app: &App, name: &str) {
    let mut ui = sim(app);
    let snapshot = ui.snapshot(&theme()).unwrap();
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let golden = golden_dir.join(name);
    let golden_hash = golden_dir.join(format!("{name}-{RENDERER}.sha256"));
    let golden_png = golden_dir.join(format!("{name}-{RENDERER}.png"));
    if std::env::var_os(RECORD).is_some() {
        // iced_test writes a snapshot only where there is none.
        for stale in [&golden_hash, &golden_png] {
            let _ = std::fs::remove_file(stale);
        }
        assert!(snapshot.matches_hash(&golden).unwrap() && snapshot.matches_image(&golden).unwrap());
        return;
    }
    if std::env::var_os("TRUTHDB_GUI_SNAPSHOT_PNG").is_some() {
        snapshot.matches_image(&golden).unwrap();
    }
    if snapshot.matches_hash(&golden).unwrap() {
        return;
    }
    // The actual render, written where a person can look at it (and its hash, as iced_test
    // computes it).
    let actual_dir = target_dir().join("golden-actual");
    let actual = actual_dir.join(name);
    let actual_hash_file = actual_dir.join(format!("{name}-{RENDERER}.sha256"));
    let actual_png = actual_dir.join(format!("{name}-{RENDERER}.png"));
    for stale in [&actual_hash_file, &actual_png] {
        let _ = std::fs::remove_file(stale);
    }
    snapshot.matches_hash(&actual).unwrap();
    snapshot.matches_image(&actual).unwrap();
    let expected_hash = std::fs::read_to_string(&golden_hash).unwrap_or_default();
    let actual_hash = std::fs::read_to_string(&actual_hash_file).unwrap_or_default();
    panic!("{}", mismatch_report(name, &golden_hash, &expected_hash, &actual_hash, &actual_png, &golden_png));
}

/// The workspace's target directory (`CARGO_TARGET_DIR` when set).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("the workspace").join("target"),
    }
}

/// An RGBA PNG's size and pixels.
fn read_png(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| e.to_string())?;
    let mut pixels = vec![0; reader.output_buffer_size().ok_or("too large")?];
    let info = reader.next_frame(&mut pixels).map_err(|e| e.to_string())?;
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        return Err(format!("{:?} {:?}, not 8-bit RGBA", info.color_type, info.bit_depth));
    }
    pixels.truncate(info.buffer_size());
    Ok((info.width, info.height, pixels))
}

/// How many pixels differ between two RGBA images of the same size, and the smallest box
/// holding them all: `(count, x0, y0, x1, y1)`, inclusive; `None` when none does.
fn differing_box(width: u32, a: &[u8], b: &[u8]) -> Option<(usize, u32, u32, u32, u32)> {
    let mut found: Option<(usize, u32, u32, u32, u32)> = None;
    for (i, (pa, pb)) in a.chunks_exact(4).zip(b.chunks_exact(4)).enumerate() {
        if pa != pb {
            let (x, y) = (i as u32 % width, i as u32 / width);
            found = Some(match found {
                None => (1, x, y, x, y),
                Some((n, x0, y0, x1, y1)) => (n + 1, x0.min(x), y0.min(y), x1.max(x), y1.max(y)),
            });
        }
    }
    found
}

/// The failure message of a golden snapshot that no longer matches.
fn mismatch_report(
    name: &str,
    golden_hash: &Path,
    expected_hash: &str,
    actual_hash: &str,
    actual_png: &Path,
    golden_png: &Path,
) -> String {
    use sha2::{Digest, Sha256};
    let golden = if !golden_png.exists() {
        format!("  golden PNG:    none at {} (nothing to diff against)", golden_png.display())
    } else {
        match (read_png(golden_png), read_png(actual_png)) {
            (Ok((gw, gh, golden)), Ok((aw, ah, actual))) => {
                let recorded = format!("{:x}", Sha256::digest(&golden)) == expected_hash.trim();
                let which = if recorded {
                    "the render the expected hash was recorded from"
                } else {
                    "STALE: its pixels do not hash to the expected hash, so the diff is against an older render"
                };
                let diff = if (gw, gh) != (aw, ah) {
                    format!("the sizes differ: golden {gw}x{gh}, actual {aw}x{ah}")
                } else {
                    match differing_box(gw, &golden, &actual) {
                        Some((n, x0, y0, x1, y1)) => format!(
                            "{n} pixels differ, all within x {x0}..={x1}, y {y0}..={y1} ({}x{} px at {x0},{y0})",
                            x1 - x0 + 1,
                            y1 - y0 + 1
                        ),
                        None => "no pixel differs from the golden PNG".to_owned(),
                    }
                };
                format!("  golden PNG:    {} ({which})\n  differing:     {diff}", golden_png.display())
            }
            (golden, actual) => format!(
                "  golden PNG:    {} (not compared: golden {:?}, actual {:?})",
                golden_png.display(),
                golden.err(),
                actual.err()
            ),
        }
    };
    format!(
        "golden snapshot of screen `{name}` does not match (exact SHA-256 of its RGBA pixels)\n  \
         expected hash: {expected} ({golden_hash})\n  \
         actual hash:   {actual_hash}\n  \
         actual PNG:    {actual_png}\n\
         {golden}\n\
         If the change is intended, look at the actual PNG, then re-record every screen and commit \
         installer/gui/tests/snapshots/:\n  \
         {RECORD}=1 cargo test -p truthdb-installer-gui --test flow",
        expected = expected_hash.trim(),
        golden_hash = golden_hash.display(),
        actual_png = actual_png.display(),
    )
}

#[test]
fn clicking_and_typing_through_every_screen_starts_the_install_and_ends_done() {
    let mut app = App::new(machine(vec![disk("/dev/vda", "QEMU HARDDISK", "TDB-TARGET", 16)]));
    assert_eq!(app.screen(), Screen::Welcome);
    snapshot(&app, "welcome");

    assert_eq!(click(&mut app, ">"), vec![Request::SetKeyboardLayout("gb".into())]);
    click(&mut app, "<");
    assert_eq!(app.layout(), "us");
    click(&mut app, "Start");
    assert_eq!(app.screen(), Screen::Disk);
    snapshot(&app, "disk");

    click(&mut app, "Next");
    assert_eq!(app.screen(), Screen::Settings);
    // Next is off until every field is good.
    click(&mut app, "Next");
    assert_eq!(app.screen(), Screen::Settings);
    type_into(&mut app, "hostname", "db1.example.org");
    type_into(&mut app, "admin-password", "short");
    assert!(app.settings_errors().iter().any(|(_, m)| m.contains("at least 8")));
    snapshot(&app, "settings-errors");
    type_into(&mut app, "admin-password", "-but-long-now");
    type_into(&mut app, "ssh-key", SSH_KEY);
    type_into(&mut app, "database-password", "correct horse battery");
    assert_eq!(app.settings_errors(), vec![]);
    snapshot(&app, "settings");
    click(&mut app, "Next");
    assert_eq!(app.screen(), Screen::Confirm);
    snapshot(&app, "confirm");

    // The wrong word does not erase anything.
    type_into(&mut app, "confirm", "sda");
    assert_eq!(click(&mut app, "Erase and install"), vec![]);
    assert_eq!(app.screen(), Screen::Confirm);
    let mut ui = sim(&app);
    ui.click(selector::id("confirm")).unwrap();
    for _ in 0..3 {
        ui.tap_key(Key::Named(Named::Backspace));
    }
    ui.typewrite("vda");
    let messages = ui.into_messages().collect();
    apply(&mut app, messages);
    let requests = click(&mut app, "Erase and install");
    let [Request::Install { disk, config }] = requests.as_slice() else { panic!("no install request: {requests:?}") };
    assert_eq!(disk.path, "/dev/vda");
    assert_eq!(config.hostname, "db1.example.org");
    assert_eq!(config.admin.as_ref().unwrap().user, "admin");
    assert_eq!(config.admin.as_ref().unwrap().ssh_authorized_keys, vec![SSH_KEY.to_owned()]);
    let hash = config.admin.as_ref().unwrap().password_hash.as_deref().unwrap();
    assert!(hash.starts_with("$6$") && !hash.contains("short-but-long-now"), "{hash}");
    assert_eq!(config.database.as_ref().unwrap().admin_password, "correct horse battery");
    assert_eq!(config.wipe, Some(true));
    assert_eq!(app.screen(), Screen::Installing);

    app.update(Msg::Progress(ProgressEvent::new(Step::CopySystem, 0.5, "copying the image")));
    app.update(Msg::Progress(ProgressEvent::new(Step::Identity, 0.0, "writing fstab")));
    snapshot(&app, "installing");
    app.update(Msg::Finished(Ok("6.12.117-truthdb".into())));
    assert_eq!(app.screen(), Screen::Done);
    snapshot(&app, "done");
    assert_eq!(click(&mut app, "Restart"), vec![Request::Power(truthdb_installer::config::PowerAction::Reboot)]);
}

#[test]
fn a_failed_install_says_where_the_log_is_and_can_be_retried() {
    let mut app = App::new(machine(vec![disk("/dev/vda", "QEMU HARDDISK", "TDB-TARGET", 16)]));
    for msg in [Msg::Next, Msg::Next] {
        app.update(msg);
    }
    for (id, text) in
        [("hostname", "db1"), ("admin-password", "long enough"), ("database-password", "correct horse battery")]
    {
        type_into(&mut app, id, text);
    }
    app.update(Msg::Next);
    app.update(Msg::ConfirmText("vda".into()));
    assert!(matches!(app.update(Msg::Next), Some(Request::Install { .. })));
    app.update(Msg::Finished(Err("mkfs.ext4 /dev/vda2: exit status 1".into())));
    assert_eq!(app.screen(), Screen::Failed);
    let mut ui = sim(&app);
    assert!(ui.find("The full log is /var/log/truthdb-installer.log in the live system.").is_ok());
    assert!(ui.find("mkfs.ext4 /dev/vda2: exit status 1").is_ok());
    drop(ui);
    snapshot(&app, "failed");
    assert_eq!(click(&mut app, "Try again"), vec![Request::RescanDisks]);
    assert_eq!(app.screen(), Screen::Disk);
}

#[test]
fn no_suitable_disk_is_a_screen_of_its_own() {
    let mut app = App::new(machine(vec![]));
    app.update(Msg::Next);
    assert_eq!(app.screen(), Screen::Disk);
    let mut ui = sim(&app);
    assert!(ui.find("No suitable disk").is_ok());
    drop(ui);
    snapshot(&app, "no-disk");
    // Nothing to go on with.
    app.update(Msg::Next);
    assert_eq!(app.screen(), Screen::Disk);
    assert_eq!(click(&mut app, "Rescan"), vec![Request::RescanDisks]);
    app.set_disks(vec![disk("/dev/sdb", "Samsung SSD", "S5X", 256)]);
    app.update(Msg::Next);
    assert_eq!(app.screen(), Screen::Settings);
}

#[test]
fn the_keyboard_alone_reaches_every_screen() {
    let mut app = App::new(machine(vec![
        disk("/dev/vda", "QEMU HARDDISK", "ONE", 16),
        disk("/dev/vdb", "QEMU HARDDISK", "TWO", 32),
    ]));
    let key = |app: &App, k: Named| app.shortcut(&Key::Named(k));
    assert!(matches!(key(&app, Named::ArrowRight), Some(Msg::NextLayout)));
    app.update(key(&app, Named::Enter).unwrap());
    assert_eq!(app.screen(), Screen::Disk);
    app.update(key(&app, Named::ArrowDown).unwrap());
    assert_eq!(app.selected_disk().unwrap().path, "/dev/vdb");
    app.update(key(&app, Named::ArrowDown).unwrap());
    assert_eq!(app.selected_disk().unwrap().path, "/dev/vdb");
    app.update(key(&app, Named::Escape).unwrap());
    assert_eq!(app.screen(), Screen::Welcome);
    app.update(key(&app, Named::Enter).unwrap());
    app.update(key(&app, Named::Enter).unwrap());
    assert_eq!(app.screen(), Screen::Settings);
    assert_eq!(app.confirm_word().as_deref(), Some("vdb"));
    // Enter inside a field submits it (text inputs take Enter themselves).
    let mut ui = sim(&app);
    ui.click(selector::id("hostname")).unwrap();
    ui.typewrite("db2");
    ui.tap_key(Key::Named(Named::Enter));
    let messages: Vec<Msg> = ui.into_messages().collect();
    assert!(matches!(messages.last(), Some(Msg::Next)), "{messages:?}");

    // The last screens' two buttons: Enter is the right one, Escape the left one.
    app.update(Msg::Finished(Err("sfdisk failed".into())));
    assert_eq!(app.screen(), Screen::Failed);
    assert!(matches!(key(&app, Named::Enter), Some(Msg::Retry)));
    assert_eq!(app.update(key(&app, Named::Escape).unwrap()), Some(Request::Power(PowerAction::Poweroff)));
    app.update(Msg::Finished(Ok("6.12.117-truthdb".into())));
    assert_eq!(app.screen(), Screen::Done);
    assert_eq!(app.update(key(&app, Named::Enter).unwrap()), Some(Request::Power(PowerAction::Reboot)));
    assert_eq!(app.update(key(&app, Named::Escape).unwrap()), Some(Request::Power(PowerAction::Poweroff)));
}

#[test]
fn the_box_of_differing_pixels_holds_every_difference_and_nothing_more() {
    // 4x3 RGBA, two pixels changed: (1,0) and (2,2).
    let a = vec![0u8; 4 * 3 * 4];
    let mut b = a.clone();
    b[4] = 255; // (1,0), red
    b[(2 * 4 + 2) * 4 + 3] = 1;
    assert_eq!(differing_box(4, &a, &b), Some((2, 1, 0, 2, 2)));
    assert_eq!(differing_box(4, &a, &a), None);
}
