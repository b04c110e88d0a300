//! The whole installer flow through iced_test's simulator (clicks and typing, tiny-skia on the
//! CPU), plus a snapshot hash of every screen. Snapshots live in tests/snapshots/; after an
//! intended visual change, delete the .sha256 files and run the tests once to record new ones
//! (look at the PNGs from `TRUTHDB_GUI_SNAPSHOT_PNG=1` before committing them).

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

fn snapshot(app: &App, name: &str) {
    let mut ui = sim(app);
    let snapshot = ui.snapshot(&theme()).unwrap();
    let path = format!("{}/tests/snapshots/{name}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("TRUTHDB_GUI_SNAPSHOT_PNG").is_some() {
        snapshot.matches_image(&path).unwrap();
    }
    assert!(
        snapshot.matches_hash(&path).unwrap(),
        "screen {name} no longer matches tests/snapshots/{name}-tiny-skia.sha256"
    );
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
    assert_eq!(config.admin.user, "admin");
    assert_eq!(config.admin.ssh_authorized_keys, vec![SSH_KEY.to_owned()]);
    let hash = config.admin.password_hash.as_deref().unwrap();
    assert!(hash.starts_with("$6$") && !hash.contains("short-but-long-now"), "{hash}");
    assert_eq!(config.database.admin_password, "correct horse battery");
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
