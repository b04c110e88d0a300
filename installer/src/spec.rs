//! The image spec: what the built image tells its installer about itself.
//!
//! `cargo xtask iso` renders it from the appliance manifest into the image as
//! [`IMAGE_SPEC_PATH`]; the engine reads it from the running live system, or from the image's
//! root file system when it builds a disk image. One type on both sides, so the two cannot
//! drift apart.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where the spec lives in the image.
pub const IMAGE_SPEC_PATH: &str = "usr/lib/truthdb/image.toml";

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// The TruthDB OS version the image was built as.
    pub version: String,
    /// Kernel command line of the installed system (the root file system is added by the
    /// installer). The serial console comes last, as in the live system.
    pub kernel_cmdline: Vec<String>,
    pub payload: PayloadSpec,
}

/// The database service the appliance runs.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PayloadSpec {
    /// systemd units enabled on the installed system.
    pub services: Vec<String>,
    /// Shell command that succeeds once the service is healthy (the boot marker runs it).
    pub health_check: String,
    /// Mount point of the data partition; none: no data partition.
    pub data_mount: Option<String>,
    /// Program run inside the installed system at install time to set the payload up (it gets
    /// the admin's name and the database password's SCRAM verifier in its environment; with
    /// TDS enabled, the TDS port and the password itself, TDS's seed).
    pub configure: Option<String>,
    /// The smallest data partition the service can live on, in GiB (none: the installer's
    /// own minimum): a smaller disk is refused before anything is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_data_gib: Option<u32>,
    /// The payload's SQL Server protocol (TDS) port, which an install enables when its config
    /// asks (`database.tds = true`); none: the payload has no TDS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tds_port: Option<u16>,
}

impl ImageSpec {
    pub fn parse(text: &str, source: &str) -> Result<ImageSpec> {
        let spec: ImageSpec =
            toml::from_str(text).map_err(|e| Error::Config { source: source.to_owned(), message: e.to_string() })?;
        if let Some(mount) = &spec.payload.data_mount
            && (!mount.starts_with('/') || mount == "/" || mount.contains(char::is_whitespace))
        {
            return Err(Error::Config {
                source: source.to_owned(),
                message: format!("field `payload.data_mount`: {mount:?} is not an absolute mount point"),
            });
        }
        Ok(spec)
    }

    pub fn load(path: &std::path::Path) -> Result<ImageSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            source: path.display().to_string(),
            message: format!("cannot read the image spec: {e}"),
        })?;
        ImageSpec::parse(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the image spec serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ImageSpec {
        ImageSpec {
            version: "0.1.0".into(),
            kernel_cmdline: vec!["quiet".into(), "console=ttyS0,115200".into()],
            payload: PayloadSpec {
                services: vec!["postgresql.service".into()],
                health_check: "pg_isready".into(),
                data_mount: Some("/var/lib/postgresql".into()),
                configure: Some("/usr/lib/truthdb/payload/postgresql-configure".into()),
                min_data_gib: None,
                tds_port: None,
            },
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let text = spec().to_toml();
        assert_eq!(ImageSpec::parse(&text, "image.toml").unwrap(), spec());
    }

    #[test]
    fn a_relative_data_mount_is_refused() {
        let text = spec().to_toml().replace("\"/var/lib/postgresql\"", "\"var/lib\"");
        let err = ImageSpec::parse(&text, "image.toml").unwrap_err().to_string();
        assert!(err.contains("payload.data_mount"), "{err}");
    }
}
