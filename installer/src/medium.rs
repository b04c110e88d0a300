//! Where an unattended install config comes from in the live system: a kernel parameter
//! (`truthdb.install=<path>`), else a file on the boot medium.

use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;

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
