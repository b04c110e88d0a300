//! `cargo xtask gui-test`: the graphical installer, end to end, as a person would use it, in
//! QEMU (TCG, OVMF, `-vga std`, so bochs-drm; no install config on the ISO):
//!
//! 1. the ISO boots beside a blank virtio disk; the installer says on the serial console which
//!    screen is up (`TRUTHDB-GUI-SCREEN welcome ...`), and a QMP `screendump` of each screen
//!    must be the installer's picture (its size and colours), not a text console;
//! 2. QMP key presses drive it: Enter, Enter, the settings typed in (Tab between fields), the
//!    disk's name typed to confirm, Enter; it installs and shows the done screen; Enter reboots;
//! 3. the installed disk boots alone and serves, checked as the unattended install's is (boot
//!    marker, psql over TLS with the typed database password and none without TLS, ssh with
//!    the typed key, the TLS certificate verified, the firewall loaded).
//!
//! Beside all that, a machine with no display adapter at all: the installer must say so on the
//! serial console and its unit's failure handler must say the installer has stopped.
//!
//! The screendumps stay in `<work>/gui-test/screens/` as the test's artifacts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::util::progress::{format_duration, stage};
use crate::vm::install_test::{self, ADMIN, Credentials, DISK_GIB, HOSTNAME, InstallTestConfig, TARGET_SERIAL};
use crate::vm::qemu::{Vm, VmSpec, cdrom, installer_progress, line_from, virtio_disk};
use crate::vm::qmp::Qmp;

/// What the serial console says when a screen comes up.
const SCREEN_MARKER: &str = "TRUTHDB-GUI-SCREEN";
/// How long one key press may take to change the screen (TCG is slow, but not this slow).
const STEP: Duration = Duration::from_secs(120);
/// The installer's background colour (installer/gui/src/app.rs `theme()`).
const BACKGROUND: [u8; 3] = [0x16, 0x1b, 0x22];

pub struct GuiTestConfig {
    pub iso: PathBuf,
    pub work_dir: PathBuf,
    pub timeout: Duration,
    pub memory_mib: u32,
    pub expected_version: String,
}

/// `cargo xtask gui-test`.
#[derive(clap::Args, Debug)]
pub struct GuiTestArgs {
    #[command(flatten)]
    vm: crate::vm::install_test::InstallVmArgs,
}

impl GuiTestArgs {
    pub fn run(self, project: &crate::project::Project) -> Result<()> {
        let _locks = project.lock_work_subdir("gui-test")?;
        use crate::doctor::Purpose;
        crate::doctor::ensure(&[Purpose::BootTest, Purpose::InstallTest])?;
        let config = GuiTestConfig {
            iso: self.vm.iso.unwrap_or_else(|| project.default_iso()),
            work_dir: project.work_dir().join("gui-test"),
            timeout: Duration::from_secs(self.vm.timeout),
            memory_mib: self.vm.memory,
            expected_version: project.version.clone(),
        };
        run(&config)
    }
}

pub fn run(config: &GuiTestConfig) -> Result<()> {
    if !config.iso.is_file() {
        bail!("no ISO at {} (run `cargo xtask iso` first)", config.iso.display());
    }
    let dir = &config.work_dir;
    let screens = dir.join("screens");
    std::fs::create_dir_all(&screens)?;
    let credentials = Credentials::new(dir)?;
    let admin_password = format!("{}-admin", credentials.password);
    let target = dir.join("gui-installed.raw");
    install_test::blank_disk(&target, DISK_GIB)?;
    let socket = dir.join("qmp.sock");

    // The machine without a display needs nothing of the install: it boots beside it (each VM
    // waits for one of the machine's VM slots).
    let (no_display_result, install_result) = std::thread::scope(|scope| {
        let alone = scope.spawn(|| {
            stage("gui test", |s| {
                s.set("booting the ISO on a machine without a display (-vga none)");
                no_display(config, dir)
            })
        });
        let install =
            scope.spawn(|| graphical_install(config, &credentials, &admin_password, &target, &socket, &screens));
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a thread of the gui test panicked")))
        };
        (join(alone), join(install))
    });
    match (no_display_result, install_result) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => bail!("{a:#}\n{b:#}"),
    }
}

/// The install through the graphical installer, driven over QMP, then the installed disk.
fn graphical_install(
    config: &GuiTestConfig,
    credentials: &Credentials,
    admin_password: &str,
    target: &Path,
    socket: &Path,
    screens: &Path,
) -> Result<()> {
    let dir = &config.work_dir;

    stage("gui test", |s| {
        s.set("booting the ISO (UEFI, -vga std, blank virtio disk)");
        let vm = Vm::start(
            &VmSpec::uefi("gui-install", dir)
                .memory(config.memory_mib)
                .media(cdrom(&config.iso))
                .media(virtio_disk(target, "raw", TARGET_SERIAL))
                .qmp(socket)
                .silence_limit(install_test::INSTALL_SILENCE_LIMIT),
        )?;
        let mut qmp = Qmp::connect(socket, Duration::from_secs(30))?;
        let mut screen_no = 0;
        let mut shot = |qmp: &mut Qmp, name: &str| -> Result<String> {
            screen_no += 1;
            let png = screens.join(format!("{screen_no:02}-{name}.png"));
            qmp.screendump(&png)?;
            check_graphical(&png).with_context(|| format!("the {name} screen ({})", png.display()))
        };

        let welcome = wait_screen(&vm, "welcome", config.timeout)?;
        let up_after = vm.elapsed();
        drawn_through(&welcome, STD_VGA_DRM)
            .context("the std VGA display (the support list's QEMU/Proxmox default)")?;
        let picture = shot(&mut qmp, "welcome")?;
        println!("PASS graphical installer up {} after power-on (TCG): {welcome}", format_duration(up_after));
        println!("PASS welcome screen captured: {picture}");

        s.set("welcome -> disk choice (Enter)");
        qmp.press(&["ret"])?;
        wait_screen(&vm, "disk", STEP)?;
        shot(&mut qmp, "disk")?;

        s.set("disk -> settings (Enter), typing the settings");
        qmp.press(&["ret"])?;
        wait_screen(&vm, "settings", STEP)?;
        qmp.type_text(HOSTNAME)?;
        qmp.press(&["tab"])?;
        for _ in 0.."admin".len() {
            qmp.press(&["backspace"])?;
        }
        qmp.type_text(ADMIN)?;
        qmp.press(&["tab"])?;
        qmp.type_text(admin_password)?;
        qmp.press(&["tab"])?;
        qmp.type_text(&credentials.public_key)?;
        qmp.press(&["tab"])?;
        qmp.type_text(&credentials.password)?;
        std::thread::sleep(Duration::from_secs(2));
        shot(&mut qmp, "settings")?;
        qmp.press(&["ret"])?;
        wait_screen(&vm, "confirm", STEP)
            .context("the settings typed over QMP were not accepted (see the settings screendump)")?;
        shot(&mut qmp, "confirm")?;

        s.set("confirming with the disk's name (vda)");
        qmp.type_text("vda")?;
        qmp.press(&["ret"])?;
        wait_screen(&vm, "installing", STEP)?;
        std::thread::sleep(Duration::from_secs(20));
        shot(&mut qmp, "installing")?;

        s.set("installing");
        let installing_since = vm.elapsed();
        let mut last = String::new();
        vm.wait_for("the done screen", config.timeout + installing_since, |serial, _| {
            if let Some(progress) = installer_progress(serial, &mut last) {
                s.set(&format!("installing {progress}"));
            }
            if let Some(line) = serial.lines().find(|l| l.contains("TRUTHDB-INSTALL-FAILED")) {
                return Some(Err(anyhow::anyhow!("the install failed: {}", line.trim())));
            }
            serial.lines().find(|l| l.contains(&format!("{SCREEN_MARKER} done"))).map(|l| Ok(l.trim().to_owned()))
        })?;
        let install_time = vm.elapsed() - installing_since;
        shot(&mut qmp, "done")?;
        println!("PASS installed through the graphical installer in {} (TCG)", format_duration(install_time));

        s.set("Restart (Enter)");
        qmp.press(&["ret"])?;
        // -no-reboot: the guest's reboot ends QEMU.
        vm.wait_for("the reboot", Duration::from_secs(120) + vm.elapsed(), |serial, exited| {
            exited.then(|| Ok(serial.contains("truthdb-installer-gui: reboot")))
        })?;
        Ok(())
    })?;
    println!("PASS screens captured: {}", screens.display());

    stage("gui test", |s| {
        s.set("booting the disk installed through the GUI");
        let check = InstallTestConfig {
            iso: config.iso.clone(),
            work_dir: dir.clone(),
            timeout: config.timeout,
            memory_mib: config.memory_mib,
            expected_version: config.expected_version.clone(),
            disk_image_installer: None,
            negative: false,
            unattended_install: false,
        };
        install_test::check_appliance(
            "gui-installed",
            target,
            "raw",
            &check,
            credentials,
            Some(admin_password),
            &install_test::BootExtras::default(),
        )
        .map(drop)
    })?;
    let _ = std::fs::remove_file(target);
    Ok(())
}

/// A machine with no display adapter: the installer must say so on the serial console, with the
/// unattended way, and its unit's failure must put the "installer has stopped" message out
/// (tty1 would otherwise stay blank), not hang.
fn no_display(config: &GuiTestConfig, dir: &Path) -> Result<()> {
    let vm = Vm::start(
        &VmSpec::uefi("gui-no-display", dir).memory(config.memory_mib).media(cdrom(&config.iso)).no_graphics(),
    )?;
    let said = vm.wait_for("the installer's no-display message", config.timeout, |serial, _| {
        let no_display = line_from(serial, "TRUTHDB-GUI-NO-DISPLAY")?;
        serial.contains("TRUTHDB-GUI-GAVE-UP").then_some(Ok(no_display))
    })?;
    println!("PASS no display: {said}, then TRUTHDB-GUI-GAVE-UP after {}", format_duration(vm.elapsed()));
    Ok(())
}

/// Waits until the installer says `screen` is up; fails at once if it said it cannot draw.
fn wait_screen(vm: &Vm, screen: &str, timeout: Duration) -> Result<String> {
    let wanted = format!("{SCREEN_MARKER} {screen}");
    vm.wait_for(&format!("the installer's {screen} screen"), timeout + vm.elapsed(), |serial, _| {
        if let Some(line) = serial.lines().find(|l| l.contains("TRUTHDB-GUI-NO-DISPLAY")) {
            return Some(Err(anyhow::anyhow!("the installer found nothing to draw on: {}", line.trim())));
        }
        let line = serial.lines().find(|l| l.trim_end() == wanted || l.contains(&format!("{wanted} ")))?;
        Some(Ok(line[line.find(SCREEN_MARKER).unwrap_or(0)..].trim().to_owned()))
    })
}

/// The DRM driver of QEMU's `-vga std` (drivers/gpu/drm/tiny/bochs.c): the hardware matrix
/// has the other displays, this test has this one.
const STD_VGA_DRM: &str = "bochs-drm";

/// The installer's screen line (`TRUTHDB-GUI-SCREEN welcome uptime=..s output="kms /dev/dri/card0
/// bochs-drm 1024x768"`) says it draws through KMS on the display's own DRM driver, not the
/// firmware's framebuffer (simpledrm) that the driver should have taken over.
fn drawn_through(screen_line: &str, drm_driver: &str) -> Result<()> {
    let output = screen_line.split_once("output=").map(|(_, o)| o.trim_matches('"')).unwrap_or("");
    let mut words = output.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("kms"), Some(_card), Some(driver)) if driver == drm_driver => Ok(()),
        _ => bail!("the installer should draw through KMS on {drm_driver}, but its screen line says {screen_line:?}"),
    }
}

/// What a screendump shows, in numbers.
#[derive(Debug, PartialEq)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    /// Share of pixels in the installer's background colour.
    pub background: f64,
    /// Share of light pixels (text, buttons' labels).
    pub light: f64,
}

pub fn analyse(png_bytes: &[u8]) -> Result<Picture> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().context("not a PNG")?;
    let mut buffer = vec![0; reader.output_buffer_size().context("PNG too large")?];
    let info = reader.next_frame(&mut buffer).context("decoding the PNG")?;
    let channels = info.color_type.samples();
    if channels < 3 {
        bail!("a grey-scale picture ({:?}), not the installer's", info.color_type);
    }
    let pixels = buffer[..info.buffer_size()].chunks_exact(channels);
    let total = (info.width as u64 * info.height as u64).max(1) as f64;
    let (mut background, mut light) = (0u64, 0u64);
    for px in pixels {
        if px[..3] == BACKGROUND {
            background += 1;
        } else if px[0] > 0xc0 && px[1] > 0xc0 && px[2] > 0xc0 {
            light += 1;
        }
    }
    Ok(Picture {
        width: info.width,
        height: info.height,
        background: background as f64 / total,
        light: light as f64 / total,
    })
}

/// The screendump must be the installer's picture: a graphics mode (a VGA text console dumps
/// as 720x400), mostly the installer's background, with some text on it.
pub fn check_graphical(png: &Path) -> Result<String> {
    let bytes = std::fs::read(png).with_context(|| format!("reading {}", png.display()))?;
    let p = analyse(&bytes)?;
    let summary =
        format!("{}x{}, {:.0}% background, {:.1}% text", p.width, p.height, p.background * 100.0, p.light * 100.0);
    if p.width < 800 || p.height < 600 {
        bail!("the screen is {}x{}: a text mode, not the installer ({summary})", p.width, p.height);
    }
    if p.background < 0.5 || p.light < 0.0005 {
        bail!("the screen does not look like the installer ({summary})");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgb);
        let mut writer = encoder.write_header().unwrap();
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                data.extend(pixel(x, y));
            }
        }
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        out
    }

    #[test]
    fn the_installer_must_draw_on_the_display_s_own_drm_driver() {
        let line = |output: &str| format!("TRUTHDB-GUI-SCREEN welcome uptime=101s output=\"{output}\"");
        drawn_through(&line("kms /dev/dri/card0 bochs-drm 1280x800"), STD_VGA_DRM).unwrap();
        for other in ["kms /dev/dri/card0 simpledrm 1280x800", "fbdev /dev/fb0 1280x800", ""] {
            let msg = format!("{:#}", drawn_through(&line(other), STD_VGA_DRM).unwrap_err());
            assert!(msg.contains("bochs-drm") && msg.contains(&line(other).replace('"', "\\\"")), "{msg}");
        }
        assert!(drawn_through("TRUTHDB-GUI-SCREEN welcome", STD_VGA_DRM).is_err());
    }

    #[test]
    fn the_installer_picture_passes_and_a_text_console_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let installer = dir.path().join("installer.png");
        std::fs::write(
            &installer,
            png(1024, 768, |x, y| if x % 50 < 3 && y % 40 < 10 { [0xe6; 3] } else { BACKGROUND }),
        )
        .unwrap();
        assert!(check_graphical(&installer).unwrap().starts_with("1024x768, 9"));

        let text_mode = dir.path().join("text.png");
        std::fs::write(&text_mode, png(720, 400, |x, _| if x % 9 == 0 { [0xaa; 3] } else { [0; 3] })).unwrap();
        assert!(format!("{:#}", check_graphical(&text_mode).unwrap_err()).contains("a text mode"));

        // A graphical console (firmware, or a framebuffer console): black with text.
        let console = dir.path().join("console.png");
        std::fs::write(&console, png(1024, 768, |x, _| if x % 7 == 0 { [0xcc; 3] } else { [0; 3] })).unwrap();
        assert!(format!("{:#}", check_graphical(&console).unwrap_err()).contains("does not look like the installer"));
    }
}
