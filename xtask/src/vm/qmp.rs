//! A small QMP client (QEMU Machine Protocol: JSON lines over a Unix socket) for what the
//! graphical installer test does to a machine: take screendumps and press keys.

use std::io::{BufRead, BufReader, Write};
/// QEMU's QMP socket is a Unix socket; VMs run on Linux only (elsewhere in the builder
/// container). On Windows the type exists so that xtask compiles; connecting fails.
#[cfg(not(unix))]
use std::net::TcpStream as UnixStream;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU creates the socket shortly after it starts) and leaves negotiation mode.
    pub fn connect(socket: &Path, patience: Duration) -> Result<Qmp> {
        let started = Instant::now();
        #[cfg(unix)]
        let connect = || UnixStream::connect(socket);
        #[cfg(not(unix))]
        let connect = || Err::<UnixStream, _>(std::io::Error::other("QMP's Unix socket needs a Unix host"));
        let stream = loop {
            match connect() {
                Ok(stream) => break stream,
                Err(e) if started.elapsed() > patience => {
                    return Err(e).with_context(|| format!("connecting to QMP at {}", socket.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut qmp = Qmp { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            bail!("QMP at {} did not greet: {greeting}", socket.display());
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).context("reading from QMP")? == 0 {
            bail!("QEMU closed the QMP connection");
        }
        serde_json::from_str(&line).with_context(|| format!("QMP sent something that is not JSON: {line:?}"))
    }

    /// Runs a command and returns its `return` value; asynchronous events are skipped.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").context("writing to QMP")?;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                bail!("QMP {command}: {error}");
            }
        }
    }

    /// Saves the screen as a PNG.
    pub fn screendump(&mut self, png: &Path) -> Result<()> {
        self.execute("screendump", json!({ "filename": png.display().to_string(), "format": "png" }))?;
        Ok(())
    }

    /// Presses and releases keys together (QEMU "qcode" names: `ret`, `tab`, `shift`, `a`).
    pub fn press(&mut self, qcodes: &[&str]) -> Result<()> {
        let keys: Vec<Value> = qcodes.iter().map(|k| json!({ "type": "qcode", "data": k })).collect();
        self.execute("send-key", json!({ "keys": keys, "hold-time": 60 }))?;
        // One key at a time, slowly: QEMU's PS/2 keyboard queues 16 bytes (about eight keys)
        // and drops what comes after, and a TCG guest beside other VMs and a busy host can
        // stall for seconds. At 120 ms a key, a stall of about 3 s lost ten characters of the
        // SSH key the GUI test typed (its libinput said "event processing lagging behind"); at
        // 300 ms the queue holds about 3 s of typing.
        std::thread::sleep(Duration::from_millis(300));
        Ok(())
    }

    /// Types `text` on a US keyboard.
    pub fn type_text(&mut self, text: &str) -> Result<()> {
        for c in text.chars() {
            let keys = qcodes_for(c).with_context(|| format!("no key for {c:?} on a US keyboard"))?;
            self.press(&keys)?;
        }
        Ok(())
    }
}

/// The keys that type `c` on a US layout.
pub fn qcodes_for(c: char) -> Option<Vec<&'static str>> {
    const LETTERS: [&str; 26] = [
        "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r", "s", "t", "u", "v",
        "w", "x", "y", "z",
    ];
    const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    let plain = |k: &'static str| Some(vec![k]);
    let shifted = |k: &'static str| Some(vec!["shift", k]);
    match c {
        'a'..='z' => plain(LETTERS[c as usize - 'a' as usize]),
        'A'..='Z' => shifted(LETTERS[c as usize - 'A' as usize]),
        '0'..='9' => plain(DIGITS[c as usize - '0' as usize]),
        ' ' => plain("spc"),
        '-' => plain("minus"),
        '_' => shifted("minus"),
        '.' => plain("dot"),
        '/' => plain("slash"),
        '=' => plain("equal"),
        '+' => shifted("equal"),
        '@' => shifted("2"),
        ':' => shifted("semicolon"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn us_keys_for_what_the_test_types() {
        assert_eq!(qcodes_for('q'), Some(vec!["q"]));
        assert_eq!(qcodes_for('Q'), Some(vec!["shift", "q"]));
        assert_eq!(qcodes_for('7'), Some(vec!["7"]));
        assert_eq!(qcodes_for('+'), Some(vec!["shift", "equal"]));
        assert_eq!(qcodes_for('é'), None);
        // Everything in an ed25519 public key line can be typed.
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK+/9zq= dba@truthdb-e2e";
        assert!(key.chars().all(|c| qcodes_for(c).is_some()));
    }
}
