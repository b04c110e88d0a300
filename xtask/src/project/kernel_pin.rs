//! `kernel/kernel.toml`: which kernel the appliance runs (its source and release suffix), and
//! what live-build is told to install. Read with the project; built by `stages::kernel`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// `kernel/kernel.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    pub source: KernelSource,
    pub build: KernelBuild,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum KernelSource {
    /// Debian's kernel source package, at an exact version, from the build root's suite.
    DebianPackage { package: String, version: String },
    /// An upstream tarball, checked against its sha256 before anything is unpacked.
    Tarball { url: String, sha256: String, version: String },
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KernelBuild {
    /// Appended to the release (`uname -r`), e.g. `-truthdb`; also live-build's flavour.
    pub local_version: String,
    /// An upstream defconfig target, e.g. `x86_64_defconfig`.
    pub base_config: String,
}

impl KernelSource {
    /// One line naming the exact source (the SBOM's kernel entry says it).
    pub fn describe(&self) -> String {
        match self {
            KernelSource::DebianPackage { package, version } => format!("Debian source package {package} {version}"),
            KernelSource::Tarball { url, sha256, version } => format!("{version} from {url} (sha256 {sha256})"),
        }
    }
}

impl KernelPin {
    pub fn load(path: &Path) -> Result<KernelPin> {
        let text = fs::read_to_string(path).with_context(|| format!("reading kernel pin {}", path.display()))?;
        KernelPin::parse(&text).with_context(|| format!("in kernel pin {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<KernelPin> {
        let pin: KernelPin = toml::from_str(text)?;
        pin.validate()?;
        Ok(pin)
    }

    fn validate(&self) -> Result<()> {
        let local = &self.build.local_version;
        let suffix = local.strip_prefix('-').unwrap_or("");
        if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            bail!("field `build.local_version`: {local:?} must be '-' followed by lower-case letters or digits");
        }
        let base = &self.build.base_config;
        if !base.ends_with("defconfig") || !base.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("field `build.base_config`: {base:?} is not a defconfig target such as x86_64_defconfig");
        }
        let upstream = self.upstream_version();
        if upstream.split('.').count() < 2 || !upstream.chars().all(|c| c.is_ascii_digit() || c == '.') {
            bail!("field `source.version`: {upstream:?} does not start with an upstream kernel version like 6.12.117");
        }
        if let KernelSource::Tarball { url, sha256, .. } = &self.source {
            if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with("file://")) {
                bail!("field `source.url`: {url:?} is not an http(s):// or file:// URL");
            }
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("field `source.sha256`: {sha256:?} is not 64 hex digits");
            }
        }
        Ok(())
    }

    /// The upstream kernel version (`6.12.117` of Debian's `6.12.117-1`).
    pub fn upstream_version(&self) -> &str {
        match &self.source {
            KernelSource::DebianPackage { version, .. } => version.split('-').next().unwrap_or(version),
            KernelSource::Tarball { version, .. } => version,
        }
    }

    /// `uname -r` of the built kernel.
    pub fn release(&self) -> String {
        format!("{}{}", self.upstream_version(), self.build.local_version)
    }

    /// What live-build is told: it installs `<linux_packages>-<flavour>`, which must be
    /// exactly our package (`linux-image-<release>`) so that no Debian kernel is pulled in.
    pub fn live_build_selection(&self) -> LiveBuildKernel {
        LiveBuildKernel {
            linux_packages: format!("linux-image-{}", self.upstream_version()),
            flavour: self.build.local_version.trim_start_matches('-').to_owned(),
        }
    }
}

/// live-build's `--linux-packages` and `--linux-flavours` for our kernel.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LiveBuildKernel {
    pub linux_packages: String,
    pub flavour: String,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid pin, for the tests here and in `stages::kernel`.
    pub(crate) const PIN: &str = r#"
[source]
kind = "debian-package"
package = "linux-source-6.12"
version = "6.12.117-1"
[build]
local_version = "-truthdb"
base_config = "x86_64_defconfig"
"#;

    #[test]
    fn pin_names_release_and_live_build_selection() {
        let pin = KernelPin::parse(PIN).unwrap();
        assert_eq!(pin.release(), "6.12.117-truthdb");
        let lb = pin.live_build_selection();
        // live-build installs <linux_packages>-<flavour>: exactly our package.
        assert_eq!(format!("{}-{}", lb.linux_packages, lb.flavour), "linux-image-6.12.117-truthdb");
    }
}
