//! The install config: what one install does, as [`InstallConfig`]. The unattended path reads
//! it from a TOML file (`install.toml` on the boot medium, or `--config`); the graphical
//! installer builds the same type from its screens. It says which disk, gives the explicit
//! wipe consent, and the appliance's identity. Unknown keys are errors; so are a missing
//! `wipe = true`, an admin account with no way to log in, and a default or empty database
//! password. (Not the image spec, [`crate::spec`], nor the build's appliance manifest.)

use std::path::Path;

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
    /// When the admin and the database password are set: by this install (the default), or on
    /// the appliance's first boot from cloud-init or systemd credentials (a generic VM image).
    #[serde(default)]
    pub provision: Provision,
    /// Required when provisioning at install; absent from a first-boot image.
    pub admin: Option<Admin>,
    /// Required when provisioning at install; absent from a first-boot image.
    pub database: Option<Database>,
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

/// When an appliance gets its admin account, database password and per-machine state.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Provision {
    /// The installer sets them from this config: an appliance for one machine.
    #[default]
    Install,
    /// The image carries none of them (no admin, no secrets, no host keys, no machine-id, no
    /// database cluster); the appliance makes them on its first boot from cloud-init or systemd
    /// credentials (`/usr/lib/truthdb/provision`). A generic VM image, cloned to many machines.
    FirstBoot,
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

#[derive(Clone, Deserialize, PartialEq)]
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

/// By hand, like [`Database`]'s: the password hash stays out of `{:?}`.
impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("user", &self.user)
            .field("ssh_authorized_keys", &self.ssh_authorized_keys)
            .field("password_hash", &self.password_hash.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Password of the database's admin role. Required: the appliance has no default.
    pub admin_password: String,
    /// Enable the payload's SQL Server protocol (TDS), for a payload that has one (the image
    /// spec's `payload.tds_port`; TruthDB's): its port opened, a certificate made for this
    /// machine, and `admin_password` the first-start seed of its `sa` login. Off by default.
    #[serde(default)]
    pub tds: bool,
}

/// Written by hand so that `{:?}` of a config (in a log, a panic, a test failure) never shows
/// the password.
impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").field("admin_password", &"<redacted>").field("tds", &self.tds).finish()
    }
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

    /// The checks that need the image to install (its root file system at `root`), run
    /// before anything is written.
    pub fn validate_against_image(&self, root: &Path) -> std::result::Result<(), String> {
        let Some(admin) = &self.admin else { return Ok(()) };
        check_login_name_unused(&admin.user, root).map_err(|why| format!("field `admin.user`: {:?}: {why}", admin.user))
    }

    /// The checks that need the image's spec, run before anything is written: a setting the
    /// image's payload cannot honour is refused, not ignored.
    pub fn validate_against_spec(&self, spec: &crate::spec::ImageSpec) -> std::result::Result<(), String> {
        if self.database.as_ref().is_some_and(|d| d.tds) && spec.payload.tds_port.is_none() {
            return Err("field `database.tds`: this image's payload has no SQL Server protocol (TDS) to enable \
                        (the image spec names no `payload.tds_port`; TruthDB's profile has one)"
                .into());
        }
        Ok(())
    }

    /// The admin and the database password, which an install that provisions needs (checked
    /// by `validate`: present exactly when `provision` is `install`).
    pub fn provisioned(&self) -> Option<(&Admin, &Database)> {
        self.admin.as_ref().zip(self.database.as_ref())
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
        let (admin, database) = match (self.provision, &self.admin, &self.database) {
            (Provision::Install, Some(admin), Some(database)) => (admin, database),
            (Provision::Install, None, _) => return Err("`[admin]` is required (the appliance's administrator)".into()),
            (Provision::Install, _, None) => {
                return Err("`[database]` is required (the database admin's password)".into());
            }
            (Provision::FirstBoot, None, None) => return Ok(()),
            (Provision::FirstBoot, _, _) => {
                return Err("`provision = \"first-boot\"`: the image carries no admin and no database password (they \
                            come from cloud-init or systemd credentials on first boot); remove `[admin]` and \
                            `[database]`"
                    .into());
            }
        };
        check_login_name(&admin.user).map_err(|why| format!("field `admin.user`: {:?}: {why}", admin.user))?;
        if admin.ssh_authorized_keys.is_empty() && admin.password_hash.is_none() {
            return Err("the admin needs `ssh_authorized_keys` or `password_hash` to log in".into());
        }
        for key in &admin.ssh_authorized_keys {
            check_ssh_public_key(key).map_err(|why| format!("field `admin.ssh_authorized_keys`: {why}"))?;
        }
        if let Some(hash) = &admin.password_hash
            && !hash.starts_with('$')
        {
            return Err("field `admin.password_hash` must be a crypt(3) hash ($y$..., $6$...), not a password".into());
        }
        check_database_password(&database.admin_password)
            .map_err(|why| format!("field `database.admin_password`: {why}"))?;
        Ok(())
    }
}

// One check per setting, shared by the config file's validation and the graphical installer
// (which shows the reason under the field as it is typed).

/// The longest host name the kernel takes (HOST_NAME_MAX, sethostname(2)) and systemd reads
/// from /etc/hostname (a longer one is ignored at boot); the DNS's 253 does not apply.
pub const HOSTNAME_MAX: usize = 64;
/// The longest part between dots (RFC 1035).
const HOSTNAME_LABEL_MAX: usize = 63;

/// A host name as hostname(7) and systemd take it: dot-separated parts of ASCII letters,
/// digits and inner hyphens, at most 64 characters in all and 63 per part.
pub fn check_hostname(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("empty".into());
    }
    if let Some(c) = host.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Err(format!("{c:?} is not allowed (letters, digits, '-', and dots between parts)"));
    }
    if host.len() > HOSTNAME_MAX {
        return Err(format!(
            "{} characters, longer than {HOSTNAME_MAX} (the most the kernel and systemd take)",
            host.len()
        ));
    }
    for label in host.split('.') {
        if label.is_empty() {
            return Err("an empty part (a dot at the start or the end, or two in a row)".into());
        }
        if label.len() > HOSTNAME_LABEL_MAX {
            return Err(format!("the part {label:?} is {} characters, longer than {HOSTNAME_LABEL_MAX}", label.len()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the part {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// The longest login name useradd takes (the utmp user field).
pub const LOGIN_NAME_MAX: usize = 32;

/// Users and groups the image's system has (Debian's base-passwd, systemd, the packages the
/// image carries): `useradd --user-group` fails on each, after the disk was erased. A fixed
/// list so a front end can check as it is typed, without the image; the install also checks
/// the image's own /etc/passwd and /etc/group (see [`check_login_name_unused`]).
const SYSTEM_NAMES: &[&str] = &[
    // Debian's base-passwd: users and groups.
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc gnats _apt nobody nogroup",
    "adm tty disk kmem dialout fax voice cdrom floppy tape sudo audio dip operator src shadow utmp video sasl",
    "plugdev staff users",
    // systemd, udev, D-Bus, polkit.
    "systemd-journal systemd-network systemd-resolve systemd-timesync systemd-coredump systemd-oom",
    "input kvm render sgx clock netdev messagebus polkitd tss",
    // The payload and the services the image runs.
    "postgres ssl-cert sshd _ssh dhcpcd _chrony crontab",
];

/// Role names PostgreSQL refuses in `CREATE ROLE` (the configure program makes a role of the
/// admin's name).
const POSTGRES_RESERVED_ROLES: &[&str] = &["public", "none"];

/// A login name for the admin account as useradd takes it with Debian's default NAME_REGEX
/// (`^[a-z][-a-z0-9_]*$`), at most 32 characters, not one of the system's own users or
/// groups, and one PostgreSQL takes as a role name.
pub fn check_login_name(user: &str) -> std::result::Result<(), String> {
    if user.is_empty() {
        return Err("empty".into());
    }
    if SYSTEM_NAMES.iter().flat_map(|line| line.split_whitespace()).any(|name| name == user) {
        return Err("a user or group of the system itself: choose another name".into());
    }
    if !user.starts_with(|c: char| c.is_ascii_lowercase())
        || !user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err("a lower-case letter first, then lower-case letters, digits, '-' and '_' only".into());
    }
    if user.len() > LOGIN_NAME_MAX {
        return Err(format!("{} characters, longer than {LOGIN_NAME_MAX}", user.len()));
    }
    if user.starts_with("pg_") || POSTGRES_RESERVED_ROLES.contains(&user) {
        return Err("PostgreSQL reserves this role name (pg_..., public, none)".into());
    }
    Ok(())
}

/// The admin's login name is not already a user or a group of the image whose root file
/// system is `root` (its /etc/passwd and /etc/group; a file that is not there is skipped, the
/// fixed list of [`check_login_name`] still applies).
pub fn check_login_name_unused(user: &str, root: &Path) -> std::result::Result<(), String> {
    for (file, what) in [("etc/passwd", "user"), ("etc/group", "group")] {
        let path = root.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        if text.lines().any(|line| line.split(':').next() == Some(user)) {
            return Err(format!("already a {what} of the image (/{file}): choose another name"));
        }
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

/// The admin's password as the crypt(3) hash /etc/shadow takes (SHA-512, `$6$`): a front end
/// hashes what a person typed, and only the hash goes into the install config.
pub fn password_hash(password: &str) -> std::result::Result<String, String> {
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT).map_err(|e| format!("{e:?}"))?;
    sha_crypt::sha512_simple(password, &params).map_err(|e| format!("{e:?}"))
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
    fn debug_output_never_shows_the_password_or_its_hash() {
        let text = GOOD.to_string().replace("[database]", "password_hash = \"$y$j9T$salt$hash\"\n[database]");
        let c = InstallConfig::parse(&text, "install.toml").unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("correct horse") && !shown.contains("$y$j9T"), "{shown}");
        assert!(shown.contains("dba") && shown.contains("<redacted>"), "{shown}");
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

    #[test]
    fn a_first_boot_image_config_carries_no_admin_and_no_password() {
        let generic = "hostname = \"truthdb\"\nwipe = true\nprovision = \"first-boot\"\n";
        let c = InstallConfig::parse(generic, "generic.toml").unwrap();
        assert_eq!((c.provision, c.provisioned()), (Provision::FirstBoot, None));
        let with_admin = GOOD.replace("wipe = true", "wipe = true\nprovision = \"first-boot\"");
        assert!(err(&with_admin).contains("remove `[admin]` and `[database]`"), "{}", err(&with_admin));
        let no_admin = GOOD.replace("[admin]\nuser = \"dba\"\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dba@laptop\"]\n", "");
        assert!(err(&no_admin).contains("`[admin]` is required"), "{}", err(&no_admin));
        let no_db = GOOD.replace("[database]\nadmin_password = \"correct horse battery\"\n", "");
        assert!(err(&no_db).contains("`[database]` is required"), "{}", err(&no_db));
    }

    #[test]
    fn host_names_are_what_sethostname_and_systemd_take() {
        let longest = format!("{}.{}", "a".repeat(31), "b".repeat(32));
        for good in ["db1", "db1.example.org", "DB-1.Example.org", "1db", &"a".repeat(63), &longest] {
            assert_eq!(check_hostname(good), Ok(()), "{good}");
        }
        let long = format!("{}.{}", "a".repeat(32), "b".repeat(32));
        assert!(check_hostname(&long).unwrap_err().contains("64"), "{:?}", check_hostname(&long));
        let label = "a".repeat(64);
        assert!(check_hostname(&label).unwrap_err().contains("63"), "{:?}", check_hostname(&label));
        for bad in ["", "-db", "db-", "db.-x", "db..x", ".db", "db.", "db_1", "db 1", "d\u{e9}"] {
            assert!(check_hostname(bad).is_err(), "{bad:?} was accepted");
        }
        let e = err(&GOOD.replace("db1.example.org", &long));
        assert!(e.contains("field `hostname`") && e.contains("64"), "{e}");
    }

    #[test]
    fn login_names_are_what_useradd_and_postgres_take_and_not_the_systems_own() {
        for good in ["dba", "admin", "db-admin", "ops_1", &"a".repeat(32)] {
            assert_eq!(check_login_name(good), Ok(()), "{good}");
        }
        for taken in ["root", "postgres", "sshd", "daemon", "nobody", "_apt", "systemd-network", "messagebus", "sudo"] {
            let why = check_login_name(taken).unwrap_err();
            assert!(why.contains("system"), "{taken}: {why}");
        }
        assert!(check_login_name(&"a".repeat(33)).unwrap_err().contains("32"));
        for pg in ["pg_admin", "public", "none"] {
            assert!(check_login_name(pg).unwrap_err().contains("PostgreSQL"), "{pg}: {:?}", check_login_name(pg));
        }
        for bad in ["", "Dba", "1dba", "dba$", "_dba", "-dba", "d.ba", "d ba"] {
            assert!(check_login_name(bad).is_err(), "{bad:?} was accepted");
        }
        let e = err(&GOOD.replace("user = \"dba\"", "user = \"postgres\""));
        assert!(e.contains("field `admin.user`") && e.contains("\"postgres\"") && e.contains("system"), "{e}");
    }

    #[test]
    fn a_login_name_the_image_already_has_as_user_or_group_is_refused() {
        let root = tempfile::tempdir().unwrap();
        // No account files (a source not mounted yet): only the fixed list applies.
        assert_eq!(check_login_name_unused("alice", root.path()), Ok(()));
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
        )
        .unwrap();
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nwheel2:x:50:alice\n").unwrap();
        assert!(check_login_name_unused("alice", root.path()).unwrap_err().contains("user"));
        assert!(check_login_name_unused("wheel2", root.path()).unwrap_err().contains("group"));
        assert_eq!(check_login_name_unused("dba", root.path()), Ok(()));
        let config = InstallConfig::parse(&GOOD.replace("user = \"dba\"", "user = \"alice\""), "install.toml").unwrap();
        let e = config.validate_against_image(root.path()).unwrap_err();
        assert!(e.contains("field `admin.user`") && e.contains("\"alice\""), "{e}");
    }
}
