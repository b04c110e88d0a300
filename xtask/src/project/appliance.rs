//! The appliance manifest (`lb-config/appliance.toml`): what image to build.
//!
//! One serde type, defaults and `deny_unknown_fields` in one place, so a typo in a key is an
//! error naming the key rather than a silently ignored setting. Validation that serde cannot
//! express (URL shape, name syntax, ISO field lengths) lives in [`Appliance::validate`].

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The appliance as its maintainer describes it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Short machine name; file names are `<name>-<version>-<arch>.hybrid.iso`.
    pub name: String,
    /// Human name shown in boot menus and release files.
    pub pretty_name: String,
    /// Debian suite of the image and of the build root.
    #[serde(default = "default_suite")]
    pub suite: String,
    /// Debian architecture. Only amd64 is built and boot-tested today.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// Archive areas (components) enabled in the image.
    #[serde(default = "default_archive_areas")]
    pub archive_areas: Vec<String>,
    #[serde(default)]
    pub mirrors: Mirrors,
    #[serde(default)]
    pub boot: Boot,
    pub iso: IsoFields,
    /// The database service the appliance runs (none: a bare appliance).
    #[serde(default)]
    pub payload: Payload,
    /// Apt repositories besides the Debian archive (a vendor's own, such as TruthDB's), used to
    /// build the image and kept in it, so the installed system updates their packages too.
    #[serde(default)]
    pub apt_repositories: Vec<AptRepository>,
}

/// One extra apt repository: rendered as live-build's `config/archives/<name>.list.chroot`,
/// `.key.chroot` (and `.pref.chroot` when pinned), each also as `.binary` to stay in the image.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AptRepository {
    /// Short name: the file names in `config/archives/` and on the installed system.
    pub name: String,
    /// The repository's base URL (http://, https:// or file://).
    pub url: String,
    /// Its suite (`dists/<suite>/`), e.g. trixie.
    pub suite: String,
    /// Its components, e.g. ["main"].
    pub components: Vec<String>,
    /// The repository's signing key: an armored OpenPGP public key, a path relative to
    /// `lb-config/` (by convention `apt-keys/<name>.asc`). The build fails unless it signed the
    /// repository's `InRelease`.
    pub key: String,
    /// Optional apt pinning of the repository's origin (its host name), e.g. 1001 to prefer
    /// its packages over Debian's, or 100 to install them only where Debian has none.
    pub pin_priority: Option<i32>,
}

impl AptRepository {
    /// The host name apt's `Pin: origin` matches (empty for a file:// repository).
    pub fn origin(&self) -> &str {
        let rest = self.url.split_once("://").map_or("", |(_, rest)| rest);
        let host = rest.split('/').next().unwrap_or("");
        host.rsplit('@').next().unwrap_or(host).split(':').next().unwrap_or("")
    }

    /// The `sources.list` line of the repository.
    pub fn sources_line(&self) -> String {
        format!("deb {} {} {}\n", self.url, self.suite, self.components.join(" "))
    }

    fn validate(&self, index: usize) -> Result<()> {
        let field = |name: &str| format!("apt_repositories[{index}].{name}");
        let simple = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("field `{}`: {:?} must be lower-case letters, digits or '-'", field("name"), self.name);
        }
        let rest = ["http://", "https://", "file://"].iter().find_map(|p| self.url.strip_prefix(p));
        if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
            bail!("field `{}`: {:?} is not an http://, https:// or file:// URL", field("url"), self.url);
        }
        check_live_build_value(&field("url"), &self.url)?;
        if self.suite.is_empty() || !self.suite.chars().all(|c| simple(c) || c == '/') {
            bail!("field `{}`: {:?} is not a suite name", field("suite"), self.suite);
        }
        if self.components.is_empty() {
            bail!("field `{}` is empty (at least one, e.g. \"main\")", field("components"));
        }
        if let Some(bad) = self.components.iter().find(|c| c.is_empty() || !c.chars().all(simple)) {
            bail!("field `{}`: {bad:?} is not a component name", field("components"));
        }
        let key = Path::new(&self.key);
        if key.is_absolute() || key.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            bail!("field `{}`: {:?} must be a path inside lb-config/", field("key"), self.key);
        }
        if let Some(priority) = self.pin_priority
            && !(-1000..=1001).contains(&priority)
        {
            bail!("field `{}`: {priority} is outside -1000..=1001", field("pin_priority"));
        }
        Ok(())
    }
}

/// What the appliance runs: packages, services, a health check, where its data lives, the
/// ports it serves. Written in `appliance.toml`'s `[payload]`, or, more often, in a profile
/// file `lb-config/payloads/<name>.toml` that `[payload] profile` (or `--payload`) names.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    /// The profile file this payload comes from: in `appliance.toml`, the default profile
    /// (`--payload NAME` picks another), with no other payload key beside it.
    pub profile: Option<String>,
    /// Debian packages of the service, installed into the image beside `packages.list`'s.
    #[serde(default)]
    pub packages: Vec<String>,
    /// .deb files not in Debian (a TruthDB server release, say), installed the same way.
    #[serde(default)]
    pub debs: Vec<DebSource>,
    /// systemd units enabled on the installed system.
    #[serde(default)]
    pub services: Vec<String>,
    /// Shell command that succeeds once the service is healthy; the installed system's boot
    /// marker runs it and reports `health=ok` or `health=failed`.
    #[serde(default = "default_health_check")]
    pub health_check: String,
    /// Mount point of the data partition the installer makes (none: no data partition).
    pub data_mount: Option<String>,
    /// Program in the image run at install time inside the installed system to set the
    /// service up (see overlay/usr/lib/truthdb/payload/).
    pub configure: Option<String>,
    /// TCP ports the installed system's firewall lets in besides SSH (22).
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The service's SQL Server protocol (TDS) port, off unless an install's config asks for
    /// it (`database.tds = true`): then the configure program enables it and opens this port.
    pub tds_port: Option<u16>,
    /// The smallest data partition the service can live on, in GiB: the installer refuses a
    /// smaller disk before writing anything.
    pub min_data_gib: Option<u32>,
    /// Kernel options the service needs (`CONFIG_IO_URING`, ...): the build fails unless the
    /// kernel package was built with each one `=y`.
    #[serde(default)]
    pub kernel_config: Vec<String>,
}

/// Where payload profiles live, relative to `lb-config/`.
pub const PROFILES_DIR: &str = "payloads";

/// A payload profile file, `lb-config/payloads/<name>.toml`: a fragment of `appliance.toml`,
/// its `[payload]` and the `[[apt_repositories]]` the payload's packages come from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    payload: Payload,
    #[serde(default)]
    apt_repositories: Vec<AptRepository>,
}

impl ProfileFile {
    /// Reads and validates one profile file; errors name the file and the field.
    fn read(path: &Path) -> Result<ProfileFile> {
        let in_file = || format!("in payload profile {}", path.display());
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let profile: ProfileFile = toml::from_str(&text).with_context(in_file)?;
        (|| {
            if profile.payload.profile.is_some() {
                bail!("field `payload.profile`: a profile cannot name another profile");
            }
            profile.payload.validate()?;
            for (index, repository) in profile.apt_repositories.iter().enumerate() {
                repository.validate(index)?;
            }
            Ok(())
        })()
        .with_context(in_file)?;
        Ok(profile)
    }
}

/// The profiles in `dir` (`lb-config/payloads/`): its `*.toml` files' names, sorted; none when
/// the directory does not exist.
fn profile_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".toml").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A .deb by path (relative to the project) or by URL with its SHA-256.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebSource {
    pub path: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
}

fn default_health_check() -> String {
    "true".into()
}

impl Default for Payload {
    fn default() -> Self {
        Payload {
            packages: Vec::new(),
            debs: Vec::new(),
            services: Vec::new(),
            health_check: default_health_check(),
            data_mount: None,
            configure: None,
            profile: None,
            ports: Vec::new(),
            tds_port: None,
            min_data_gib: None,
            kernel_config: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Mirrors {
    /// The Debian archive, for the build root, the image and the image's apt sources.
    #[serde(default = "default_archive_mirror")]
    pub archive: String,
    /// The security archive (suite `<suite>-security`).
    #[serde(default = "default_security_mirror")]
    pub security: String,
    /// snapshot.debian.org (or a mirror of it): where a locked build fetches what the package
    /// store lacks, at the lock's archive state, before trying the two mirrors above (which drop
    /// old versions). None: the store, then the mirrors.
    #[serde(default)]
    pub snapshot: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Boot {
    /// Kernel parameters of the live boot entries, before the console.
    #[serde(default = "default_append")]
    pub append: Vec<String>,
    /// The serial console; always the last `console=` so the screen stays free of text.
    #[serde(default = "default_serial_console")]
    pub serial_console: String,
    /// Seconds the boot menu waits before starting the default entry (0 is not allowed:
    /// live-build's stock menus wait forever, which an appliance must not).
    #[serde(default = "default_timeout")]
    pub menu_timeout_seconds: u32,
}

/// ISO 9660 primary volume descriptor fields.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IsoFields {
    /// Volume id; the version is appended. At most 32 characters in all (ISO 9660).
    pub volume: String,
    pub publisher: String,
    pub application: String,
}

fn default_suite() -> String {
    "trixie".into()
}
fn default_architecture() -> String {
    "amd64".into()
}
fn default_archive_areas() -> Vec<String> {
    vec!["main".into()]
}
fn default_archive_mirror() -> String {
    "http://deb.debian.org/debian".into()
}
fn default_security_mirror() -> String {
    "http://deb.debian.org/debian-security".into()
}
fn default_append() -> Vec<String> {
    ["boot=live", "live-config.nocomponents", "quiet", "loglevel=3", "systemd.show_status=false"]
        .map(String::from)
        .to_vec()
}
fn default_serial_console() -> String {
    "ttyS0,115200".into()
}
fn default_timeout() -> u32 {
    1
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors { archive: default_archive_mirror(), security: default_security_mirror(), snapshot: None }
    }
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            append: default_append(),
            serial_console: default_serial_console(),
            menu_timeout_seconds: default_timeout(),
        }
    }
}

/// ISO 9660 limits the volume id to 32 characters.
const MAX_VOLUME_ID: usize = 32;
/// ISO 9660 limits publisher and application ids to 128 characters.
const MAX_ISO_ID: usize = 128;

impl Appliance {
    /// Reads and validates a manifest file, and the payload profile it names (or `payload`,
    /// which overrides it) from `payloads/` beside it; errors name the file and the field.
    pub fn load(path: &Path, version: &str, payload: Option<&str>) -> Result<Appliance> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading appliance manifest {}", path.display()))?;
        let mut appliance =
            Appliance::parse(&text, version).with_context(|| format!("in appliance manifest {}", path.display()))?;
        let Some(name) = payload.or(appliance.payload.profile.as_deref()).map(str::to_owned) else {
            return Ok(appliance);
        };
        let dir = path.parent().context("the manifest has no directory")?.join(PROFILES_DIR);
        appliance.use_profile(&name, &dir).with_context(|| format!("payload profile {name:?}"))?;
        Ok(appliance)
    }

    /// The kernel options every profile in `dir` (`lb-config/payloads/`) needs, by profile name,
    /// sorted. One kernel serves every profile (its cache key has no payload in it), so each build
    /// checks them all: the default PostgreSQL build then proves the kernel a `truthdb` build
    /// would get still has io_uring, although that build cannot run where TruthDB's repository
    /// cannot be reached.
    pub fn kernel_options_of_every_profile(dir: &Path) -> Result<Vec<(String, Vec<String>)>> {
        let mut options = Vec::new();
        for name in profile_names(dir) {
            let profile = ProfileFile::read(&dir.join(format!("{name}.toml")))?;
            if !profile.payload.kernel_config.is_empty() {
                options.push((name, profile.payload.kernel_config));
            }
        }
        Ok(options)
    }

    /// Replaces the payload with the profile `name` from `dir` and adds its apt repositories.
    fn use_profile(&mut self, name: &str, dir: &Path) -> Result<()> {
        if !is_debian_name(name) {
            crate::util::usage_error!(
                "payload profile {name:?}: a name of lower-case letters, digits, '.', '+' or '-'"
            );
        }
        let path = dir.join(format!("{name}.toml"));
        if !path.is_file() {
            let known = profile_names(dir);
            crate::util::usage_error!(
                "no payload profile {name:?}: {} does not exist (profiles here: {})",
                path.display(),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            );
        }
        let profile = ProfileFile::read(&path)?;
        self.payload = Payload { profile: Some(name.to_owned()), ..profile.payload };
        for repository in profile.apt_repositories {
            if self.apt_repositories.iter().any(|r| r.name == repository.name) {
                bail!(
                    "{}: apt repository {:?} is also in appliance.toml (one definition each)",
                    path.display(),
                    repository.name
                );
            }
            self.apt_repositories.push(repository);
        }
        Ok(())
    }

    pub fn parse(text: &str, version: &str) -> Result<Appliance> {
        let manifest: Appliance = toml::from_str(text)?;
        manifest.validate(version)?;
        Ok(manifest)
    }

    fn validate(&self, version: &str) -> Result<()> {
        if !is_debian_name(&self.name) {
            bail!("field `name`: {:?} must be lower-case letters, digits, '.', '+' or '-'", self.name);
        }
        if self.pretty_name.trim().is_empty() {
            bail!("field `pretty_name` is empty");
        }
        check_printable("pretty_name", &self.pretty_name)?;
        // It names the boot menus' entries: GRUB reads these in a quoted string, isolinux's `^`
        // marks a hot key.
        if let Some(c) = self.pretty_name.chars().find(|c| "\"\\$`^{};".contains(*c)) {
            bail!("field `pretty_name`: {:?} holds {c:?}, which the boot menus would read as syntax", self.pretty_name);
        }
        if self.suite.is_empty() || !self.suite.chars().all(|c| c.is_ascii_lowercase() || c == '-') {
            bail!("field `suite`: {:?} is not a Debian suite name", self.suite);
        }
        if self.architecture != "amd64" {
            bail!("field `architecture`: {:?} is not supported (only amd64)", self.architecture);
        }
        if self.archive_areas.is_empty() {
            bail!("field `archive_areas` is empty (at least \"main\")");
        }
        for area in &self.archive_areas {
            if !["main", "contrib", "non-free", "non-free-firmware"].contains(&area.as_str()) {
                bail!("field `archive_areas`: unknown area {area:?}");
            }
        }
        let snapshot = self.mirrors.snapshot.iter().map(|url| ("mirrors.snapshot", url));
        for (field, url) in [("mirrors.archive", &self.mirrors.archive), ("mirrors.security", &self.mirrors.security)]
            .into_iter()
            .chain(snapshot)
        {
            let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace)) {
                bail!("field `{field}`: {url:?} is not an http:// or https:// URL");
            }
            check_live_build_value(field, url)?;
        }
        for param in &self.boot.append {
            if param.is_empty() || param.contains(char::is_whitespace) {
                bail!("field `boot.append`: {param:?} must be one kernel parameter without spaces");
            }
            check_kernel_parameter("boot.append", param)?;
            if param.starts_with("console=") {
                bail!("field `boot.append`: {param:?}: set the console with `boot.serial_console`");
            }
        }
        if self.boot.serial_console.is_empty() || self.boot.serial_console.contains(char::is_whitespace) {
            bail!(
                "field `boot.serial_console`: {:?} is not a console spec like ttyS0,115200",
                self.boot.serial_console
            );
        }
        check_kernel_parameter("boot.serial_console", &self.boot.serial_console)?;
        if self.boot.menu_timeout_seconds == 0 {
            bail!("field `boot.menu_timeout_seconds` is 0: the menu would wait forever for a key");
        }
        self.payload.validate()?;
        for (index, repository) in self.apt_repositories.iter().enumerate() {
            repository.validate(index)?;
            if self.apt_repositories[..index].iter().any(|r| r.name == repository.name) {
                bail!("field `apt_repositories[{index}].name`: {:?} is used twice", repository.name);
            }
        }
        let volume = self.volume_id(version);
        if volume.len() > MAX_VOLUME_ID || !volume.is_ascii() {
            bail!("field `iso.volume`: {volume:?} (with the version) is longer than {MAX_VOLUME_ID} ASCII characters");
        }
        check_live_build_value("iso.volume", &self.iso.volume)?;
        for (field, value) in [("iso.publisher", &self.iso.publisher), ("iso.application", &self.iso.application)] {
            if value.len() > MAX_ISO_ID {
                bail!("field `{field}`: at most {MAX_ISO_ID} characters");
            }
            check_live_build_value(field, value)?;
        }
        Ok(())
    }

    /// The installed system's kernel parameters: the live ones without live-boot's, then the
    /// serial console (the installer adds the root file system).
    pub fn installed_kernel_parameters(&self) -> Vec<String> {
        let live_only = |p: &str| p.starts_with("boot=") || p == "components" || p.starts_with("live-");
        let mut params: Vec<String> = self.boot.append.iter().filter(|p| !live_only(p)).cloned().collect();
        params.push(format!("console={}", self.boot.serial_console));
        params
    }

    /// The ISO volume id: the manifest's volume with the version appended.
    pub fn volume_id(&self, version: &str) -> String {
        format!("{} {version}", self.iso.volume)
    }

    /// The full kernel command line of the live boot entries: the console goes last.
    pub fn kernel_command_line(&self) -> String {
        let mut params = self.boot.append.clone();
        params.push(format!("console={}", self.boot.serial_console));
        params.join(" ")
    }

    /// live-build's `--image-name`: it appends `-<arch>.hybrid.iso` itself.
    pub fn image_name(&self, version: &str) -> String {
        format!("{}-{version}", self.name)
    }

    /// The published ISO's file name.
    pub fn iso_file_name(&self, version: &str) -> String {
        format!("{}-{}.hybrid.iso", self.image_name(version), self.architecture)
    }
}

impl Payload {
    fn validate(&self) -> Result<()> {
        if let Some(profile) = &self.profile {
            let alone = Payload { profile: Some(profile.clone()), ..Payload::default() };
            if *self != alone {
                bail!(
                    "field `payload.profile`: {profile:?} is the payload; its other keys belong in \
                     {PROFILES_DIR}/{profile}.toml"
                );
            }
        }
        for name in &self.packages {
            if !is_debian_name(name) {
                bail!("field `payload.packages`: {name:?} is not a valid Debian package name");
            }
        }
        for (i, deb) in self.debs.iter().enumerate() {
            let field = format!("payload.debs[{i}]");
            match (&deb.path, &deb.url, &deb.sha256) {
                (Some(path), None, _) => {
                    if !path.ends_with(".deb") {
                        bail!("field `{field}.path`: {path:?} is not a .deb file");
                    }
                }
                (None, Some(url), Some(sha256)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        bail!("field `{field}.url`: {url:?} is not an http:// or https:// URL");
                    }
                    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                        bail!("field `{field}.sha256`: not 64 hex digits");
                    }
                }
                (None, Some(_), None) => bail!("field `{field}`: a `url` needs its `sha256`"),
                _ => bail!("field `{field}`: give either `path` or `url` + `sha256`"),
            }
        }
        for unit in &self.services {
            let kinds = [".service", ".socket", ".timer", ".target", ".path"];
            if !kinds.iter().any(|k| unit.ends_with(k)) || unit.contains(char::is_whitespace) {
                bail!("field `payload.services`: {unit:?} is not a systemd unit name");
            }
        }
        if self.health_check.trim().is_empty() {
            bail!("field `payload.health_check` is empty (use \"true\" for none)");
        }
        for (field, value) in [("payload.data_mount", &self.data_mount), ("payload.configure", &self.configure)] {
            if let Some(path) = value
                && (!path.starts_with('/') || path == "/" || path.contains(char::is_whitespace))
            {
                bail!("field `{field}`: {path:?} is not an absolute path");
            }
        }
        if let Some(port) = self.ports.iter().find(|p| **p == 0 || **p == 22) {
            bail!("field `payload.ports`: {port} (SSH's 22 is always open; 0 is no port)");
        }
        if let Some(port) = self.tds_port {
            if port == 0 || port == 22 || self.ports.contains(&port) {
                bail!(
                    "field `payload.tds_port`: {port} (not 0, SSH's 22, or one of `payload.ports`: it opens only when an install enables TDS)"
                );
            }
            if self.configure.is_none() {
                bail!("field `payload.tds_port` needs `payload.configure` (the program that enables TDS at install)");
            }
        }
        if self.min_data_gib.is_some() && self.data_mount.is_none() {
            bail!("field `payload.min_data_gib` needs `payload.data_mount` (the data partition it sizes)");
        }
        if let Some(bad) = self.kernel_config.iter().find(|o| {
            o.strip_prefix("CONFIG_").is_none_or(|n| {
                n.is_empty() || !n.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            })
        }) {
            bail!("field `payload.kernel_config`: {bad:?} is not a kernel option name like CONFIG_IO_URING");
        }
        Ok(())
    }
}

/// Refuses control characters (a newline would end a comment line in `auto/config` or a
/// variable in `/etc/os-release`, and start a new one of the value's choosing).
fn check_printable(field: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!("field `{field}`: {value:?} holds the control character {c:?}");
    }
    Ok(())
}

/// Characters live-build cannot carry: `lb config` stores its options in shell files between
/// double quotes that every later `lb` step sources (`"`, `$`, `` ` ``, `\` would end the
/// quotes or run a command), and pastes some into sed expressions (`|`, `&`, `@`).
const LIVE_BUILD_UNSAFE: &[char] = &['"', '$', '`', '\\', '|', '&', '@'];

/// A value handed to `lb config`: `auto/config` quotes it for the shell, but live-build's own
/// files do not, so what they cannot carry is refused here, naming the field.
fn check_live_build_value(field: &str, value: &str) -> Result<()> {
    check_printable(field, value)?;
    if let Some(c) = value.chars().find(|c| LIVE_BUILD_UNSAFE.contains(c)) {
        bail!(
            "field `{field}`: {value:?} holds {c:?}, which live-build cannot carry (it writes the value into \
             shell files it sources and sed expressions); leave out any of {}",
            LIVE_BUILD_UNSAFE.iter().collect::<String>()
        );
    }
    Ok(())
}

/// A kernel parameter goes through live-build's sed into GRUB's and isolinux's menus, where
/// quotes, `$`, `;`, braces and backslashes mean something: only a plain set is accepted.
fn check_kernel_parameter(field: &str, param: &str) -> Result<()> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._,:=/+-".contains(c);
    if let Some(c) = param.chars().find(|c| !plain(*c)) {
        bail!(
            "field `{field}`: {param:?} holds {c:?}; kernel parameters here may use letters, digits and . _ , : = / + - \
             (GRUB and isolinux read the others as syntax)"
        );
    }
    Ok(())
}

/// Debian's package-name syntax (Policy 5.6.1), which we also use for the appliance name.
pub fn is_debian_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// A version as Debian writes it: a semver pre-release's `-` (every one) becomes `~`, which sorts before
/// the release (`0.2.0~rc.1` < `0.2.0`), as TruthDB's packages map their tags.
pub fn debian_version(version: &str) -> String {
    version.replace('-', "~")
}

/// The version a release tag names: `vX.Y.Z` or `vX.Y.Z-PRE` (the TruthDB organisation's
/// release tooling tags every repository alike and takes the version from the tag).
pub fn version_from_tag(tag: &str) -> Result<String> {
    let version = tag.strip_prefix('v').unwrap_or("");
    let (core, pre) = match version.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (version, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    let semver_core =
        numbers.len() == 3 && numbers.iter().all(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
    let pre_ok = pre.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'));
    if !semver_core || !pre_ok {
        bail!("release tag {tag:?} is not vMAJOR.MINOR.PATCH[-PRERELEASE] (e.g. v0.2.0 or v0.2.0-rc.1)");
    }
    Ok(version.to_owned())
}

/// Reads the one version of everything: `[workspace.package] version` of `Cargo.toml`.
pub fn workspace_version(cargo_toml: &Path) -> Result<String> {
    #[derive(Deserialize)]
    struct CargoToml {
        workspace: Workspace,
    }
    #[derive(Deserialize)]
    struct Workspace {
        package: WorkspacePackage,
    }
    #[derive(Deserialize)]
    struct WorkspacePackage {
        version: String,
    }
    let text = std::fs::read_to_string(cargo_toml).with_context(|| format!("reading {}", cargo_toml.display()))?;
    let parsed: CargoToml = toml::from_str(&text)
        .with_context(|| format!("{}: reading field `workspace.package.version`", cargo_toml.display()))?;
    let version = parsed.workspace.package.version;
    if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric() || ".+-~".contains(c)) {
        bail!("{}: `workspace.package.version` {version:?} is not a usable version", cargo_toml.display());
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "truthdb-os"
pretty_name = "TruthDB OS"
[iso]
volume = "TruthDB OS"
publisher = "TruthDB"
application = "TruthDB OS appliance"
"#;

    fn err(text: &str) -> String {
        format!("{:#}", Appliance::parse(text, "0.1.0").unwrap_err())
    }

    #[test]
    fn defaults_fill_in_suite_mirrors_and_boot() {
        let m = Appliance::parse(MINIMAL, "0.1.0").unwrap();
        assert_eq!(m.suite, "trixie");
        assert_eq!(m.architecture, "amd64");
        assert_eq!(m.mirrors.security, "http://deb.debian.org/debian-security");
        assert!(m.kernel_command_line().ends_with("console=ttyS0,115200"));
        assert_eq!(m.iso_file_name("0.1.0"), "truthdb-os-0.1.0-amd64.hybrid.iso");
        assert_eq!(m.volume_id("0.1.0"), "TruthDB OS 0.1.0");
    }

    #[test]
    fn unknown_key_is_rejected_by_name() {
        let msg = err(&format!("{MINIMAL}\n[boot]\ntimeout = 3\n"));
        assert!(msg.contains("unknown field `timeout`"), "{msg}");
    }

    #[test]
    fn malformed_toml_is_rejected_with_position() {
        let msg = err("name = \"x");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn missing_required_field_is_named() {
        let msg = err("name = \"truthdb-os\"\n[iso]\nvolume=\"a\"\npublisher=\"b\"\napplication=\"c\"\n");
        assert!(msg.contains("pretty_name"), "{msg}");
    }

    #[test]
    fn invalid_values_name_their_field() {
        let cases = [
            (MINIMAL.replace("truthdb-os\"", "Truth DB\""), "field `name`"),
            (MINIMAL.replace("\"TruthDB OS\"\n[iso]", "\"TruthDB ${OS}\"\n[iso]"), "field `pretty_name`"),
            (format!("{MINIMAL}\n[mirrors]\narchive = \"ftp://x\"\n"), "field `mirrors.archive`"),
            (format!("{MINIMAL}\n[boot]\nappend = [\"console=tty0\"]\n"), "field `boot.append`"),
            (format!("{MINIMAL}\n[boot]\nmenu_timeout_seconds = 0\n"), "menu_timeout_seconds"),
            (
                MINIMAL.replace("volume = \"TruthDB OS\"", "volume = \"A VERY LONG VOLUME NAME FOR AN ISO\""),
                "iso.volume",
            ),
            (MINIMAL.replace("pretty_name", "architecture = \"arm64\"\npretty_name"), "field `architecture`"),
            (format!("{MINIMAL}\n[payload]\npackages = [\"Postgres\"]\n"), "field `payload.packages`"),
            (format!("{MINIMAL}\n[payload]\ndebs = [{{ url = \"https://x/a.deb\" }}]\n"), "needs its `sha256`"),
            (format!("{MINIMAL}\n[payload]\ndebs = [{{ path = \"a.tar\" }}]\n"), "payload.debs[0].path"),
            (format!("{MINIMAL}\n[payload]\nservices = [\"postgresql\"]\n"), "field `payload.services`"),
            (format!("{MINIMAL}\n[payload]\ndata_mount = \"var/lib\"\n"), "field `payload.data_mount`"),
        ];
        for (text, expected) in cases {
            let msg = err(&text);
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
    }

    #[test]
    fn a_release_tag_names_the_version_and_debian_sorts_its_pre_releases_first() {
        assert_eq!(version_from_tag("v0.2.0").unwrap(), "0.2.0");
        assert_eq!(version_from_tag("v0.1.40-rc1").unwrap(), "0.1.40-rc1");
        for bad in ["0.2.0", "v0.2", "v0.2.0-", "v0.2.0-rc/1", "v0.2.x", "vv0.2.0", ""] {
            let msg = format!("{:#}", version_from_tag(bad).unwrap_err());
            assert!(msg.contains("vMAJOR.MINOR.PATCH"), "{bad}: {msg}");
        }
        assert_eq!(debian_version("0.2.0"), "0.2.0");
        // TruthDB's own packages: tag v0.1.40-rc1 is truthdb-server 0.1.40~rc1-1.
        assert_eq!(debian_version("0.1.40-rc1"), "0.1.40~rc1");
        assert_eq!(debian_version("0.1.0-nightly.20261122"), "0.1.0~nightly.20261122");
    }

    #[test]
    fn debian_names() {
        assert!(is_debian_name("linux-image-amd64"));
        assert!(is_debian_name("g++"));
        assert!(!is_debian_name("x"));
        assert!(!is_debian_name("Foo"));
        assert!(!is_debian_name("-foo"));
        assert!(!is_debian_name("foo bar"));
    }

    #[test]
    fn the_repository_manifest_is_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let version = workspace_version(&root.join("Cargo.toml")).unwrap();
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        let appliance = Appliance::load(&root.join("lb-config/appliance.toml"), &version, None).unwrap();
        assert_eq!(appliance.payload.profile.as_deref(), Some("postgresql"), "PostgreSQL stays the default");
        assert!(appliance.payload.packages.iter().any(|p| p == "postgresql"));
        assert!(appliance.apt_repositories.is_empty(), "the default build needs only Debian");
    }

    #[test]
    fn every_profile_in_the_repository_is_valid_and_truthdb_s_comes_from_its_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let manifest = root.join("lb-config/appliance.toml");
        let profiles = std::fs::read_dir(root.join("lb-config").join(PROFILES_DIR)).unwrap();
        let mut names: Vec<String> = profiles
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".toml").map(str::to_owned))
            .collect();
        names.sort();
        assert_eq!(names, ["postgresql", "truthdb"]);
        for name in &names {
            Appliance::load(&manifest, "0.1.0", Some(name)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let truthdb = Appliance::load(&manifest, "0.1.0", Some("truthdb")).unwrap();
        let p = &truthdb.payload;
        assert!(p.packages.contains(&"truthdb-server".to_owned()) && p.packages.contains(&"truthdb-cli".to_owned()));
        assert_eq!(p.data_mount.as_deref(), Some("/var/lib/truthdb"));
        assert_eq!(p.ports, [9623]);
        assert_eq!(p.tds_port, Some(1433));
        assert!(p.min_data_gib.is_some_and(|gib| gib > 10), "the default 10 GiB store and a margin must fit");
        assert!(p.kernel_config.contains(&"CONFIG_IO_URING".to_owned()));
        assert!(p.health_check.contains("9623") && p.health_check.contains("is-active"), "{}", p.health_check);
        let repo = &truthdb.apt_repositories[0];
        assert_eq!((repo.name.as_str(), repo.url.as_str()), ("truthdb", "https://truthdb.github.io/apt"));
        assert_eq!(repo.key, "apt-keys/truthdb.asc");
    }

    #[test]
    fn every_profile_s_kernel_options_are_gathered_for_the_one_shared_kernel() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let ours = Appliance::kernel_options_of_every_profile(&root.join("lb-config").join(PROFILES_DIR)).unwrap();
        assert_eq!(ours, [("truthdb".to_owned(), vec!["CONFIG_IO_URING".to_owned()])]);

        let dir = tempfile::tempdir().unwrap();
        assert!(Appliance::kernel_options_of_every_profile(&dir.path().join("none")).unwrap().is_empty());
        std::fs::write(dir.path().join("b.toml"), "[payload]\nkernel_config = [\"CONFIG_B\"]\n").unwrap();
        std::fs::write(dir.path().join("a.toml"), "[payload]\nkernel_config = [\"CONFIG_A\"]\n").unwrap();
        std::fs::write(dir.path().join("plain.toml"), "[payload]\npackages = [\"postgresql\"]\n").unwrap();
        let got = Appliance::kernel_options_of_every_profile(dir.path()).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        std::fs::write(dir.path().join("bad.toml"), "[payload]\nkernel_config = [\"IO_URING\"]\n").unwrap();
        let msg = format!("{:#}", Appliance::kernel_options_of_every_profile(dir.path()).unwrap_err());
        assert!(msg.contains("bad.toml") && msg.contains("payload.kernel_config"), "{msg}");
    }

    /// A project directory holding `appliance.toml` (MINIMAL plus `extra`) and profiles.
    fn project_with(extra: &str, profiles: &[(&str, &str)]) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let manifest = dir.path().join("appliance.toml");
        std::fs::write(&manifest, format!("{MINIMAL}\n{extra}")).unwrap();
        std::fs::create_dir(dir.path().join(PROFILES_DIR)).unwrap();
        for (name, text) in profiles {
            std::fs::write(dir.path().join(PROFILES_DIR).join(format!("{name}.toml")), text).unwrap();
        }
        (dir, manifest)
    }

    #[test]
    fn a_profile_is_chosen_by_the_manifest_or_the_flag_and_checked_by_the_same_rules() {
        let pg = "[payload]\npackages = [\"postgresql\"]\nports = [5432]\n";
        let other = "[payload]\npackages = [\"other\"]\n[[apt_repositories]]\nname = \"o\"\nurl = \"https://o.example/apt\"\n\
                     suite = \"trixie\"\ncomponents = [\"main\"]\nkey = \"apt-keys/o.asc\"\n";
        let (_dir, manifest) = project_with("[payload]\nprofile = \"pg\"\n", &[("pg", pg), ("other", other)]);
        let load = |flag: Option<&str>| Appliance::load(&manifest, "0.1.0", flag);
        let default = load(None).unwrap();
        assert_eq!(
            (default.payload.packages.as_slice(), default.payload.ports.as_slice()),
            (&["postgresql".to_owned()][..], &[5432][..])
        );
        let chosen = load(Some("other")).unwrap();
        assert_eq!(chosen.payload.profile.as_deref(), Some("other"));
        assert_eq!(chosen.apt_repositories.len(), 1);

        let msg = format!("{:#}", load(Some("nosuch")).unwrap_err());
        assert!(msg.contains("nosuch.toml does not exist") && msg.contains("other, pg"), "{msg}");
        let msg = format!("{:#}", load(Some("../pg")).unwrap_err());
        assert!(msg.contains("lower-case letters"), "{msg}");

        for (text, expected) in [
            ("[payload]\nports = [22]\n", "field `payload.ports`"),
            ("[payload]\nmin_data_gib = 12\n", "needs `payload.data_mount`"),
            ("[payload]\nports = [1433]\ntds_port = 1433\nconfigure = \"/c\"\n", "field `payload.tds_port`: 1433"),
            ("[payload]\ntds_port = 1433\n", "needs `payload.configure`"),
            ("[payload]\nkernel_config = [\"IO_URING\"]\n", "field `payload.kernel_config`"),
            ("[payload]\nprofile = \"pg\"\n", "cannot name another profile"),
            ("[payload]\npackages = [\"Bad\"]\n", "field `payload.packages`"),
            ("[payload]\nsize = 1\n", "unknown field `size`"),
        ] {
            let (_dir, manifest) = project_with("", &[("bad", text)]);
            let msg = format!("{:#}", Appliance::load(&manifest, "0.1.0", Some("bad")).unwrap_err());
            assert!(msg.contains(expected) && msg.contains("bad.toml"), "expected {expected:?} in {msg:?}");
        }
        let (_dir, manifest) =
            project_with("[payload]\nprofile = \"pg\"\npackages = [\"postgresql\"]\n", &[("pg", pg)]);
        let msg = format!("{:#}", Appliance::load(&manifest, "0.1.0", None).unwrap_err());
        assert!(msg.contains("its other keys belong in payloads/pg.toml"), "{msg}");
    }
}
