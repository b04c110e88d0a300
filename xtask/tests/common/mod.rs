//! Helpers for tests that run the real xtask binary against a copy of the project.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// The project's inputs copied into a temporary directory, to be changed by a test.
pub struct ProjectCopy {
    pub dir: tempfile::TempDir,
}

impl ProjectCopy {
    pub fn new() -> ProjectCopy {
        let dir = tempfile::Builder::new().prefix("truthdb-project-").tempdir().unwrap();
        let root = repo_root();
        fs::copy(root.join("Cargo.toml"), dir.path().join("Cargo.toml")).unwrap();
        fs::copy(root.join("packages.list"), dir.path().join("packages.list")).unwrap();
        fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
        // The whole workspace (cargo needs every member to build the installer), less target/.
        for sub in ["lb-config", "hooks", "overlay", "kernel", "installer", "xtask"] {
            copy_dir(&root.join(sub), &dir.path().join(sub));
        }
        ProjectCopy { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file, making its directories.
    pub fn write(&self, rel: &str, text: &str) {
        fs::create_dir_all(self.path(rel).parent().unwrap()).unwrap();
        fs::write(self.path(rel), text).unwrap();
    }

    /// Appends one line; returns its line number.
    pub fn append_line(&self, rel: &str, line: &str) -> usize {
        let old = fs::read_to_string(self.path(rel)).unwrap();
        self.write(rel, &format!("{old}{line}\n"));
        old.lines().count() + 1
    }

    pub fn append(&self, rel: &str, text: &str) {
        let old = fs::read_to_string(self.path(rel)).unwrap();
        self.write(rel, &(old + text));
    }

    /// Runs `xtask --project <copy> args...` with a fixed SOURCE_DATE_EPOCH (no git here).
    pub fn xtask(&self, args: &[&str]) -> Output {
        self.xtask_at_epoch(args, 1_767_225_600)
    }

    /// Runs xtask in the copy with SOURCE_DATE_EPOCH `epoch`. The kernel's cache key holds its
    /// timestamp: a build that must find the repository's kernel in the cache passes
    /// [`kernel_epoch`], or it compiles a kernel (18 minutes) for the copy.
    pub fn xtask_at_epoch(&self, args: &[&str], epoch: u64) -> Output {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .arg("--project")
            .arg(self.dir.path())
            .args(args)
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .output()
            .unwrap()
    }
}

/// The repository's kernel timestamp: the last commit touching `kernel/` less its READMEs
/// (what `iso` and `kernel` use when SOURCE_DATE_EPOCH is not set).
pub fn kernel_epoch() -> u64 {
    let out = Command::new("git")
        .args(["-c", "safe.directory=*", "log", "-1", "--format=%ct", "--", "kernel", ":(exclude,glob)kernel/**/*.md"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("the repository has a commit touching kernel/")
}

fn copy_dir(src: &Path, dest: &Path) {
    let status = Command::new("cp").arg("-a").arg(src).arg(dest).status().unwrap();
    assert!(status.success());
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory listing with file contents, to prove a directory was left exactly as it was.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<(String, Vec<u8>)> = walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .map(|e| {
            let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
            let content = if e.file_type().is_file() { fs::read(e.path()).unwrap() } else { Vec::new() };
            (rel, content)
        })
        .collect();
    entries.sort();
    entries
}

/// A signed apt repository on disk, made the way a vendor's is (a .deb, `Packages`, a
/// `Release` with sha256 sums, an `InRelease` clear-signed with the repository's own key),
/// and served over HTTP on 127.0.0.1 while the value lives.
pub struct LocalAptRepository {
    pub dir: tempfile::TempDir,
    /// The repository's public key, armored.
    pub key: String,
    pub url: String,
    server: std::process::Child,
}

impl LocalAptRepository {
    /// One package, `package` 1.0 (architecture all, a file in /usr/share/doc and a service,
    /// `<package>.service`, that writes `/run/<package>` and stays running), suite `suite`,
    /// component main. The package does not enable its service: a payload that lists it does.
    pub fn new(package: &str, suite: &str) -> LocalAptRepository {
        let dir = tempfile::Builder::new().prefix("truthdb-apt-").tempdir().unwrap();
        let root = dir.path().join("repo");
        let gnupg = dir.path().join("gnupg");
        fs::create_dir_all(&gnupg).unwrap();
        fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg").env("GNUPGHOME", &gnupg).arg("--batch").args(args).output().unwrap();
            assert!(out.status.success(), "gpg {args:?}: {}", stderr(&out));
            out.stdout
        };
        gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Repository <repo@example.invalid>",
            "ed25519",
            "sign",
            "1d",
        ]);
        let key = String::from_utf8(gpg(&["--armor", "--export"])).unwrap();

        // The package.
        let build = dir.path().join("build");
        fs::create_dir_all(build.join("DEBIAN")).unwrap();
        fs::create_dir_all(build.join(format!("usr/share/doc/{package}"))).unwrap();
        fs::write(build.join(format!("usr/share/doc/{package}/README")), "from a local apt repository\n").unwrap();
        fs::create_dir_all(build.join("usr/lib/systemd/system")).unwrap();
        fs::write(
            build.join(format!("usr/lib/systemd/system/{package}.service")),
            format!(
                "[Unit]\nDescription={package}, a service of a test repository's package\n\n[Service]\n\
                 ExecStart=/bin/sh -c 'echo \"{package} 1.0 running\" > /run/{package}; exec sleep infinity'\n\n\
                 [Install]\nWantedBy=multi-user.target\n"
            ),
        )
        .unwrap();
        fs::write(
            build.join("DEBIAN/control"),
            format!(
                "Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: Test <repo@example.invalid>\n\
                 Description: a package of a test repository\n"
            ),
        )
        .unwrap();
        let pool = root.join("pool/main");
        fs::create_dir_all(&pool).unwrap();
        let deb = pool.join(format!("{package}_1.0_all.deb"));
        let status = Command::new("dpkg-deb").args(["--root-owner-group", "--build"]).arg(&build).arg(&deb).output();
        assert!(status.unwrap().status.success());

        // Its index and the signed Release.
        let control = Command::new("dpkg-deb").arg("--field").arg(&deb).output().unwrap().stdout;
        let bytes = fs::read(&deb).unwrap();
        let packages = format!(
            "{}Filename: pool/main/{package}_1.0_all.deb\nSize: {}\nSHA256: {}\n\n",
            String::from_utf8(control).unwrap(),
            bytes.len(),
            sha256_hex(&bytes)
        );
        let dists = root.join(format!("dists/{suite}"));
        fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
        fs::write(dists.join("main/binary-amd64/Packages"), &packages).unwrap();
        let release = format!(
            "Origin: Test\nLabel: Test\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64 all\n\
             Components: main\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            sha256_hex(packages.as_bytes()),
            packages.len()
        );
        fs::write(dists.join("Release"), &release).unwrap();
        let in_release = dists.join("InRelease");
        gpg(&[
            "--yes",
            "--clearsign",
            "--output",
            in_release.to_str().unwrap(),
            dists.join("Release").to_str().unwrap(),
        ]);

        // Served on a free port of 127.0.0.1.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(&root)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        LocalAptRepository { dir, key, url, server }
    }
}

impl Drop for LocalAptRepository {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
