//! `truthdb-installer-gui`: the graphical installer of the live system. Started on tty1 by
//! truthdb-installer-gui.service; draws straight on DRM/KMS (else /dev/fb0), reads keyboard
//! and pointer through libinput, and installs with the engine. What it does is also printed
//! on the console (the serial port): `TRUTHDB-GUI-SCREEN <name>` as each screen comes up.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use truthdb_installer::config::PowerAction;
use truthdb_installer::medium::{self, MEDIUM_MOUNT};
use truthdb_installer::spec::{IMAGE_SPEC_PATH, ImageSpec};
use truthdb_installer::{block_devices, install, list_disks, live_medium_device};
use truthdb_installer_gui::app::{App, Machine, Request, Screen};
use truthdb_installer_gui::display::{self, Output, fbdev::Fbdev, kms};
use truthdb_installer_gui::engine::{self, Mailbox};
use truthdb_installer_gui::input::Input;
use truthdb_installer_gui::shell::Shell;
use truthdb_installer_gui::vt::VtGuard;
use truthdb_installer_gui::{VERSION, bench};

/// Exit status when no display can be driven: the service does not restart then.
const EXIT_NO_DISPLAY: u8 = 69;

/// The TruthDB OS graphical installer (draws on DRM/KMS; run by truthdb-installer-gui.service).
#[derive(Parser)]
#[command(name = "truthdb-installer-gui", version = VERSION, about)]
struct Cli {
    /// Keyboard layout at start (xkb name); the welcome screen changes it.
    #[arg(long, default_value = "us")]
    layout: String,
    /// Where to draw.
    #[arg(long, value_enum, default_value_t = OutputChoice::Auto)]
    output: OutputChoice,
    /// The virtual terminal to switch to graphics mode (its keyboard is turned off).
    #[arg(long, default_value = "/dev/tty1")]
    vt: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputChoice {
    /// DRM/KMS, else /dev/fb0.
    Auto,
    Kms,
    Fbdev,
}

#[derive(Subcommand)]
enum Command {
    /// Exit 0 if the graphical installer should start (no unattended install config, no
    /// `truthdb.installer=serial`), else 1 (the service's ExecCondition).
    ShouldRun,
    /// Print full-frame render times of the welcome, disk, settings and installing screens
    /// (tiny-skia, no display needed).
    BenchRender {
        /// Frames per screen and size.
        #[arg(long, default_value_t = 50)]
        frames: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A crash is said on the console (and so in the journal and on the serial port) before the
    // unwinding puts the VT back in text mode; systemd then starts the installer again.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        println!("truthdb-installer-gui: CRASHED: {info}");
        default_hook(info);
    }));
    match cli.command {
        Some(Command::ShouldRun) => return should_run(),
        Some(Command::BenchRender { frames }) => {
            for line in bench::run(&[(1920, 1080), (1024, 768)], frames) {
                println!("{line}");
            }
            return ExitCode::SUCCESS;
        }
        None => {}
    }
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<NoDisplay>().is_some() => {
            println!("TRUTHDB-GUI-NO-DISPLAY: {e:#}");
            println!(
                "truthdb-installer-gui: nothing to draw on; install unattended instead: put an install config at \
                 {}/{} or name one with {}=<path> (see installer/README.md)",
                MEDIUM_MOUNT,
                medium::CONFIG_ON_MEDIUM,
                medium::KERNEL_PARAMETER
            );
            ExitCode::from(EXIT_NO_DISPLAY)
        }
        Err(e) => {
            println!("truthdb-installer-gui: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn should_run() -> ExitCode {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    match medium::front_end(&cmdline, Path::new(MEDIUM_MOUNT)) {
        medium::FrontEnd::Graphical => ExitCode::SUCCESS,
        // A config, or a broken reference to one: the unattended path reports on it.
        medium::FrontEnd::Unattended => {
            println!(
                "truthdb-installer-gui: an unattended install config is present: the graphical installer stays off"
            );
            ExitCode::FAILURE
        }
        medium::FrontEnd::SerialConsole => {
            println!(
                "truthdb-installer-gui: the serial console installer was chosen ({}=serial): the graphical \
                 installer stays off",
                medium::FRONT_END_PARAMETER
            );
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug)]
struct NoDisplay(String);

impl std::fmt::Display for NoDisplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for NoDisplay {}

fn open_output(choice: OutputChoice) -> Result<Box<dyn Output>> {
    let kms_error = match choice {
        OutputChoice::Fbdev => "not tried (--output fbdev)".to_owned(),
        _ => match kms::open_best() {
            Ok(kms) => return Ok(Box::new(kms)),
            Err(e) => e.to_string(),
        },
    };
    if choice == OutputChoice::Kms {
        return Err(NoDisplay(format!("DRM/KMS: {kms_error}")).into());
    }
    match Fbdev::open(Path::new("/dev/fb0")) {
        Ok(fb) => Ok(Box::new(fb)),
        Err(e) => Err(NoDisplay(format!("DRM/KMS: {kms_error}; /dev/fb0: {e}")).into()),
    }
}

/// Opens the display again after the old one went away. A native GPU driver can take seconds
/// to replace simpledrm (firmware loading); if none comes, the error is not a `NoDisplay`, so
/// the installer exits in a way systemd restarts.
fn reopen_output(choice: OutputChoice) -> Result<Box<dyn Output>> {
    const PATIENCE: Duration = Duration::from_secs(30);
    let started = Instant::now();
    loop {
        match open_output(choice) {
            Ok(output) => return Ok(output),
            Err(e) if started.elapsed() < PATIENCE => {
                println!("truthdb-installer-gui: waiting for a display: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => anyhow::bail!("the display went away and none came back within {PATIENCE:?}: {e:#}"),
        }
    }
}

fn machine(spec: &ImageSpec) -> Result<Machine> {
    let min = install::layout_for(spec).min_disk_bytes();
    let disks = block_devices::installable(&list_disks()?, live_medium_device().as_deref(), min);
    Ok(Machine { version: spec.version.clone(), disks, min_disk_bytes: min })
}

fn uptime() -> String {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn rss_kib() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").to_owned()))
        })
        .unwrap_or_default()
}

/// The install thread, once an install has started.
type InstallThread = Option<JoinHandle<()>>;

fn running(install: &InstallThread) -> bool {
    install.as_ref().is_some_and(|thread| !thread.is_finished())
}

fn run(cli: &Cli) -> Result<()> {
    println!("truthdb-installer-gui {VERSION}: starting");
    let spec_path = Path::new("/").join(IMAGE_SPEC_PATH);
    let spec = ImageSpec::load(&spec_path).with_context(|| format!("reading {}", spec_path.display()))?;
    // However the UI ends, an install under way finishes or fails first (see the function).
    engine::outlive_install(|install| ui(cli, &spec, install))
}

fn ui(cli: &Cli, spec: &ImageSpec, install: &mut InstallThread) -> Result<()> {
    // udev names the disks (by-id) and loads the GPU driver first.
    let _ = std::process::Command::new("udevadm").args(["settle", "--timeout=20"]).status();

    let mut output = open_output(cli.output)?;
    println!("truthdb-installer-gui: drawing on {}", output.describe());
    let _vt = match VtGuard::take(&cli.vt) {
        Ok(guard) => Some(guard),
        Err(e) => {
            println!("truthdb-installer-gui: {} stays in text mode: {e}", cli.vt.display());
            None
        }
    };
    let mut input = Input::open(&cli.layout)?;
    let drm_events = udev::MonitorBuilder::new()
        .and_then(|b| b.match_subsystem("drm"))
        .and_then(|b| b.listen())
        .context("watching udev for GPU driver changes")?;
    let (wake_rx, wake_tx) = UnixStream::pair().context("creating the wake-up socket")?;
    wake_rx.set_nonblocking(true)?;
    let (sender, messages) = mpsc::channel();
    let mailbox = Mailbox { sender, wake: Arc::new(wake_tx) };

    let mut app = App::new(machine(spec)?);
    let (w, h) = output.size();
    let mut shell = Shell::new(w, h);
    let mut shown: Option<Screen> = None;
    let mut cursor_drawn: Option<(u32, u32)> = None;
    let mut output_lost = false;

    loop {
        // Wait for input, the engine, the GPU driver or the next timed redraw.
        let deadline = [shell.next_redraw(), input.next_repeat()].into_iter().flatten().min();
        let timeout = match deadline {
            _ if output_lost => 500,
            Some(t) => t.saturating_duration_since(Instant::now()).as_millis().min(60_000) as i32,
            None => -1,
        };
        let mut fds = [input.fd(), drm_events.as_raw_fd(), wake_rx.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: poll on three valid descriptors we own.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };

        input.dispatch(&mut shell)?;
        input.repeat_due(&mut shell);
        let mut drained = [0u8; 64];
        while std::io::Read::read(&mut &wake_rx, &mut drained).is_ok_and(|n| n > 0) {}
        // A native driver replacing simpledrm removes one card and adds another. (Change
        // events also follow our own mode setting: those are not a reason to reopen.)
        let cards_changed = drm_events
            .iter()
            .filter(|e| matches!(e.event_type(), udev::EventType::Add | udev::EventType::Remove))
            .count()
            > 0;
        if cards_changed || output_lost {
            drop(output);
            output = reopen_output(cli.output)?;
            println!("truthdb-installer-gui: drawing on {}", output.describe());
            let (w, h) = output.size();
            if (w, h) != shell.size() {
                shell.resize(w, h);
            }
            shell.invalidate();
            cursor_drawn = None;
            output_lost = false;
        }

        // Input first, one change at a time (see `Shell::feed`), then the engine's news.
        let mut power = None;
        while power.is_none() {
            for request in shell.feed(&mut app) {
                power = power.or(carry_out(request, &mut app, &mut input, spec, &mailbox, install)?);
            }
            if !shell.has_input() {
                break;
            }
        }
        for msg in messages.try_iter() {
            if let Some(request) = app.update(msg) {
                power = power.or(carry_out(request, &mut app, &mut input, spec, &mailbox, install)?);
            }
        }
        if let Some(verb) = power {
            drop(output);
            std::process::Command::new("systemctl").arg(verb).status().context("systemctl")?;
            return Ok(());
        }
        shell.follow_screen(&app);

        let mut rects = shell.draw(&app);
        let cursor = shell.cursor_pixel();
        if cursor != cursor_drawn {
            rects.extend(cursor_drawn.and_then(|c| display::cursor_rect(c, shell.size())));
            rects.extend(cursor.and_then(|c| display::cursor_rect(c, shell.size())));
        }
        if !rects.is_empty() {
            if let Err(e) = display::present(output.as_mut(), shell.pixels(), shell.size().0, &rects, cursor) {
                println!("truthdb-installer-gui: drawing failed ({e}); reopening the display");
                output_lost = true;
                continue;
            }
            cursor_drawn = cursor;
        }
        if shown != Some(app.screen()) {
            let first = if shown.is_none() {
                format!(" uptime={}s output={:?}", uptime(), output.describe())
            } else {
                String::new()
            };
            println!("TRUTHDB-GUI-SCREEN {}{first} rss_kib={}", app.screen().name(), rss_kib());
            shown = Some(app.screen());
        }
    }
}

/// Does what a screen asked for; a power action is handed back (as systemctl's verb) for the
/// loop to end with.
fn carry_out(
    request: Request,
    app: &mut App,
    input: &mut Input,
    spec: &ImageSpec,
    mailbox: &Mailbox,
    install: &mut InstallThread,
) -> Result<Option<&'static str>> {
    match request {
        Request::SetKeyboardLayout(layout) => {
            if let Err(e) = input.set_layout(&layout) {
                println!("truthdb-installer-gui: {e:#}");
            }
        }
        Request::RescanDisks => {
            let _ = std::process::Command::new("udevadm").args(["settle", "--timeout=10"]).status();
            app.set_disks(machine(spec)?.disks);
        }
        Request::Install { disk, config } => {
            if running(install) {
                println!("truthdb-installer-gui: an install is already under way; not starting another");
            } else {
                *install = Some(engine::start(disk, *config, spec.clone(), mailbox.clone()));
            }
        }
        Request::Power(action) => {
            let verb = match action {
                PowerAction::Reboot => "reboot",
                PowerAction::Poweroff => "poweroff",
            };
            // No screen offers power during an install (the done screen comes with the
            // engine's last message, a moment before its thread ends); should one ask, the
            // install ends first.
            if let Some(thread) = install.take().filter(|thread| !thread.is_finished()) {
                println!("truthdb-installer-gui: waiting for the install under way to end before {verb}");
                let _ = thread.join();
            }
            println!("truthdb-installer-gui: {verb}");
            return Ok(Some(verb));
        }
    }
    Ok(None)
}
