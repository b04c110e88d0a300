//! The installer's screens as a pure iced program: state, messages, `update` and `view`.
//!
//! Nothing here touches a device. What the screens ask for (start the install, change the
//! keyboard layout, reboot) comes back from [`App::update`] as a [`Request`] that the shell
//! (`main.rs`) carries out; the engine's progress comes back in as [`Msg::Progress`]. That
//! keeps the whole flow drivable by `iced_test`'s simulator.

use iced_core::keyboard::{self, key::Named};
use iced_core::{Alignment, Color, Element, Length, Theme, theme::Palette};
use iced_widget::{button, column, container, progress_bar, row, space, text, text_input};
use truthdb_installer::block_devices::{Disk, human_size};
use truthdb_installer::config::{self, Admin, Database, InstallConfig, PowerAction, Provision};
use truthdb_installer::events::Event as ProgressEvent;

pub type Renderer = iced_tiny_skia::Renderer;
pub type View<'a> = Element<'a, Msg, Theme, Renderer>;

/// The keyboard layouts offered on the welcome screen (xkb layout name, label).
pub const LAYOUTS: &[(&str, &str)] = &[
    ("us", "English (US)"),
    ("gb", "English (UK)"),
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
    ("it", "Italian"),
    ("ch", "Swiss"),
    ("se", "Swedish"),
    ("jp", "Japanese"),
];

/// Where the engine writes its log in the live system (shown when an install fails).
pub const LOG_PATH: &str = "/var/log/truthdb-installer.log";
/// Log lines kept for the progress screen.
const LOG_LINES: usize = 12;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    Welcome,
    Disk,
    Settings,
    Confirm,
    Installing,
    Done,
    Failed,
}

impl Screen {
    /// The name the installer prints on the serial console when the screen comes up.
    pub fn name(self) -> &'static str {
        match self {
            Screen::Welcome => "welcome",
            Screen::Disk => "disk",
            Screen::Settings => "settings",
            Screen::Confirm => "confirm",
            Screen::Installing => "installing",
            Screen::Done => "done",
            Screen::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug)]
pub enum Msg {
    Next,
    Back,
    NextLayout,
    PreviousLayout,
    SelectDisk(usize),
    Rescan,
    Hostname(String),
    AdminUser(String),
    AdminPassword(String),
    SshKey(String),
    DatabasePassword(String),
    ConfirmText(String),
    Progress(ProgressEvent),
    /// The engine finished: the installed kernel release, or what went wrong.
    Finished(Result<String, String>),
    Reboot,
    PowerOff,
    Retry,
}

/// What the shell must do for the screens.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    SetKeyboardLayout(String),
    /// List the disks again and hand them back with [`App::set_disks`].
    RescanDisks,
    /// Erase `disk` and install with `config` (already validated).
    Install {
        disk: Disk,
        config: Box<InstallConfig>,
    },
    Power(PowerAction),
}

/// What the shell learned about the machine before the first screen.
#[derive(Clone, Debug)]
pub struct Machine {
    pub version: String,
    pub disks: Vec<Disk>,
    /// The smallest disk the image fits on.
    pub min_disk_bytes: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub hostname: String,
    pub admin_user: String,
    pub admin_password: String,
    pub ssh_key: String,
    pub database_password: String,
}

pub struct App {
    machine: Machine,
    screen: Screen,
    layout: usize,
    selected_disk: Option<usize>,
    settings: Settings,
    confirm_text: String,
    progress: Option<ProgressEvent>,
    log: Vec<String>,
    failure: Option<String>,
    installed_kernel: Option<String>,
}

impl App {
    pub fn new(machine: Machine) -> App {
        let selected_disk = (!machine.disks.is_empty()).then_some(0);
        App {
            machine,
            screen: Screen::Welcome,
            layout: 0,
            selected_disk,
            settings: Settings { admin_user: "admin".into(), ..Settings::default() },
            confirm_text: String::new(),
            progress: None,
            log: Vec::new(),
            failure: None,
            installed_kernel: None,
        }
    }

    pub fn screen(&self) -> Screen {
        self.screen
    }

    /// The id of the field that takes the keyboard when the screen comes up.
    pub fn first_field(&self) -> Option<&'static str> {
        match self.screen {
            Screen::Settings => Some("hostname"),
            Screen::Confirm => Some("confirm"),
            _ => None,
        }
    }

    pub fn layout(&self) -> &'static str {
        LAYOUTS[self.layout].0
    }

    pub fn selected_disk(&self) -> Option<&Disk> {
        self.selected_disk.and_then(|i| self.machine.disks.get(i))
    }

    pub fn set_disks(&mut self, disks: Vec<Disk>) {
        self.selected_disk = (!disks.is_empty()).then_some(0);
        self.machine.disks = disks;
    }

    /// The word typed on the confirmation screen: the disk's kernel name (`vda`, `nvme0n1`).
    pub fn confirm_word(&self) -> Option<String> {
        self.selected_disk().map(|d| d.path.trim_start_matches("/dev/").to_owned())
    }

    pub fn update(&mut self, msg: Msg) -> Option<Request> {
        match msg {
            Msg::Next => return self.next(),
            Msg::Back => {
                self.screen = match self.screen {
                    Screen::Disk => Screen::Welcome,
                    Screen::Settings => Screen::Disk,
                    Screen::Confirm => Screen::Settings,
                    other => other,
                };
            }
            Msg::NextLayout | Msg::PreviousLayout if self.screen == Screen::Welcome => {
                let n = LAYOUTS.len();
                self.layout =
                    if matches!(msg, Msg::NextLayout) { (self.layout + 1) % n } else { (self.layout + n - 1) % n };
                return Some(Request::SetKeyboardLayout(self.layout().to_owned()));
            }
            Msg::NextLayout | Msg::PreviousLayout => {}
            Msg::SelectDisk(i) if i < self.machine.disks.len() => self.selected_disk = Some(i),
            Msg::SelectDisk(_) => {}
            Msg::Rescan => return Some(Request::RescanDisks),
            Msg::Hostname(v) => self.settings.hostname = v,
            Msg::AdminUser(v) => self.settings.admin_user = v,
            Msg::AdminPassword(v) => self.settings.admin_password = v,
            Msg::SshKey(v) => self.settings.ssh_key = v,
            Msg::DatabasePassword(v) => self.settings.database_password = v,
            Msg::ConfirmText(v) => self.confirm_text = v,
            Msg::Progress(event) => {
                self.log.push(event.to_string());
                if self.log.len() > LOG_LINES {
                    self.log.remove(0);
                }
                self.progress = Some(event);
            }
            Msg::Finished(Ok(kernel)) => {
                self.installed_kernel = Some(kernel);
                self.screen = Screen::Done;
            }
            Msg::Finished(Err(message)) => {
                self.failure = Some(message);
                self.screen = Screen::Failed;
            }
            Msg::Reboot if matches!(self.screen, Screen::Done | Screen::Failed) => {
                return Some(Request::Power(PowerAction::Reboot));
            }
            Msg::PowerOff if matches!(self.screen, Screen::Done | Screen::Failed | Screen::Disk) => {
                return Some(Request::Power(PowerAction::Poweroff));
            }
            Msg::Reboot | Msg::PowerOff => {}
            Msg::Retry if self.screen == Screen::Failed => {
                self.failure = None;
                self.progress = None;
                self.log.clear();
                self.confirm_text.clear();
                self.screen = Screen::Disk;
                return Some(Request::RescanDisks);
            }
            Msg::Retry => {}
        }
        None
    }

    fn next(&mut self) -> Option<Request> {
        match self.screen {
            Screen::Welcome => self.screen = Screen::Disk,
            Screen::Disk if self.selected_disk().is_some() => self.screen = Screen::Settings,
            Screen::Settings if self.settings_errors().is_empty() => {
                self.confirm_text.clear();
                self.screen = Screen::Confirm;
            }
            Screen::Confirm if self.confirmed() => {
                let disk = self.selected_disk()?.clone();
                let config = self.install_config().ok()?;
                self.progress = None;
                self.log.clear();
                self.screen = Screen::Installing;
                return Some(Request::Install { disk, config: Box::new(config) });
            }
            Screen::Done => return Some(Request::Power(PowerAction::Reboot)),
            _ => {}
        }
        None
    }

    fn confirmed(&self) -> bool {
        self.confirm_word().is_some_and(|word| self.confirm_text.trim() == word)
    }

    /// The settings as the engine's install config; its validation is the engine's own.
    pub fn install_config(&self) -> Result<InstallConfig, String> {
        let s = &self.settings;
        let password_hash = if s.admin_password.is_empty() {
            None
        } else {
            Some(truthdb_installer::config::password_hash(&s.admin_password)?)
        };
        let config = InstallConfig {
            disk: None,
            wipe: Some(true),
            hostname: s.hostname.trim().to_owned(),
            provision: Provision::Install,
            admin: Some(Admin {
                user: s.admin_user.trim().to_owned(),
                ssh_authorized_keys: if s.ssh_key.trim().is_empty() {
                    vec![]
                } else {
                    vec![s.ssh_key.trim().to_owned()]
                },
                password_hash,
            }),
            // The GUI does not offer TDS (the serial console and install.toml do).
            database: Some(Database { admin_password: s.database_password.clone(), tds: false }),
            power: PowerAction::Reboot,
            // The unattended path's guards: a person here has chosen and confirmed the disk.
            reinstall: false,
            allow_bios: false,
        };
        config.validate().map(|()| config)
    }

    /// What is wrong with the settings, field by field (empty when they can be used). Checked
    /// on every keystroke, without hashing the password.
    pub fn settings_errors(&self) -> Vec<(Field, String)> {
        let s = &self.settings;
        let mut errors = Vec::new();
        let mut check = |field: Field, result: Result<(), String>| {
            if let Err(why) = result {
                errors.push((field, why));
            }
        };
        // The engine's own checks: what passes here passes the install config's validation.
        check(Field::Hostname, config::check_hostname(s.hostname.trim()));
        check(Field::AdminUser, config::check_login_name(s.admin_user.trim()));
        if s.admin_password.is_empty() && s.ssh_key.trim().is_empty() {
            check(Field::AdminPassword, Err("a password or an SSH key (or both)".into()));
        } else if !s.admin_password.is_empty() && s.admin_password.chars().count() < 8 {
            check(Field::AdminPassword, Err("at least 8 characters".into()));
        }
        if !s.ssh_key.trim().is_empty() {
            check(Field::SshKey, config::check_ssh_public_key(s.ssh_key.trim()));
        }
        check(Field::DatabasePassword, config::check_database_password(&s.database_password));
        errors
    }

    /// The screen's keyboard shortcuts, for keys no widget took: Enter goes on, Escape goes
    /// back (or powers off where there is no back), the arrows choose (buttons cannot take
    /// focus in iced, so this is how a keyboard alone gets through every screen).
    pub fn shortcut(&self, key: &keyboard::Key) -> Option<Msg> {
        let keyboard::Key::Named(named) = key else { return None };
        match (self.screen, named) {
            (Screen::Installing, _) => None,
            // Enter is the right-hand button, Escape the left-hand one.
            (Screen::Failed, Named::Enter) => Some(Msg::Retry),
            (Screen::Done | Screen::Failed, Named::Escape) => Some(Msg::PowerOff),
            (Screen::Disk, Named::Enter) if self.machine.disks.is_empty() => Some(Msg::Rescan),
            (Screen::Disk, Named::Escape) if self.machine.disks.is_empty() => Some(Msg::PowerOff),
            (_, Named::Enter) => Some(Msg::Next),
            (_, Named::Escape) => Some(Msg::Back),
            (Screen::Welcome, Named::ArrowRight | Named::ArrowDown) => Some(Msg::NextLayout),
            (Screen::Welcome, Named::ArrowLeft | Named::ArrowUp) => Some(Msg::PreviousLayout),
            (Screen::Disk, Named::ArrowDown) => {
                Some(Msg::SelectDisk((self.selected_disk? + 1).min(self.machine.disks.len() - 1)))
            }
            (Screen::Disk, Named::ArrowUp) => Some(Msg::SelectDisk(self.selected_disk?.saturating_sub(1))),
            _ => None,
        }
    }

    /// Every text is in the embedded Fira Sans regular (no bold, no monospace): system fonts
    /// would make the image's rendering, and the snapshot hashes, depend on the machine.
    pub fn view(&self) -> View<'_> {
        let body = match self.screen {
            Screen::Welcome => self.welcome(),
            Screen::Disk => self.disk_choice(),
            Screen::Settings => self.settings_form(),
            Screen::Confirm => self.confirmation(),
            Screen::Installing => self.installing(),
            Screen::Done => self.done(),
            Screen::Failed => self.failed(),
        };
        let header = row![
            text("TruthDB OS").size(28),
            space::horizontal(),
            text(format!("Installer {}", self.machine.version)).size(16).color(MUTED),
        ]
        .align_y(Alignment::Center);
        let page = column![header, body].spacing(32).max_width(760);
        container(page).center_x(Length::Fill).padding(48).into()
    }

    fn welcome(&self) -> View<'_> {
        column![
            text("Welcome").size(36),
            text("This installs the TruthDB OS database appliance on a disk of this machine.").size(18),
            text("Keyboard layout").size(16).color(MUTED),
            row![
                button(text("<")).on_press(Msg::PreviousLayout).style(button::secondary),
                text(LAYOUTS[self.layout].1).size(20).width(220).center(),
                button(text(">")).on_press(Msg::NextLayout).style(button::secondary),
            ]
            .spacing(12)
            .align_y(Alignment::Center),
            hint("Left/Right change the layout. Enter continues."),
            nav(None, "Start", Some(Msg::Next)),
        ]
        .spacing(20)
        .into()
    }

    fn disk_choice(&self) -> View<'_> {
        if self.machine.disks.is_empty() {
            return column![
                text("No suitable disk").size(36),
                text(format!(
                    "This machine has no disk the appliance can be installed on. It needs a writable disk of \
                     at least {}, other than the medium the installer started from.",
                    human_size(self.machine.min_disk_bytes)
                ))
                .size(18),
                hint("Connect a disk, then rescan (Enter). Escape powers off."),
                row![
                    button(text("Power off")).on_press(Msg::PowerOff).style(button::secondary),
                    space::horizontal(),
                    button(text("Rescan")).on_press(Msg::Rescan),
                ],
            ]
            .spacing(20)
            .into();
        }
        let mut list = column![].spacing(8);
        for (i, disk) in self.machine.disks.iter().enumerate() {
            let selected = self.selected_disk == Some(i);
            let label = column![
                text(format!("{}  {}", disk.model.as_deref().unwrap_or("Unknown model"), human_size(disk.size_bytes)))
                    .size(18),
                text(format!(
                    "{}   serial {}{}",
                    disk.path,
                    disk.serial.as_deref().unwrap_or("none"),
                    disk.transport.as_deref().map(|t| format!("   {t}")).unwrap_or_default()
                ))
                .size(14),
            ]
            .spacing(4);
            let style = if selected { button::primary } else { button::secondary };
            list = list.push(button(label).on_press(Msg::SelectDisk(i)).width(Length::Fill).padding(12).style(style));
        }
        column![
            text("Choose the disk").size(36),
            text("Everything on the disk you choose will be erased.").size(18),
            list,
            hint("Up/Down choose a disk. Enter continues, Escape goes back."),
            nav(Some(Msg::Back), "Next", Some(Msg::Next)),
        ]
        .spacing(20)
        .into()
    }

    fn settings_form(&self) -> View<'_> {
        let errors = self.settings_errors();
        let error_of = |field: Field| errors.iter().find(|(f, _)| *f == field).map(|(_, m)| m.clone());
        let s = &self.settings;
        let field =
            |label: &'static str, id: &'static str, value: &str, on: fn(String) -> Msg, secure: bool, f: Field| {
                let input =
                    text_input("", value).id(id).on_input(on).on_submit(Msg::Next).secure(secure).padding(8).size(16);
                let message = match error_of(f) {
                    // Untouched fields are not shouted at; the Next button stays off until all are good.
                    Some(m) if !value.is_empty() || f == Field::AdminPassword && !s.ssh_key.is_empty() => {
                        text(m).size(13).color(DANGER)
                    }
                    _ => text(" ").size(13),
                };
                column![text(label).size(14).color(MUTED), input, message].spacing(4)
            };
        let next = errors.is_empty().then_some(Msg::Next);
        column![
            text("Settings").size(36),
            field("Host name", "hostname", &s.hostname, Msg::Hostname, false, Field::Hostname),
            field("Administrator login", "admin-user", &s.admin_user, Msg::AdminUser, false, Field::AdminUser),
            field(
                "Administrator password",
                "admin-password",
                &s.admin_password,
                Msg::AdminPassword,
                true,
                Field::AdminPassword
            ),
            field("Administrator SSH public key (optional)", "ssh-key", &s.ssh_key, Msg::SshKey, false, Field::SshKey),
            field(
                "Database administrator password",
                "database-password",
                &s.database_password,
                Msg::DatabasePassword,
                true,
                Field::DatabasePassword
            ),
            hint("Tab moves between fields. Enter continues when every field is good."),
            nav(Some(Msg::Back), "Next", next),
        ]
        .spacing(6)
        .into()
    }

    fn confirmation(&self) -> View<'_> {
        let (Some(disk), Some(word)) = (self.selected_disk(), self.confirm_word()) else {
            return text("no disk selected").into();
        };
        let go = self.confirmed().then_some(Msg::Next);
        column![
            text("Erase this disk?").size(36),
            text(disk.describe()).size(20),
            text("Everything on it will be lost: partitions, file systems, data.").size(18).color(DANGER),
            text(format!("Type {word} to confirm.")).size(18),
            text_input(&word, &self.confirm_text)
                .id("confirm")
                .on_input(Msg::ConfirmText)
                .on_submit(Msg::Next)
                .padding(8),
            nav(Some(Msg::Back), "Erase and install", go),
        ]
        .spacing(20)
        .into()
    }

    fn installing(&self) -> View<'_> {
        let (fraction, phase) = match &self.progress {
            Some(p) => (p.fraction as f32, p.phase().name()),
            None => (0.0, "starting"),
        };
        let mut log = column![].spacing(2);
        for line in &self.log {
            log = log.push(text(line.as_str()).size(13).color(MUTED));
        }
        let disk = self.selected_disk().map(|d| d.path.clone()).unwrap_or_default();
        column![
            text("Installing").size(36),
            text(format!("TruthDB OS is being installed on {disk}. This takes a few minutes.")).size(18),
            row![text(phase).size(18), space::horizontal(), text(format!("{:.0}%", fraction * 100.0)).size(18)],
            progress_bar(0.0..=1.0, fraction).girth(14),
            container(log).padding(12).width(Length::Fill).height(260).style(container::bordered_box),
        ]
        .spacing(16)
        .into()
    }

    fn done(&self) -> View<'_> {
        let disk = self.selected_disk().map(|d| d.path.clone()).unwrap_or_default();
        column![
            text("Installed").size(36),
            text(format!("TruthDB OS {} is installed on {disk}.", self.machine.version)).size(18),
            text("Remove the installation medium, then restart to start the appliance.").size(18),
            hint("Enter restarts, Escape powers off."),
            row![
                button(text("Power off")).on_press(Msg::PowerOff).style(button::secondary),
                space::horizontal(),
                button(text("Restart")).on_press(Msg::Reboot),
            ],
        ]
        .spacing(20)
        .into()
    }

    fn failed(&self) -> View<'_> {
        column![
            text("The install failed").size(36).color(DANGER),
            text(self.failure.as_deref().unwrap_or("unknown error")).size(16),
            text(format!("The full log is {LOG_PATH} in the live system.")).size(16).color(MUTED),
            hint("Enter tries again, Escape powers off."),
            row![
                button(text("Power off")).on_press(Msg::PowerOff).style(button::secondary),
                space::horizontal(),
                button(text("Try again")).on_press(Msg::Retry),
            ],
        ]
        .spacing(20)
        .into()
    }
}

/// The settings fields, for errors shown next to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Hostname,
    AdminUser,
    AdminPassword,
    SshKey,
    DatabasePassword,
}

const MUTED: Color = Color::from_rgb(0.62, 0.66, 0.72);
const DANGER: Color = Color::from_rgb(0.95, 0.45, 0.42);

fn hint(s: &'static str) -> iced_widget::Text<'static, Theme, Renderer> {
    text(s).size(14).color(MUTED)
}

/// Back on the left, the primary action on the right (disabled when `next` is `None`).
fn nav<'a>(back: Option<Msg>, label: &'static str, next: Option<Msg>) -> View<'a> {
    let mut r = row![].spacing(12);
    if let Some(back) = back {
        r = r.push(button(text("Back")).on_press(back).style(button::secondary).padding([8, 20]));
    }
    r = r.push(space::horizontal());
    r = r.push(button(text(label)).on_press_maybe(next).padding([8, 20]));
    r.into()
}

/// The installer's colours: dark slate, one blue accent.
pub fn theme() -> Theme {
    Theme::custom(
        "TruthDB",
        Palette {
            background: Color::from_rgb8(0x16, 0x1b, 0x22),
            text: Color::from_rgb8(0xe6, 0xea, 0xef),
            primary: Color::from_rgb8(0x1a, 0x5f, 0xb4),
            success: Color::from_rgb8(0x3f, 0xb9, 0x50),
            warning: Color::from_rgb8(0xd2, 0x99, 0x22),
            danger: Color::from_rgb8(0xf8, 0x51, 0x49),
        },
    )
}
