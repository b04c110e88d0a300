//! Detached, armored OpenPGP signatures with the real `gpg`, in a throwaway GnuPG home.
//!
//! The key comes from `$TRUTHDB_SIGNING_KEY_FILE` (a path) or `$TRUTHDB_SIGNING_KEY` (the
//! armored secret key itself, as CI secrets are passed), with an optional
//! `$TRUTHDB_SIGNING_KEY_PASSPHRASE`. Without one, a development key is generated for this
//! build only; its user id and the published key file say it is not a release key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::run::Cmd;

pub const KEY_FILE_ENV: &str = "TRUTHDB_SIGNING_KEY_FILE";
pub const KEY_ENV: &str = "TRUTHDB_SIGNING_KEY";
pub const PASSPHRASE_ENV: &str = "TRUTHDB_SIGNING_KEY_PASSPHRASE";

/// File name of the published public key when the signature is a development one.
pub const DEVELOPMENT_KEY_FILE: &str = "DEVELOPMENT-KEY-NOT-FOR-RELEASE.asc";
const DEVELOPMENT_UID: &str = "TruthDB OS development key (NOT A RELEASE KEY) <dev@truthdb-os.invalid>";

/// Where the signing key comes from.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// An armored secret key (from a file or the environment).
    Release { armored: String, passphrase: Option<String>, origin: String },
    /// A fresh key made for this build.
    Development,
}

impl KeySource {
    /// Reads the key source from the environment.
    pub fn from_env() -> Result<KeySource> {
        let passphrase = std::env::var(PASSPHRASE_ENV).ok();
        if let Some(path) = std::env::var_os(KEY_FILE_ENV) {
            let path = PathBuf::from(path);
            let armored = fs::read_to_string(&path)
                .with_context(|| format!("reading the signing key {} (from ${KEY_FILE_ENV})", path.display()))?;
            return Ok(KeySource::Release { armored, passphrase, origin: path.display().to_string() });
        }
        if let Ok(armored) = std::env::var(KEY_ENV)
            && !armored.trim().is_empty()
        {
            {
                return Ok(KeySource::Release { armored, passphrase, origin: format!("${KEY_ENV}") });
            }
        }
        Ok(KeySource::Development)
    }
}

/// A GnuPG home holding exactly one signing key.
pub struct Signer {
    home: tempfile::TempDir,
    pub fingerprint: String,
    pub is_development: bool,
    passphrase: Option<String>,
}

/// GnuPG homes are named `truthdb-gpg-<pid>-*`, so a later run can tell one whose run is gone.
const HOME_PREFIX: &str = "truthdb-gpg-";

impl Signer {
    pub fn new(source: &KeySource) -> Result<Signer> {
        remove_orphaned_homes(&std::env::temp_dir());
        // 0700 from the start (not chmod after): the home holds the secret key, and a build
        // host may have other users.
        let home = tempfile::Builder::new()
            .prefix(&format!("{HOME_PREFIX}{}-", std::process::id()))
            .permissions(fs::Permissions::from_mode(0o700))
            .tempdir()
            .context("creating a GnuPG home")?;
        let mut signer = Signer { home, fingerprint: String::new(), is_development: false, passphrase: None };
        match source {
            KeySource::Release { armored, passphrase, origin } => {
                // On stdin: the armored key is never a file of its own.
                signer.passphrase = passphrase.clone();
                signer
                    .gpg()
                    .arg("--import")
                    .stdin_secret(armored.as_bytes())
                    .run()
                    .with_context(|| format!("importing the signing key from {origin}"))?;
            }
            KeySource::Development => {
                signer.is_development = true;
                signer
                    .gpg()
                    .args(["--passphrase", "", "--quick-generate-key", DEVELOPMENT_UID, "ed25519", "sign", "30d"])
                    .run()
                    .context("generating a development signing key")?;
            }
        }
        signer.fingerprint = signer.secret_fingerprint()?;
        Ok(signer)
    }

    fn gpg(&self) -> Cmd {
        Cmd::new("gpg").arg("--homedir").arg(self.home.path()).args([
            "--batch",
            "--no-tty",
            "--pinentry-mode",
            "loopback",
        ])
    }

    fn secret_fingerprint(&self) -> Result<String> {
        let listing = self.gpg().args(["--with-colons", "--list-secret-keys"]).read()?;
        let fingerprints = colon_fingerprints(&listing);
        match fingerprints.as_slice() {
            [only] => Ok(only.clone()),
            [] => bail!("the signing key holds no secret key"),
            [primary, ..] => Ok(primary.clone()),
        }
    }

    /// Writes `<file>.sign`, a detached armored signature of `file`.
    pub fn sign_detached(&self, file: &Path) -> Result<PathBuf> {
        let sig = PathBuf::from(format!("{}.sign", file.display()));
        let mut gpg = self.gpg().args(["--yes", "--armor", "--detach-sign", "--local-user"]).arg(&self.fingerprint);
        if let Some(passphrase) = &self.passphrase {
            // Through a file descriptor (stdin), never a file or the argument list.
            gpg = gpg.args(["--passphrase-fd", "0"]).stdin_secret(format!("{passphrase}\n"));
        }
        gpg.arg("--output").arg(&sig).arg(file).run().with_context(|| format!("signing {}", file.display()))?;
        Ok(sig)
    }

    /// Writes the armored public key, labelled when it is a development key.
    pub fn export_public_key(&self, path: &Path) -> Result<()> {
        let mut gpg = self.gpg().arg("--armor");
        if self.is_development {
            gpg = gpg.args(["--comment", "TruthDB OS DEVELOPMENT key: NOT A RELEASE SIGNATURE"]);
        }
        let armored = gpg.arg("--export").arg(&self.fingerprint).read().context("exporting the public key")?;
        fs::write(path, armored).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Signer {
    fn drop(&mut self) {
        // gpg starts an agent for the home; stop it before the directory goes.
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(self.home.path()).args(["--kill", "all"]).run();
    }
}

/// Removes GnuPG homes left in `dir` by runs that no longer exist (a SIGKILLed xtask runs no
/// destructor), stopping their agents first. Best effort: a home that cannot be removed now is
/// tried again by the next run.
fn remove_orphaned_homes(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(HOME_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(&path).args(["--kill", "all"]).run();
        let _ = fs::remove_dir_all(&path);
    }
}

/// Primary-key fingerprints in `gpg --with-colons` output.
fn colon_fingerprints(listing: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut after_primary = false;
    for line in listing.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first() {
            Some(&"sec") | Some(&"pub") => after_primary = true,
            Some(&"fpr") if after_primary => {
                if let Some(fpr) = fields.get(9) {
                    out.push(fpr.to_string());
                }
                after_primary = false;
            }
            _ => {}
        }
    }
    out
}

/// The primary fingerprint(s) of the public key(s) in an armored key file.
#[cfg(test)]
pub fn key_file_fingerprints(key: &Path) -> Result<Vec<String>> {
    let listing = Cmd::new("gpg")
        .args(["--batch", "--with-colons", "--show-keys"])
        .arg(key)
        .read()
        .with_context(|| format!("reading OpenPGP key {}", key.display()))?;
    Ok(colon_fingerprints(&listing))
}

/// The fingerprint a [`KeySource`] would sign with, without signing anything: the "nothing
/// changed" check compares it with the published build's. `None` for a development key.
pub fn release_fingerprint(source: &KeySource) -> Result<Option<String>> {
    match source {
        KeySource::Development => Ok(None),
        KeySource::Release { .. } => Ok(Some(Signer::new(source)?.fingerprint.clone())),
    }
}

/// Checks a detached signature with `gpgv` against exactly the keys in `public_key`.
/// Returns the fingerprint that made it.
pub fn verify_detached(signature: &Path, data: &Path, public_key: &Path) -> Result<String> {
    let home = tempfile::Builder::new().prefix("truthdb-gpgv-").tempdir()?;
    let keyring = home.path().join("keyring.gpg");
    Cmd::new("gpg")
        .args(["--batch", "--yes", "--dearmor", "--output"])
        .arg(&keyring)
        .arg(public_key)
        .run()
        .with_context(|| format!("reading public key {}", public_key.display()))?;
    let output = Cmd::new("gpgv")
        .args(["--status-fd", "1", "--keyring"])
        .arg(&keyring)
        .arg(signature)
        .arg(data)
        .output_unchecked()?;
    let status = String::from_utf8_lossy(&output.stdout);
    let good =
        status.lines().find_map(|l| l.strip_prefix("[GNUPG:] VALIDSIG ")).and_then(|rest| rest.split(' ').next());
    match good {
        Some(fpr) if output.status.success() => Ok(fpr.to_owned()),
        _ => bail!(
            "bad signature: {} does not verify {} with the key in {}\n{}",
            signature.display(),
            data.display(),
            public_key.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn development_signature_verifies_with_gpg_and_fails_when_tampered() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("SHA256SUMS");
        fs::write(&data, "0000  x.iso\n").unwrap();
        let signer = Signer::new(&KeySource::Development).unwrap();
        assert!(signer.is_development);
        let sig = signer.sign_detached(&data).unwrap();
        assert!(fs::read_to_string(&sig).unwrap().starts_with("-----BEGIN PGP SIGNATURE-----"));
        let key = dir.path().join(DEVELOPMENT_KEY_FILE);
        signer.export_public_key(&key).unwrap();
        assert!(fs::read_to_string(&key).unwrap().contains("NOT A RELEASE"));
        assert_eq!(key_file_fingerprints(&key).unwrap(), std::slice::from_ref(&signer.fingerprint));

        // The real gpg, as a user would run it, accepts the signature...
        let gnupg = tempfile::tempdir().unwrap();
        let gpg = || Cmd::new("gpg").arg("--homedir").arg(gnupg.path()).arg("--batch");
        gpg().arg("--import").arg(&key).run().unwrap();
        gpg().arg("--verify").arg(&sig).arg(&data).run().unwrap();
        assert_eq!(verify_detached(&sig, &data, &key).unwrap(), signer.fingerprint);

        // ...and refuses it once the signed file changes.
        fs::write(&data, "1111  x.iso\n").unwrap();
        assert!(gpg().arg("--verify").arg(&sig).arg(&data).run().is_err());
        assert!(verify_detached(&sig, &data, &key).is_err());
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(gnupg.path()).args(["--kill", "all"]).run();
    }

    #[test]
    fn a_signature_by_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("SHA512SUMS");
        fs::write(&data, "data\n").unwrap();
        let signer = Signer::new(&KeySource::Development).unwrap();
        let other = Signer::new(&KeySource::Development).unwrap();
        let sig = signer.sign_detached(&data).unwrap();
        let other_key = dir.path().join("other.asc");
        other.export_public_key(&other_key).unwrap();
        assert!(verify_detached(&sig, &data, &other_key).is_err());
    }

    #[test]
    fn an_imported_release_key_with_passphrase_signs() {
        let dir = tempfile::tempdir().unwrap();
        // Make a passphrase-protected key the way a release manager would, then export it.
        let gnupg = tempfile::tempdir().unwrap();
        let gpg =
            || Cmd::new("gpg").arg("--homedir").arg(gnupg.path()).args(["--batch", "--pinentry-mode", "loopback"]);
        gpg()
            .args([
                "--passphrase",
                "s3cret",
                "--quick-generate-key",
                "Release Test <r@t.invalid>",
                "ed25519",
                "sign",
                "1d",
            ])
            .run()
            .unwrap();
        let secret = gpg().args(["--passphrase", "s3cret", "--armor", "--export-secret-keys"]).read().unwrap();
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(gnupg.path()).args(["--kill", "all"]).run();

        let source = KeySource::Release { armored: secret, passphrase: Some("s3cret".into()), origin: "test".into() };
        let signer = Signer::new(&source).unwrap();
        assert!(!signer.is_development);
        let data = dir.path().join("SHA256SUMS");
        fs::write(&data, "x\n").unwrap();
        let sig = signer.sign_detached(&data).unwrap();
        let public = dir.path().join("release.asc");
        signer.export_public_key(&public).unwrap();
        assert_eq!(verify_detached(&sig, &data, &public).unwrap(), signer.fingerprint);
        assert_eq!(release_fingerprint(&source).unwrap(), Some(signer.fingerprint.clone()));
        assert_home_is_private(&signer, "s3cret");
    }

    /// Nothing in the GnuPG home is reachable by others, and neither the passphrase nor the
    /// armored secret key was ever written there as a file (gpg keeps the key in its own,
    /// still passphrase-protected, format).
    fn assert_home_is_private(signer: &Signer, passphrase: &str) {
        for entry in walkdir::WalkDir::new(signer.home.path()) {
            let entry = entry.unwrap();
            let meta = entry.path().symlink_metadata().unwrap();
            if meta.file_type().is_socket() || meta.file_type().is_symlink() {
                continue;
            }
            // The home and every directory in it are closed to others (so is everything below);
            // the secret key files are private by their own mode too.
            let mode = meta.permissions().mode() & 0o777;
            let secret = entry.path().components().any(|c| c.as_os_str() == "private-keys-v1.d");
            if meta.is_dir() || secret {
                assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}: readable by others", entry.path().display());
            }
            if meta.is_file() {
                let bytes = fs::read(entry.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains(passphrase), "{} holds the passphrase", entry.path().display());
                assert!(!text.contains("PRIVATE KEY BLOCK"), "{} holds the armored key", entry.path().display());
            }
        }
    }

    #[test]
    fn a_gnupg_home_left_by_a_killed_run_is_removed() {
        // No process has this PID (it is above the kernel's pid_max): the run that made this
        // home is gone, as after a SIGKILL.
        let stale = std::env::temp_dir().join("truthdb-gpg-4194305-leftover");
        fs::create_dir_all(stale.join("private-keys-v1.d")).unwrap();
        fs::write(stale.join("private-keys-v1.d/key.key"), "secret").unwrap();
        let signer = Signer::new(&KeySource::Development).unwrap();
        assert!(!stale.exists(), "{} was left behind", stale.display());
        assert_home_is_private(&signer, "no passphrase");
    }
}
