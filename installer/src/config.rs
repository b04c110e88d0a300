//! The unattended install config (TOML): which disk, the explicit wipe consent, and the
//! appliance's identity. Unknown keys are errors; so are a missing `wipe = true`, an admin
//! account with no way to log in, and a default or empty database password.

use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstallConfig {
    /// Which disk to erase. Required to install from the live system; a disk image (or a
    /// device named with `--disk`) needs none.
    pub disk: Option<DiskSelector>,
    /// Consent to erase the selected disk. Must be `true`; there is no default.
    pub wipe: Option<bool>,
    pub hostname: String,
    pub admin: Admin,
    pub database: Database,
    #[serde(default)]
    pub power: PowerAction,
    /// Install over a disk that already holds TruthDB OS. Off by default, so that an install
    /// medium left in the machine does not reinstall it on the next boot from that medium.
    #[serde(default)]
    pub reinstall: bool,
    /// Install although this machine was booted by BIOS (no /sys/firmware/efi): the installed
    /// system boots only by UEFI, so this is for a disk that moves to a UEFI machine.
    #[serde(default)]
    pub allow_bios: bool,
}

/// Exactly one way of naming the target disk.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum DiskSelector {
    /// A `/dev/disk/by-id/...` name (or its last component).
    ById(String),
    /// The disk's serial number.
    Serial(String),
    /// A device path such as `/dev/vda`.
    Path(String),
    /// The largest installable disk; refused when two share that size.
    Largest(bool),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Login name of the administrator account.
    pub user: String,
    /// OpenSSH public keys allowed to log in as the administrator.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (e.g. from `mkpasswd -m yescrypt`), never a clear-text password.
    pub password_hash: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Password of the database's admin role. Required: the appliance has no default.
    pub admin_password: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    #[default]
    Poweroff,
    Reboot,
}

/// Passwords the installer refuses outright.
const WEAK_PASSWORDS: &[&str] = &["postgres", "password", "admin", "truthdb", "changeme"];

impl InstallConfig {
    /// Parses and validates; `source` names the file in errors.
    pub fn parse(text: &str, source: &str) -> Result<InstallConfig> {
        let config: InstallConfig =
            toml::from_str(text).map_err(|e| Error::Config { source: source.to_owned(), message: e.to_string() })?;
        config.validate().map_err(|message| Error::Config { source: source.to_owned(), message })?;
        Ok(config)
    }

    /// The disk selector, which an install that picks its own disk needs.
    pub fn disk_selector(&self, source: &str) -> Result<&DiskSelector> {
        self.disk.as_ref().ok_or_else(|| Error::Config {
            source: source.to_owned(),
            message: "no `[disk]` selector (by-id, serial, path or largest): which disk should be erased?".into(),
        })
    }

    /// The checks `parse` runs, for configs built in code (the graphical installer's).
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.wipe != Some(true) {
            return Err("`wipe = true` is required: the selected disk is erased".into());
        }
        if let Some(DiskSelector::Largest(false)) = self.disk {
            return Err("field `disk.largest` must be true when given".into());
        }
        check_hostname(&self.hostname).map_err(|why| format!("field `hostname`: {:?}: {why}", self.hostname))?;
        check_login_name(&self.admin.user)
            .map_err(|why| format!("field `admin.user`: {:?}: {why}", self.admin.user))?;
        if self.admin.ssh_authorized_keys.is_empty() && self.admin.password_hash.is_none() {
            return Err("the admin needs `ssh_authorized_keys` or `password_hash` to log in".into());
        }
        for key in &self.admin.ssh_authorized_keys {
            check_ssh_public_key(key).map_err(|why| format!("field `admin.ssh_authorized_keys`: {why}"))?;
        }
        if let Some(hash) = &self.admin.password_hash
            && !hash.starts_with('$')
        {
            return Err("field `admin.password_hash` must be a crypt(3) hash ($y$..., $6$...), not a password".into());
        }
        check_database_password(&self.database.admin_password)
            .map_err(|why| format!("field `database.admin_password`: {why}"))?;
        Ok(())
    }
}

// One check per setting, shared by the config file's validation and the graphical installer
// (which shows the reason under the field as it is typed).

/// A host name: dot-separated labels of letters, digits and inner hyphens.
pub fn check_hostname(host: &str) -> std::result::Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        return Err("not a valid host name (letters, digits and '-' in dot-separated parts)".into());
    }
    Ok(())
}

/// A login name for the admin account (not root).
pub fn check_login_name(user: &str) -> std::result::Result<(), String> {
    if user.is_empty()
        || user == "root"
        || !user.starts_with(|c: char| c.is_ascii_lowercase())
        || !user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err("not a usable login name (lower-case letters, digits, '-' and '_'; not root)".into());
    }
    Ok(())
}

/// One OpenSSH public key line: its type and its key data.
pub fn check_ssh_public_key(key: &str) -> std::result::Result<(), String> {
    let mut words = key.split_whitespace();
    let kind = words.next().unwrap_or("");
    if !(kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-")) || words.next().is_none() {
        return Err(format!("{kind:?} is not an OpenSSH public key (ssh-ed25519 AAAA...)"));
    }
    Ok(())
}

/// The database admin's password: long enough and not a well-known default.
pub fn check_database_password(password: &str) -> std::result::Result<(), String> {
    if password.chars().count() < 12 || WEAK_PASSWORDS.contains(&password.to_ascii_lowercase().as_str()) {
        return Err("at least 12 characters and not a default".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
wipe = true
hostname = "db1.example.org"
power = "reboot"
[disk]
serial = "QM00001"
[admin]
user = "dba"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dba@laptop"]
[database]
admin_password = "correct horse battery"
"#;

    fn err(text: &str) -> String {
        InstallConfig::parse(text, "install.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_complete_config_parses() {
        let c = InstallConfig::parse(GOOD, "install.toml").unwrap();
        assert_eq!(c.disk, Some(DiskSelector::Serial("QM00001".into())));
        assert_eq!(c.power, PowerAction::Reboot);
        assert!(!c.reinstall && !c.allow_bios, "the guards are on unless the config turns them off");
        let c = InstallConfig::parse(&format!("reinstall = true\nallow_bios = true\n{GOOD}"), "install.toml").unwrap();
        assert!(c.reinstall && c.allow_bios);
    }

    #[test]
    fn a_config_without_selector_parses_but_cannot_pick_a_disk() {
        let c = InstallConfig::parse(&GOOD.replace("[disk]\nserial = \"QM00001\"\n", ""), "install.toml").unwrap();
        assert!(c.disk_selector("install.toml").unwrap_err().to_string().contains("no `[disk]` selector"));
    }

    #[test]
    fn wipe_consent_is_required() {
        assert!(err(&GOOD.replace("wipe = true\n", "")).contains("`wipe = true` is required"));
        assert!(err(&GOOD.replace("wipe = true", "wipe = false")).contains("`wipe = true` is required"));
    }

    #[test]
    fn unknown_keys_and_two_selectors_are_refused() {
        assert!(err(&GOOD.replace("[admin]", "[admin]\nshell = \"zsh\"")).contains("unknown field `shell`"));
        let two = GOOD.replace("serial = \"QM00001\"", "serial = \"QM00001\"\npath = \"/dev/vda\"");
        assert!(err(&two).contains("install.toml"), "{}", err(&two));
    }

    #[test]
    fn weak_or_missing_credentials_are_refused() {
        assert!(err(&GOOD.replace("correct horse battery", "postgres")).contains("database.admin_password"));
        let no_login =
            GOOD.replace("ssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dba@laptop\"]", "");
        assert!(err(&no_login).contains("to log in"));
        let clear = no_login.replace("user = \"dba\"", "user = \"dba\"\npassword_hash = \"hunter2hunter2\"");
        assert!(err(&clear).contains("crypt(3)"));
        assert!(err(&GOOD.replace("db1.example.org", "db_1")).contains("hostname"));
        assert!(err(&GOOD.replace("user = \"dba\"", "user = \"root\"")).contains("admin.user"));
    }
}
