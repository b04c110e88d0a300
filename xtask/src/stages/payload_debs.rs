//! Stage "payload debs": the manifest's `payload.debs` (.deb files not in Debian) as local
//! files for live-build's `config/packages.chroot/`: a project file as it is, a URL downloaded
//! once into the cache and checked against its pinned SHA-256.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::project::appliance::DebSource;
use crate::util::digest::Hasher;

/// live-build's local repository only takes `<name>_<version>_<arch>.deb` files.
fn check_deb_name(name: &str, field: &str, architecture: &str) -> Result<()> {
    if !(name.ends_with(&format!("_{architecture}.deb")) || name.ends_with("_all.deb")) {
        bail!("field `{field}`: {name:?} is not named <package>_<version>_{architecture}.deb (or _all.deb)");
    }
    Ok(())
}

fn file_name_of_url(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Local paths of every payload .deb, downloading (into `cache_dir/debs/<sha256>/`) what is
/// not there yet.
pub fn resolve(
    project_root: &Path,
    manifest_path: &Path,
    debs: &[DebSource],
    architecture: &str,
    cache_dir: &Path,
    log: &Path,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for (i, deb) in debs.iter().enumerate() {
        let field = format!("payload.debs[{i}]");
        let in_manifest = || format!("in appliance manifest {}", manifest_path.display());
        match (&deb.path, &deb.url, &deb.sha256) {
            (Some(path), _, _) => {
                let file = project_root.join(path);
                let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                check_deb_name(&name, &format!("{field}.path"), architecture).with_context(in_manifest)?;
                if !file.is_file() {
                    bail!("{}: field `{field}.path`: {} does not exist", manifest_path.display(), file.display());
                }
                // Resolved (`..`, symlinks) before the check: a project is copied and built
                // elsewhere, so what goes into the image must be part of it.
                let real = file.canonicalize().with_context(|| format!("resolving {}", file.display()))?;
                let root =
                    project_root.canonicalize().with_context(|| format!("resolving {}", project_root.display()))?;
                if !real.starts_with(&root) {
                    bail!(
                        "{}: field `{field}.path`: {path:?} is {}, outside the project {}",
                        manifest_path.display(),
                        real.display(),
                        root.display()
                    );
                }
                files.push(file);
            }
            (None, Some(url), Some(sha256)) => {
                let name = file_name_of_url(url);
                check_deb_name(name, &format!("{field}.url"), architecture).with_context(in_manifest)?;
                let dir = cache_dir.join("debs").join(sha256.to_ascii_lowercase());
                let file = dir.join(name);
                // A cached copy is checked again on every use, not trusted for its directory name.
                let cached_ok = file.is_file()
                    && crate::stages::checksums::digest_file(&file)
                        .is_ok_and(|d| d.sha256.eq_ignore_ascii_case(sha256));
                if !cached_ok {
                    let _ = std::fs::remove_file(&file);
                    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                    let partial = dir.join(format!(".{name}.{}.partial", std::process::id()));
                    let pinned_in = format!("{} field `{field}.sha256`", manifest_path.display());
                    crate::stages::fetch::download_checked("payload package", url, sha256, &pinned_in, &partial, log)?;
                    std::fs::rename(&partial, &file)
                        .with_context(|| format!("moving {} into place", file.display()))?;
                }
                files.push(file);
            }
            _ => bail!("{}: field `{field}`: give either `path` or `url` + `sha256`", manifest_path.display()),
        }
    }
    Ok(files)
}

/// What the payload .debs contribute to the image's inputs digest: the pinned digests of
/// URLs, the contents of local files.
pub fn inputs_digest(project_root: &Path, debs: &[DebSource]) -> Result<String> {
    let mut hasher = Hasher::new();
    for deb in debs {
        match (&deb.path, &deb.sha256) {
            (Some(path), _) => {
                let file = project_root.join(path);
                let digest = crate::stages::checksums::digest_file(&file)
                    .with_context(|| format!("reading payload package {}", file.display()))?;
                hasher.field("path", path).field("sha256", digest.sha256);
            }
            (None, Some(sha256)) => {
                hasher.field("url", deb.url.as_deref().unwrap_or_default()).field("sha256", sha256);
            }
            (None, None) => {}
        }
    }
    Ok(hasher.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(path: Option<&str>, url: Option<&str>, sha256: Option<&str>) -> DebSource {
        DebSource { path: path.map(Into::into), url: url.map(Into::into), sha256: sha256.map(Into::into) }
    }

    #[test]
    fn local_debs_must_exist_and_be_named_for_live_build() {
        let project = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let manifest = project.path().join("lb-config/appliance.toml");
        let log = cache.path().join("log");
        std::fs::write(project.path().join("truthdb_1.0_amd64.deb"), "deb").unwrap();
        let ok = resolve(
            project.path(),
            &manifest,
            &[deb(Some("truthdb_1.0_amd64.deb"), None, None)],
            "amd64",
            cache.path(),
            &log,
        )
        .unwrap();
        assert_eq!(ok, [project.path().join("truthdb_1.0_amd64.deb")]);

        let missing = resolve(
            project.path(),
            &manifest,
            &[deb(Some("gone_1_amd64.deb"), None, None)],
            "amd64",
            cache.path(),
            &log,
        );
        let msg = format!("{:#}", missing.unwrap_err());
        assert!(msg.contains("payload.debs[0].path") && msg.contains("does not exist"), "{msg}");
        let badly_named =
            resolve(project.path(), &manifest, &[deb(Some("truthdb.deb"), None, None)], "amd64", cache.path(), &log);
        assert!(format!("{:#}", badly_named.unwrap_err()).contains("is not named <package>_<version>_amd64.deb"));
    }

    #[test]
    fn a_url_is_downloaded_once_and_checked() {
        let source = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let file = source.path().join("truthdb-server_1.0_amd64.deb");
        std::fs::write(&file, "a package").unwrap();
        let sha = crate::stages::checksums::digest_file(&file).unwrap().sha256;
        let url = format!("file://{}", file.display());
        let manifest = source.path().join("appliance.toml");
        let log = cache.path().join("log");
        let got = resolve(source.path(), &manifest, &[deb(None, Some(&url), Some(&sha))], "amd64", cache.path(), &log)
            .unwrap();
        assert_eq!(std::fs::read_to_string(&got[0]).unwrap(), "a package");

        let wrong = resolve(
            source.path(),
            &manifest,
            &[deb(None, Some(&url), Some(&"1".repeat(64)))],
            "amd64",
            cache.path(),
            &log,
        );
        let msg = format!("{:#}", wrong.unwrap_err());
        assert!(msg.contains("payload.debs[0].sha256") && msg.contains("refusing to use it"), "{msg}");
        assert!(!cache.path().join("debs").join("1".repeat(64)).join("truthdb-server_1.0_amd64.deb").exists());

        // A cached copy that no longer matches its pin (disk error, a hand edit) is not used:
        // it is checked on every reuse and fetched again.
        std::fs::write(&got[0], "tampered").unwrap();
        let again =
            resolve(source.path(), &manifest, &[deb(None, Some(&url), Some(&sha))], "amd64", cache.path(), &log)
                .unwrap();
        assert_eq!(std::fs::read_to_string(&again[0]).unwrap(), "a package");
    }

    #[test]
    fn local_debs_must_stay_inside_the_project() {
        let parent = tempfile::tempdir().unwrap();
        let project = parent.path().join("project");
        std::fs::create_dir_all(project.join("debs")).unwrap();
        let outside = parent.path().join("evil_1.0_amd64.deb");
        std::fs::write(&outside, "deb").unwrap();
        std::os::unix::fs::symlink(&outside, project.join("debs/link_1.0_amd64.deb")).unwrap();
        let manifest = project.join("lb-config/appliance.toml");
        let log = parent.path().join("log");
        for path in ["../evil_1.0_amd64.deb", outside.to_str().unwrap(), "debs/link_1.0_amd64.deb"] {
            let result = resolve(&project, &manifest, &[deb(Some(path), None, None)], "amd64", parent.path(), &log);
            let msg = format!("{:#}", result.expect_err(path));
            assert!(msg.contains("payload.debs[0].path") && msg.contains("outside the project"), "{path}: {msg}");
        }
    }
}
