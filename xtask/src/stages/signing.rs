//! Detached, armored OpenPGP signatures with the real `gpg`, in a throwaway GnuPG home.
//!
//! The key comes from `$TRUTHDB_SIGNING_KEY_FILE` (a path) or `$TRUTHDB_SIGNING_KEY` (the
//! armored secret key itself, as CI secrets are passed), with an optional
//! `$TRUTHDB_SIGNING_KEY_PASSPHRASE`. Without one, a development key is generated for this
//! build only; its user id and the published key file say it is not a release key.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util::run::Cmd;

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

/// The signing key, held in xtask's memory. Every GnuPG operation is one job with a home of
/// its own that lives only as long as the job (see [`gpg_job`]): no GnuPG home with the key in
/// it stays on disk between jobs, after the build, or after a SIGKILL.
pub struct Signer {
    /// The armored secret key (a development key is generated once, then kept here).
    armored: String,
    passphrase: Option<String>,
    pub fingerprint: String,
    pub is_development: bool,
}

/// GnuPG homes of non-root runs are named `truthdb-gpg-<pid>-*`, so a later run can tell one
/// whose run is gone.
const HOME_PREFIX: &str = "truthdb-gpg-";

impl Signer {
    pub fn new(source: &KeySource) -> Result<Signer> {
        let (armored, passphrase, is_development, origin) = match source {
            KeySource::Release { armored, passphrase, origin } => {
                if passphrase.as_deref().is_some_and(|p| p.contains('\n')) {
                    bail!("the signing key's passphrase (${PASSPHRASE_ENV}) holds a newline: GnuPG reads one line");
                }
                (armored.clone(), passphrase.clone(), false, origin.clone())
            }
            KeySource::Development => {
                let armored =
                    gpg_job("generate", &[DEVELOPMENT_UID], b"\n").context("generating a development signing key")?;
                (armored, None, true, "a new development key".to_owned())
            }
        };
        let mut signer = Signer { armored, passphrase, fingerprint: String::new(), is_development };
        let listing =
            signer.job("fingerprint", &[], b"").with_context(|| format!("importing the signing key from {origin}"))?;
        signer.fingerprint = match colon_fingerprints(&listing).as_slice() {
            [] => bail!("the signing key from {origin} holds no secret key"),
            [primary, ..] => primary.clone(),
        };
        Ok(signer)
    }

    /// Runs one job with this key imported first; `data` follows the key on stdin.
    fn job(&self, op: &str, args: &[&str], data: &[u8]) -> Result<String> {
        let mut input = format!("{}\n", self.passphrase.as_deref().unwrap_or("")).into_bytes();
        input.extend_from_slice(self.armored.trim_end().as_bytes());
        input.push(b'\n');
        input.extend_from_slice(data);
        gpg_job(op, args, &input)
    }

    /// Writes `<file>.sign`, a detached armored signature of `file`.
    pub fn sign_detached(&self, file: &Path) -> Result<PathBuf> {
        let sig = PathBuf::from(format!("{}.sign", file.display()));
        let data = fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let armored =
            self.job("sign", &[&self.fingerprint], &data).with_context(|| format!("signing {}", file.display()))?;
        fs::write(&sig, armored).with_context(|| format!("writing {}", sig.display()))?;
        Ok(sig)
    }

    /// Writes the armored public key, labelled when it is a development key.
    pub fn export_public_key(&self, path: &Path) -> Result<()> {
        let comment = if self.is_development { "TruthDB OS DEVELOPMENT key: NOT A RELEASE SIGNATURE" } else { "" };
        let armored = self.job("export", &[&self.fingerprint, comment], b"").context("exporting the public key")?;
        fs::write(path, armored).with_context(|| format!("writing {}", path.display()))
    }
}

/// One GnuPG job, as a fixed script. Its stdin: the passphrase line (empty for none), then the
/// armored secret key up to its END line (imported from the pipe, never a file of its own),
/// then the job's data. The passphrase reaches gpg through a file descriptor. `$1` is the job,
/// `$2` the home, `$3` whether to mount a tmpfs there first, the rest the job's arguments.
const GPG_JOB: &str = r#"set -eu
job=$1 home=$2 private=$3
shift 3
if [ "$private" = tmpfs ]; then
    mount -t tmpfs -o mode=0700,size=64m truthdb-gnupg "$home"
fi
umask 077
export GNUPGHOME="$home/gnupg"
mkdir -p "$GNUPGHOME"
g() { gpg --batch --no-tty --pinentry-mode loopback "$@"; }
IFS= read -r passphrase || true
if [ "$job" = generate ]; then
    g --passphrase '' --quick-generate-key "$1" ed25519 sign 30d 2>&1 >/dev/null | grep -v '^gpg: ' >&2 || true
    g --armor --export-secret-keys
    exit 0
fi
{
    while IFS= read -r line; do
        printf '%s\n' "$line"
        [ "$line" = "-----END PGP PRIVATE KEY BLOCK-----" ] && break
    done
} | g --import 2>/dev/null || { echo "gpg could not import the key (is it an armored secret key?)" >&2; exit 1; }
case $job in
fingerprint)
    g --with-colons --list-secret-keys ;;
sign)
    cat > "$home/data"
    if [ -n "$passphrase" ]; then
        printf '%s\n' "$passphrase" | g --passphrase-fd 0 --armor --detach-sign --local-user "$1" --output - "$home/data"
    else
        g --armor --detach-sign --local-user "$1" --output - "$home/data"
    fi ;;
export)
    if [ -n "$2" ]; then g --armor --comment "$2" --export "$1"; else g --armor --export "$1"; fi ;;
esac
"#;

/// Runs [`GPG_JOB`]. As root (every build), in a private mount and PID namespace on a tmpfs
/// mounted over `/tmp` there: the home, the imported key, the data and gpg-agent exist only in
/// that namespace and are gone when the job ends, however it ends (the namespace dies with
/// xtask: SIGKILL included). Without root (unit tests, `verify` needs none of this), in a 0700
/// directory removed afterwards, and by the next run when this one was killed.
fn gpg_job(job: &str, args: &[&str], input: &[u8]) -> Result<String> {
    if crate::util::host::is_root() {
        return Cmd::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"])
            .args(["sh", "-c", GPG_JOB, "sh", job, "/tmp", "tmpfs"])
            .args(args)
            .stdin_secret(input)
            .die_with_parent()
            .read()
            .with_context(|| format!("gpg job `{job}` in a private namespace"));
    }
    remove_orphaned_homes(&std::env::temp_dir());
    // 0700 from the start (not chmod after): the home will hold the secret key.
    let prefix = format!("{HOME_PREFIX}{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix);
    #[cfg(unix)]
    builder.permissions(<fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700));
    let home = builder.tempdir().context("creating a GnuPG home")?;
    let result = Cmd::new("sh")
        .args(["-c", GPG_JOB, "sh", job])
        .arg(home.path())
        .arg("directory")
        .args(args)
        .stdin_secret(input)
        .read()
        .with_context(|| format!("gpg job `{job}`"));
    // gpg started an agent for the home; stop it before the directory goes.
    let _ = Cmd::new("gpgconf").arg("--homedir").arg(home.path().join("gnupg")).args(["--kill", "all"]).run();
    result
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
        if pid == std::process::id() || crate::util::fsx::process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(path.join("gnupg")).args(["--kill", "all"]).run();
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
    gpgv(public_key, &[signature, data], None).with_context(|| {
        format!(
            "bad signature: {} does not verify {} with the key in {}",
            signature.display(),
            data.display(),
            public_key.display()
        )
    })
}

/// Checks a clear-signed file (an apt repository's `InRelease`) against exactly the keys in
/// `public_key`, and writes the text it signs to `signed_text`. Returns the signing fingerprint.
pub fn verify_clearsigned(file: &Path, public_key: &Path, signed_text: &Path) -> Result<String> {
    gpgv(public_key, &[file], Some(signed_text))
        .with_context(|| format!("{} is not signed by the key in {}", file.display(), public_key.display()))
}

/// `gpgv` with a keyring of exactly `public_key` (armored), on `files`; its `--output` when
/// given. Returns the fingerprint of the valid signature, or fails quoting gpgv.
fn gpgv(public_key: &Path, files: &[&Path], output_to: Option<&Path>) -> Result<String> {
    let home = tempfile::Builder::new().prefix("truthdb-gpgv-").tempdir()?;
    let keyring = home.path().join("keyring.gpg");
    Cmd::new("gpg")
        .env("GNUPGHOME", home.path())
        .args(["--batch", "--yes", "--dearmor", "--output"])
        .arg(&keyring)
        .arg(public_key)
        .run()
        .with_context(|| format!("reading public key {}", public_key.display()))?;
    let mut gpgv = Cmd::new("gpgv").env("GNUPGHOME", home.path()).args(["--status-fd", "1", "--keyring"]).arg(&keyring);
    if let Some(path) = output_to {
        gpgv = gpgv.arg("--output").arg(path);
    }
    let output = gpgv.args(files).output_unchecked()?;
    let status = String::from_utf8_lossy(&output.stdout);
    let good =
        status.lines().find_map(|l| l.strip_prefix("[GNUPG:] VALIDSIG ")).and_then(|rest| rest.split(' ').next());
    match good {
        Some(fpr) if output.status.success() => Ok(fpr.to_owned()),
        _ => bail!("{}", String::from_utf8_lossy(&output.stderr).trim()),
    }
}

#[cfg(test)]
mod tests {
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
        let secret = protected_key("s3cret");
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

        // A wrong passphrase is an error naming the file, not an unsigned release.
        let KeySource::Release { armored, .. } = source else { unreachable!() };
        let wrong = KeySource::Release { armored, passphrase: Some("wrong".into()), origin: "test".into() };
        let msg = format!("{:#}", Signer::new(&wrong).unwrap().sign_detached(&data).unwrap_err());
        assert!(msg.contains("signing") && msg.contains("SHA256SUMS"), "{msg}");
    }

    /// A passphrase-protected key made the way a release manager would, exported armored.
    fn protected_key(passphrase: &str) -> String {
        let gnupg = tempfile::tempdir().unwrap();
        let gpg =
            || Cmd::new("gpg").arg("--homedir").arg(gnupg.path()).args(["--batch", "--pinentry-mode", "loopback"]);
        gpg()
            .args([
                "--passphrase",
                passphrase,
                "--quick-generate-key",
                "Job Test <j@t.invalid>",
                "ed25519",
                "sign",
                "1d",
            ])
            .run()
            .unwrap();
        let secret = gpg().args(["--passphrase", passphrase, "--armor", "--export-secret-keys"]).read().unwrap();
        let _ = Cmd::new("gpgconf").arg("--homedir").arg(gnupg.path()).args(["--kill", "all"]).run();
        secret
    }

    /// The processes whose mount namespace is `ns`.
    fn in_namespace(ns: &Path) -> Vec<String> {
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| fs::read_link(e.path().join("ns/mnt")).is_ok_and(|l| l == ns))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_killed_signing_job_leaves_no_home_no_key_and_no_process() {
        if !crate::util::host::is_root() {
            eprintln!("skipped: the private namespace needs root");
            return;
        }
        use std::io::Write;
        let passphrase = "job-passphrase-7d1c";
        let key = protected_key(passphrase);
        // The job as gpg_job starts it, stopped mid-way: the key imported, the data not yet
        // complete (stdin stays open), as when xtask is killed during a signature.
        let mut job = std::process::Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--kill-child", "--propagation", "private", "--"])
            .args(["sh", "-c", GPG_JOB, "sh", "sign", "/tmp", "tmpfs", "0000"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = job.stdin.take().unwrap();
        stdin.write_all(format!("{passphrase}\n{}\nsome data", key.trim_end()).as_bytes()).unwrap();
        let home_inside = PathBuf::from(format!("/proc/{}/root/tmp/gnupg/private-keys-v1.d", job.id()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while fs::read_dir(&home_inside).map(|d| d.count()).unwrap_or(0) == 0 {
            assert!(std::time::Instant::now() < deadline, "the job never imported the key");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Read only now: right after the spawn, unshare may not have left the host's namespace.
        let ns = fs::read_link(format!("/proc/{}/ns/mnt", job.id())).unwrap();
        assert_ne!(ns, fs::read_link("/proc/self/ns/mnt").unwrap(), "the job runs in the host's mount namespace");
        // The key is in the namespace's tmpfs only, and the passphrase in no command line.
        assert!(!Path::new("/tmp/gnupg").exists(), "the GnuPG home is on the host's /tmp");
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&cmdline).contains(passphrase), "the passphrase is in an argument list");
        }
        assert!(!in_namespace(&ns).is_empty(), "no process seen in the job's namespace: the check is blind");

        job.kill().unwrap();
        job.wait().unwrap();
        drop(stdin);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !in_namespace(&ns).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "processes left in the job's namespace: {:?}",
                in_namespace(&ns)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert!(!Path::new("/tmp/gnupg").exists(), "a GnuPG home was left on the host");
    }

    #[test]
    fn a_gnupg_home_left_by_a_killed_run_is_removed() {
        // No process has the first PID (it is above the kernel's pid_max): the run that made
        // that home is gone, as after a SIGKILL. The second is this very process's.
        let temp = tempfile::tempdir().unwrap();
        let stale = temp.path().join("truthdb-gpg-4194305-leftover");
        let ours = temp.path().join(format!("truthdb-gpg-{}-current", std::process::id()));
        for home in [&stale, &ours] {
            fs::create_dir_all(home.join("gnupg/private-keys-v1.d")).unwrap();
            fs::write(home.join("gnupg/private-keys-v1.d/key.key"), "secret").unwrap();
        }
        remove_orphaned_homes(temp.path());
        assert!(!stale.exists(), "{} was left behind", stale.display());
        assert!(ours.exists(), "a live run's home was removed");
    }
}
