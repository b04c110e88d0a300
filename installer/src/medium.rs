//! Where an unattended install config comes from in the live system: a kernel parameter
//! (`truthdb.install=<path>`), else a file on the boot medium.

use std::path::{Path, PathBuf};

use crate::config::InstallConfig;
use crate::error::{Error, Result};

/// Where live-boot mounts the medium it booted from.
pub const MEDIUM_MOUNT: &str = "/run/live/medium";
/// The config's place on the boot medium.
pub const CONFIG_ON_MEDIUM: &str = "truthdb/install.toml";
/// The image's root file system on the boot medium.
pub const SQUASHFS_ON_MEDIUM: &str = "live/filesystem.squashfs";
pub const KERNEL_PARAMETER: &str = "truthdb.install";

/// The unattended config to use, if any. `truthdb.install=` names a file: an absolute path in
/// the live system, or a path relative to the boot medium; `truthdb.install=none` turns the
/// unattended install off. A file the parameter names must exist.
pub fn unattended_config(cmdline: &str, medium: &Path) -> Result<Option<PathBuf>> {
    let prefix = format!("{KERNEL_PARAMETER}=");
    let named = cmdline.split_whitespace().filter_map(|w| w.strip_prefix(&prefix)).next_back();
    match named {
        Some("none") => Ok(None),
        Some(value) => {
            let path = if value.starts_with('/') { PathBuf::from(value) } else { medium.join(value) };
            if path.is_file() {
                Ok(Some(path))
            } else {
                Err(Error::Config {
                    source: path.display().to_string(),
                    message: format!("named by the kernel parameter {KERNEL_PARAMETER}= but not found"),
                })
            }
        }
        None => {
            let on_medium = medium.join(CONFIG_ON_MEDIUM);
            Ok(on_medium.is_file().then_some(on_medium))
        }
    }
}

/// The kernel parameter the boot menu's "serial console" entry adds: `truthdb.installer=serial`.
pub const FRONT_END_PARAMETER: &str = "truthdb.installer";

/// The installer a live boot runs: exactly one of them, so that two never write one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrontEnd {
    /// An install config on the medium or named by `truthdb.install=`: no questions.
    Unattended,
    /// Questions on the serial console (`truthdb.installer=serial`).
    SerialConsole,
    /// The screens on the display (the default).
    Graphical,
}

/// Which front end this live boot runs. A config (or a broken reference to one: the unattended
/// path reports on it) wins over the boot menu's choice of a front end.
pub fn front_end(cmdline: &str, medium: &Path) -> FrontEnd {
    let serial = format!("{FRONT_END_PARAMETER}=serial");
    match unattended_config(cmdline, medium) {
        Ok(Some(_)) | Err(_) => FrontEnd::Unattended,
        Ok(None) if cmdline.split_whitespace().any(|w| w == serial) => FrontEnd::SerialConsole,
        Ok(None) => FrontEnd::Graphical,
    }
}

/// Whether this machine was booted by UEFI: the firmware's directory in sysfs
/// (`/sys/firmware/efi`) exists only then.
pub fn booted_by_uefi(sys_firmware_efi: &Path) -> bool {
    sys_firmware_efi.is_dir()
}

/// Why an unattended install must not go on with this disk on this machine, if it must not.
/// `existing_install` is what [`crate::block_devices::existing_install`] found on the disk.
///
/// The medium stays in the machine after an unattended install: a firmware that boots it again
/// must not erase the install it made, so a disk holding TruthDB OS needs `reinstall = true`.
/// The installed system boots only by UEFI (a UKI at the fallback path), so a machine booted
/// by BIOS needs `allow_bios = true`.
pub fn unattended_refusal(config: &InstallConfig, uefi: bool, existing_install: Option<&str>) -> Option<String> {
    let mut reasons = Vec::new();
    if let Some(found) = existing_install.filter(|_| !config.reinstall) {
        reasons.push(format!(
            "{found}; was the install medium left in? Set `reinstall = true` in the install config to install over it"
        ));
    }
    if !uefi && !config.allow_bios {
        reasons.push(
            "this machine was booted by BIOS (no /sys/firmware/efi) and the installed system boots only by UEFI; \
             set `allow_bios = true` in the install config to install anyway (for a disk that moves to a UEFI machine)"
                .to_owned(),
        );
    }
    (!reasons.is_empty()).then(|| reasons.join("; and "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> InstallConfig {
        let text = format!(
            "wipe = true\nhostname = \"db1\"\n{extra}\n[disk]\nlargest = true\n\
             [admin]\nuser = \"dba\"\nssh_authorized_keys = [\"ssh-ed25519 AAAA dba@laptop\"]\n\
             [database]\nadmin_password = \"correct horse battery\"\n"
        );
        InstallConfig::parse(&text, "install.toml").unwrap()
    }

    #[test]
    fn one_front_end_per_boot_and_a_config_wins() {
        let medium = tempfile::tempdir().unwrap();
        let boot = "boot=live quiet console=ttyS0,115200";
        assert_eq!(front_end(boot, medium.path()), FrontEnd::Graphical);
        assert_eq!(front_end(&format!("{boot} truthdb.installer=serial"), medium.path()), FrontEnd::SerialConsole);
        assert_eq!(front_end(&format!("{boot} truthdb.installer=serialx"), medium.path()), FrontEnd::Graphical);
        std::fs::create_dir_all(medium.path().join("truthdb")).unwrap();
        std::fs::write(medium.path().join(CONFIG_ON_MEDIUM), "").unwrap();
        assert_eq!(front_end(&format!("{boot} truthdb.installer=serial"), medium.path()), FrontEnd::Unattended);
        assert_eq!(
            front_end(&format!("{boot} truthdb.install=none truthdb.installer=serial"), medium.path()),
            FrontEnd::SerialConsole
        );
        assert_eq!(
            front_end(&format!("{boot} truthdb.install=/nonexistent.toml"), medium.path()),
            FrontEnd::Unattended
        );
    }

    #[test]
    fn a_disk_holding_an_install_is_reinstalled_only_when_the_config_says_so() {
        let found = "it already holds TruthDB OS (/dev/vda2 is a partition named \"truthdb-root\")";
        let refused = unattended_refusal(&config(""), true, Some(found)).unwrap();
        assert!(refused.contains("already holds TruthDB OS") && refused.contains("reinstall = true"), "{refused}");
        assert_eq!(unattended_refusal(&config("reinstall = true"), true, Some(found)), None);
        assert_eq!(unattended_refusal(&config(""), true, None), None);
    }

    #[test]
    fn a_bios_booted_machine_is_refused_unless_the_config_allows_it() {
        let refused = unattended_refusal(&config(""), false, None).unwrap();
        assert!(refused.contains("BIOS") && refused.contains("allow_bios = true"), "{refused}");
        assert_eq!(unattended_refusal(&config("allow_bios = true"), false, None), None);
        // Both: each guard needs its own consent.
        let found = Some("it already holds TruthDB OS (/dev/vda2 ...)");
        assert!(unattended_refusal(&config("allow_bios = true"), false, found).unwrap().contains("reinstall"));
        assert!(unattended_refusal(&config("reinstall = true"), false, found).unwrap().contains("allow_bios"));
        assert_eq!(unattended_refusal(&config("reinstall = true\nallow_bios = true"), false, found), None);
    }

    #[test]
    fn uefi_is_told_by_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        assert!(!booted_by_uefi(&sys.path().join("firmware/efi")));
        std::fs::create_dir_all(sys.path().join("firmware/efi")).unwrap();
        assert!(booted_by_uefi(&sys.path().join("firmware/efi")));
    }

    #[test]
    fn the_kernel_parameter_wins_over_the_medium() {
        let medium = tempfile::tempdir().unwrap();
        let m = medium.path();
        assert_eq!(unattended_config("boot=live quiet", m).unwrap(), None);
        std::fs::create_dir_all(m.join("truthdb")).unwrap();
        std::fs::write(m.join(CONFIG_ON_MEDIUM), "").unwrap();
        std::fs::write(m.join("other.toml"), "").unwrap();
        assert_eq!(unattended_config("boot=live", m).unwrap(), Some(m.join(CONFIG_ON_MEDIUM)));
        assert_eq!(unattended_config("truthdb.install=other.toml", m).unwrap(), Some(m.join("other.toml")));
        assert_eq!(unattended_config("truthdb.install=none", m).unwrap(), None);
        let err = unattended_config("truthdb.install=/nope.toml", m).unwrap_err().to_string();
        assert!(err.contains("/nope.toml") && err.contains("truthdb.install="), "{err}");
    }
}
