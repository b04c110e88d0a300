//! The apt proxy: an HTTP proxy on 127.0.0.1 that every download of `lb build` goes through
//! (live-build passes `http_proxy` to debootstrap and to every apt run in the chroot, in all
//! stages). It is how a build is recorded and how a locked build is served:
//!
//! - [`Mode::Record`]: each URL is fetched once from its origin and kept in the package store;
//!   the rest of the build is served that same copy, so one build sees one archive state even
//!   if the mirror changes under it. What was fetched becomes `packages.lock` (`cargo xtask
//!   lock`) or just fills the store (every other build).
//! - [`Mode::Replay`]: only the files of a `packages.lock`, from the store; anything else is a
//!   404, noted, and named when the build fails.
//!
//! apt still checks everything it is served: the InRelease files are the archive's own, signed
//! with Debian's keys, and every index and .deb is checked against them. The proxy speaks just
//! the HTTP/1.1 apt and wget use through a proxy (absolute-form GET and HEAD, keep-alive,
//! pipelined requests answered in order); it sends no `Last-Modified`, in both modes, so the
//! times apt gives its lists do not depend on the mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{Context, Result};

use crate::project::package_lock::LockedFile;
use crate::stages::package_store::PackageStore;

/// Fetches a URL from its origin into a file (the real one is [`crate::stages::fetch::download`]).
pub type Upstream = Box<dyn Fn(&str, &Path) -> Result<()> + Send + Sync>;

pub enum Mode {
    Record(Upstream),
    Replay(BTreeMap<String, LockedFile>),
}

/// What the proxy served, by URL; and what it could not.
#[derive(Debug, Default)]
pub struct Report {
    pub served: BTreeMap<String, LockedFile>,
    /// URLs answered 404: not in the lock (replay), or not fetched from their origin (record;
    /// apt asks for files that may not exist, such as `Release` beside `InRelease`).
    pub missing: BTreeSet<String>,
}

struct Shared {
    mode: Mode,
    store: PackageStore,
    report: Mutex<Report>,
    log: Mutex<fs::File>,
}

pub struct AptProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    accepting: Option<JoinHandle<()>>,
}

impl AptProxy {
    /// Listens on a free port of 127.0.0.1; `log` gets a line per request.
    pub fn start(mode: Mode, store: PackageStore, log: &Path) -> Result<AptProxy> {
        fs::create_dir_all(store.dir()).with_context(|| format!("creating {}", store.dir().display()))?;
        let listener = TcpListener::bind("127.0.0.1:0").context("starting the apt proxy on 127.0.0.1")?;
        let address = listener.local_addr()?;
        let log = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let shared = Arc::new(Shared { mode, store, report: Mutex::new(Report::default()), log: Mutex::new(log) });
        let stop = Arc::new(AtomicBool::new(false));
        let accepting = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        let _ = serve_connection(&shared, stream);
                    });
                }
            })
        };
        Ok(AptProxy { address, shared, stop, accepting: Some(accepting) })
    }

    /// The value for `http_proxy`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.address)
    }

    /// Stops listening and returns what was served.
    pub fn finish(mut self) -> Report {
        self.shut_down();
        std::mem::take(&mut *self.shared.report.lock().unwrap())
    }

    fn shut_down(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread so it sees the flag.
        let _ = TcpStream::connect(self.address);
        if let Some(handle) = self.accepting.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for AptProxy {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// One client connection: requests answered in the order they came, until the client closes.
fn serve_connection(shared: &Shared, stream: TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(600)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let request_line = request_line.trim_end().to_owned();
        if request_line.is_empty() {
            continue;
        }
        let mut close = request_line.ends_with("HTTP/1.0");
        let mut body_length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
                    close = true;
                } else if name.eq_ignore_ascii_case("content-length") {
                    body_length = value.parse().unwrap_or(0);
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(body_length as u64), &mut std::io::sink())?;
        let mut words = request_line.split_whitespace();
        let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
        let answer = match method {
            "GET" | "HEAD" if target.starts_with("http://") => answer(shared, target),
            "GET" | "HEAD" => Answer::Status(400, "a proxy request needs an absolute http:// URL"),
            _ => Answer::Status(405, "only GET and HEAD"),
        };
        let line = match &answer {
            Answer::File(path) => format!("200 {method} {target} {}\n", path.display()),
            Answer::Status(code, why) => format!("{code} {method} {target}: {why}\n"),
        };
        let _ = shared.log.lock().unwrap().write_all(line.as_bytes());
        write_answer(&mut writer, &answer, method == "HEAD", close)?;
        if close {
            return Ok(());
        }
    }
}

enum Answer {
    File(PathBuf),
    Status(u16, &'static str),
}

fn answer(shared: &Shared, url: &str) -> Answer {
    let known = shared.report.lock().unwrap().served.get(url).cloned();
    let file = match (&shared.mode, known) {
        (_, Some(file)) => Some(file),
        (Mode::Replay(files), None) => files.get(url).cloned(),
        (Mode::Record(upstream), None) => fetch(shared, upstream, url),
    };
    match file {
        Some(file) if shared.store.has(&file.sha256) => {
            shared.report.lock().unwrap().served.insert(url.to_owned(), file.clone());
            Answer::File(shared.store.path(&file.sha256))
        }
        Some(_) => {
            shared.report.lock().unwrap().missing.insert(url.to_owned());
            Answer::Status(404, "locked, but not in the package store")
        }
        None => {
            shared.report.lock().unwrap().missing.insert(url.to_owned());
            match shared.mode {
                Mode::Replay(_) => Answer::Status(404, "not in packages.lock"),
                Mode::Record(_) => Answer::Status(404, "not fetched from its origin (see the fetch log)"),
            }
        }
    }
}

fn fetch(shared: &Shared, upstream: &Upstream, url: &str) -> Option<LockedFile> {
    let temp = shared.store.temp_path().ok()?;
    let fetched = upstream(url, &temp).and_then(|()| {
        let size = fs::metadata(&temp)?.len();
        let sha256 = shared.store.add(&temp)?;
        Ok(LockedFile { url: url.to_owned(), sha256, size })
    });
    match fetched {
        Ok(file) => Some(file),
        Err(_) => {
            let _ = fs::remove_file(&temp);
            None
        }
    }
}

fn write_answer(writer: &mut TcpStream, answer: &Answer, head_only: bool, close: bool) -> Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    match answer {
        Answer::File(path) => {
            let mut file = fs::File::open(path)?;
            let length = file.metadata()?.len();
            write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\nConnection: {connection}\r\n\r\n"
            )?;
            if !head_only {
                std::io::copy(&mut file, writer)?;
            }
        }
        Answer::Status(code, why) => {
            let reason = match code {
                400 => "Bad Request",
                404 => "Not Found",
                _ => "Method Not Allowed",
            };
            let body = format!("{why}\n");
            write!(
                writer,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
                body.len()
            )?;
            if !head_only {
                writer.write_all(body.as_bytes())?;
            }
        }
    }
    writer.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::run::Cmd;

    /// curl through the proxy, as apt would ask: (status, body).
    fn get(proxy: &AptProxy, url: &str) -> (String, String) {
        let out = Cmd::new("curl")
            .args(["--silent", "--proxy", &proxy.url(), "--write-out", "\n%{http_code}", url])
            .read()
            .unwrap();
        let (body, code) = out.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    }

    #[test]
    fn a_recorded_url_is_fetched_once_and_served_the_same_after() {
        let cache = tempfile::tempdir().unwrap();
        let calls = Arc::new(Mutex::new(0));
        let counted = calls.clone();
        let upstream: Upstream = Box::new(move |url, target| {
            let mut calls = counted.lock().unwrap();
            *calls += 1;
            if url.ends_with("/Release") {
                anyhow::bail!("404");
            }
            fs::write(target, format!("{url} fetched {calls}"))?;
            Ok(())
        });
        let proxy =
            AptProxy::start(Mode::Record(upstream), PackageStore::new(cache.path()), &cache.path().join("p.log"))
                .unwrap();
        let url = "http://deb.debian.org/debian/dists/trixie/InRelease";
        assert_eq!(get(&proxy, url), ("200".to_owned(), format!("{url} fetched 1")));
        assert_eq!(get(&proxy, url), ("200".to_owned(), format!("{url} fetched 1")), "fetched again");
        assert_eq!(get(&proxy, "http://deb.debian.org/debian/dists/trixie/Release").0, "404");
        let report = proxy.finish();
        assert_eq!(report.served.keys().collect::<Vec<_>>(), [url]);
        assert_eq!(report.missing.iter().collect::<Vec<_>>(), ["http://deb.debian.org/debian/dists/trixie/Release"]);
        assert_eq!(*calls.lock().unwrap(), 2);
        let log = fs::read_to_string(cache.path().join("p.log")).unwrap();
        assert!(log.contains("200 GET http://deb.debian.org/debian/dists/trixie/InRelease"), "{log}");
    }

    #[test]
    fn a_replay_serves_only_the_locked_files() {
        let cache = tempfile::tempdir().unwrap();
        let store = PackageStore::new(cache.path());
        let temp = store.temp_path().unwrap();
        fs::write(&temp, "deb bytes").unwrap();
        let sha256 = store.add(&temp).unwrap();
        let url = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-3_amd64.deb";
        let absent = "http://deb.debian.org/debian/pool/main/h/hello/hello_2.10-2_amd64.deb";
        let files = [
            (url.to_owned(), LockedFile { url: url.to_owned(), sha256, size: 9 }),
            (absent.to_owned(), LockedFile { url: absent.to_owned(), sha256: "0".repeat(64), size: 1 }),
        ];
        let proxy = AptProxy::start(Mode::Replay(files.into()), store, &cache.path().join("p.log")).unwrap();
        assert_eq!(get(&proxy, url), ("200".to_owned(), "deb bytes".to_owned()));
        assert_eq!(get(&proxy, absent).0, "404");
        assert_eq!(get(&proxy, "http://deb.debian.org/debian/pool/main/h/hello/hello_2.11-1_amd64.deb").0, "404");
        // Keep-alive and pipelining: two requests on one connection, answered in order.
        let mut stream = TcpStream::connect(proxy.address).unwrap();
        write!(
            stream,
            "GET {url} HTTP/1.1\r\nHost: deb.debian.org\r\n\r\nHEAD {url} HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut both = String::new();
        stream.read_to_string(&mut both).unwrap();
        assert_eq!(both.matches("HTTP/1.1 200 OK").count(), 2, "{both}");
        assert_eq!(both.matches("deb bytes").count(), 1, "HEAD sent a body: {both}");
        let report = proxy.finish();
        assert_eq!(report.served.len(), 1);
        assert_eq!(report.missing.len(), 2, "{report:?}");
    }
}
