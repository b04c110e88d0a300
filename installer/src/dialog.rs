//! The serial console installer's questions (`truthdb-installer interactive`, started by the
//! boot menu's "serial console" entry): what the graphical installer's screens ask, asked line
//! by line on a plain terminal (a serial console has no cursor addressing, no mouse and
//! perhaps no colour). It builds the same [`InstallConfig`] with the engine's own checks, and
//! installs only after the person types the disk's path. The CLI's, not the engine's: the
//! engine never prints.

use truthdb_installer::block_devices::Disk;
use truthdb_installer::config::{
    Admin, Database, InstallConfig, PowerAction, Provision, check_database_password, check_hostname, check_login_name,
    check_ssh_public_key,
};
use truthdb_installer::plan::{Layout, Plan};

/// Where the questions are asked: the serial console, or a script in the tests.
pub trait Terminal {
    fn say(&mut self, text: &str);
    /// The line typed after `prompt`, without its end; `None` at the end of input (Ctrl-D).
    fn ask(&mut self, prompt: &str) -> Option<String>;
    /// As [`Terminal::ask`], not echoed: a password.
    fn ask_secret(&mut self, prompt: &str) -> Option<String>;
}

/// What the person decided.
#[derive(Debug)]
pub enum Decision {
    Install {
        disk: Box<Disk>,
        config: Box<InstallConfig>,
    },
    /// Quit (`q`, or the end of input): nothing is written.
    Quit,
}

/// The answer that quits at any question.
const QUIT: &str = "q";
const DEFAULT_HOSTNAME: &str = "truthdb";

/// Asks the questions; `disks` are the installable ones, `not_offered` the others with why.
/// `tds_port`: the payload's SQL Server protocol port (the image spec's), asked about only when
/// there is one. `hash` makes the admin password's crypt(3) hash (slow on purpose; a parameter
/// for tests).
pub fn ask(
    term: &mut dyn Terminal,
    disks: &[Disk],
    not_offered: &[(Disk, String)],
    layout: &Layout,
    tds_port: Option<u16>,
    hash: &dyn Fn(&str) -> Result<String, String>,
) -> Decision {
    term.say(&format!(
        "TruthDB OS {} installer (serial console). Type an answer and Enter; [brackets] show what an \
         empty answer takes; `{QUIT}` quits at any question, and nothing is written before you confirm \
         the disk at the end.",
        truthdb_installer::VERSION
    ));
    match ask_all(term, disks, not_offered, layout, tds_port, hash) {
        Some(decision) => decision,
        None => {
            term.say("Quit: nothing was written to any disk.");
            Decision::Quit
        }
    }
}

/// `None`: quit.
fn ask_all(
    term: &mut dyn Terminal,
    disks: &[Disk],
    not_offered: &[(Disk, String)],
    layout: &Layout,
    tds_port: Option<u16>,
    hash: &dyn Fn(&str) -> Result<String, String>,
) -> Option<Decision> {
    for (disk, why) in not_offered {
        term.say(&format!("not offered: {}: {why}", disk.describe()));
    }
    if disks.is_empty() {
        term.say(&format!(
            "No disk to install to: TruthDB OS needs a writable disk of at least {} that is not this boot medium.",
            truthdb_installer::block_devices::human_size(layout.min_disk_bytes())
        ));
        return None;
    }
    let disk = choose_disk(term, disks)?;
    let hostname =
        ask_checked(term, &format!("Host name [{DEFAULT_HOSTNAME}]: "), Some(DEFAULT_HOSTNAME), check_hostname)?;
    let user = ask_checked(term, "Administrator's login name: ", None, check_login_name)?;
    let key = ask_checked(term, "Administrator's SSH public key, one line (empty: none): ", Some(""), |key| {
        if key.is_empty() { Ok(()) } else { check_ssh_public_key(key) }
    })?;
    let password_hash = loop {
        // The appliance's SSH takes keys only: a password is for the console and sudo.
        let prompt = if key.is_empty() {
            "Administrator's password (console and sudo; SSH takes keys only): "
        } else {
            "Administrator's password for the console and sudo (empty: none, the key only): "
        };
        let password = ask_secret_twice(term, prompt)?;
        if password.is_empty() {
            if key.is_empty() {
                term.say("  The administrator needs an SSH key or a password to log in.");
                continue;
            }
            break None;
        }
        match hash(&password) {
            Ok(hashed) => break Some(hashed),
            Err(e) => term.say(&format!("  The password could not be hashed: {e}")),
        }
    };
    let database_password = loop {
        let password = ask_secret_twice(term, "Database administrator's password (12 characters or more): ")?;
        match check_database_password(&password) {
            Ok(()) => break password,
            Err(why) => term.say(&format!("  {why}")),
        }
    };
    let tds = match tds_port {
        None => false,
        Some(port) => loop {
            let prompt = format!(
                "Enable the SQL Server protocol (TDS) on port {port}, with a certificate made for this machine and \
                 the database password as its `sa` login's? yes or no [no]: "
            );
            match ask_line(term, &prompt)?.as_str() {
                "" | "no" => break false,
                "yes" => break true,
                other => term.say(&format!("  {other:?}: answer yes or no")),
            }
        },
    };
    let power = loop {
        match ask_line(term, "After the install: reboot or poweroff? [reboot]: ")?.as_str() {
            "" | "reboot" => break PowerAction::Reboot,
            "poweroff" => break PowerAction::Poweroff,
            other => term.say(&format!("  {other:?}: answer reboot or poweroff")),
        }
    };
    let config = InstallConfig {
        disk: None,
        wipe: Some(true),
        hostname,
        provision: Provision::Install,
        admin: Some(Admin {
            user,
            ssh_authorized_keys: if key.is_empty() { vec![] } else { vec![key] },
            password_hash,
        }),
        database: Some(Database { admin_password: database_password, tds }),
        power,
        // The unattended path's guards: a person here has chosen and confirmed the disk.
        reinstall: false,
        allow_bios: false,
    };
    // Each answer was checked as it came; the engine's own check of the whole is the last word.
    if let Err(why) = config.validate() {
        term.say(&format!("The install config is not valid: {why}"));
        return None;
    }
    term.say(&Plan::new(&disk, layout).to_string());
    loop {
        let typed = ask_line(
            term,
            &format!(
                "EVERYTHING on {} will be erased. Type {} to install there ({QUIT} quits): ",
                disk.path, disk.path
            ),
        )?;
        if typed == disk.path {
            return Some(Decision::Install { disk: Box::new(disk), config: Box::new(config) });
        }
        term.say(&format!("  {typed:?} is not {}: nothing was written", disk.path));
    }
}

fn choose_disk(term: &mut dyn Terminal, disks: &[Disk]) -> Option<Disk> {
    term.say("Disks to install to:");
    for (n, disk) in disks.iter().enumerate() {
        term.say(&format!("  {}) {}", n + 1, disk.describe()));
    }
    let prompt = if disks.len() == 1 {
        "Install to disk [1]: ".to_owned()
    } else {
        format!("Install to disk (1-{}): ", disks.len())
    };
    loop {
        let answer = ask_line(term, &prompt)?;
        let answer = if answer.is_empty() && disks.len() == 1 { "1" } else { answer.as_str() };
        match answer.parse::<usize>() {
            Ok(n) if (1..=disks.len()).contains(&n) => return Some(disks[n - 1].clone()),
            _ => term.say(&format!("  {answer:?}: answer a number from the list (1-{})", disks.len())),
        }
    }
}

/// A trimmed line; `None` on quit.
fn ask_line(term: &mut dyn Terminal, prompt: &str) -> Option<String> {
    let line = term.ask(prompt)?;
    let line = line.trim().to_owned();
    (line != QUIT).then_some(line)
}

/// Asked until `check` passes; an empty answer takes `default` when there is one.
fn ask_checked(
    term: &mut dyn Terminal,
    prompt: &str,
    default: Option<&str>,
    check: impl Fn(&str) -> Result<(), String>,
) -> Option<String> {
    loop {
        let answer = ask_line(term, prompt)?;
        let answer = match (answer.is_empty(), default) {
            (true, Some(default)) => default.to_owned(),
            _ => answer,
        };
        match check(&answer) {
            Ok(()) => return Some(answer),
            Err(why) => term.say(&format!("  {why}")),
        }
    }
}

/// A password typed twice alike (not trimmed: spaces may be part of it). A password of just
/// `q` is taken as quitting, as every other answer.
fn ask_secret_twice(term: &mut dyn Terminal, prompt: &str) -> Option<String> {
    loop {
        let first = term.ask_secret(prompt)?;
        if first.trim() == QUIT {
            return None;
        }
        if first.is_empty() {
            return Some(first);
        }
        let again = term.ask_secret("  Again: ")?;
        if again == first {
            return Some(first);
        }
        term.say("  The two differ; once more.");
    }
}

/// Why a typed line cannot be taken as an answer: control characters (other than a tab) are
/// line noise or a terminal's escape sequences, never part of an answer.
fn unclear(line: &str) -> Option<&'static str> {
    line.chars().any(|c| c.is_control() && c != '\t').then_some("control characters (line noise, or arrow keys)")
}

/// The serial console: lines from standard input, echo off for passwords (`stty`, on the
/// terminal that is standard input).
pub struct Console;

impl Console {
    fn echo(on: bool) {
        let _ = std::process::Command::new("stty")
            .arg(if on { "echo" } else { "-echo" })
            .stdin(std::process::Stdio::inherit())
            .status();
    }

    fn read_line() -> Option<String> {
        let mut line = String::new();
        match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line.trim_end_matches(['\n', '\r']).to_owned()),
        }
    }
}

impl Terminal for Console {
    fn say(&mut self, text: &str) {
        // A serial terminal wants CR LF; the tty's output processing (onlcr) adds the CR.
        println!("{text}");
    }

    fn ask(&mut self, prompt: &str) -> Option<String> {
        use std::io::Write;
        loop {
            print!("{prompt}");
            let _ = std::io::stdout().flush();
            let line = Console::read_line()?;
            match unclear(&line) {
                // Line noise, or a terminal's escape sequences (arrow keys): the question again,
                // whole, as a person at a serial console needs it.
                Some(why) => println!("  That answer held {why}; once more:"),
                None => return Some(line),
            }
        }
    }

    fn ask_secret(&mut self, prompt: &str) -> Option<String> {
        use std::io::Write;
        // Echo off before the prompt shows: what is typed as soon as it shows stays unseen.
        Console::echo(false);
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let line = Console::read_line();
        Console::echo(true);
        println!();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers from a script; what was said and asked, in order, as the transcript.
    struct Script {
        answers: std::collections::VecDeque<&'static str>,
        transcript: Vec<String>,
    }

    impl Script {
        fn new(answers: &[&'static str]) -> Script {
            Script { answers: answers.iter().copied().collect(), transcript: Vec::new() }
        }
        fn said(&self, text: &str) -> bool {
            self.transcript.iter().any(|line| line.contains(text))
        }
    }

    impl Terminal for Script {
        fn say(&mut self, text: &str) {
            self.transcript.push(text.to_owned());
        }
        fn ask(&mut self, prompt: &str) -> Option<String> {
            self.transcript.push(prompt.to_owned());
            self.answers.pop_front().map(str::to_owned)
        }
        fn ask_secret(&mut self, prompt: &str) -> Option<String> {
            self.ask(&format!("(secret) {prompt}"))
        }
    }

    fn disk(path: &str, gib: u64) -> Disk {
        Disk {
            path: path.into(),
            by_id: vec![],
            model: Some("QEMU HARDDISK".into()),
            serial: Some(format!("S-{}", path.trim_start_matches("/dev/"))),
            size_bytes: gib << 30,
            transport: Some("virtio".into()),
            removable: false,
            read_only: false,
            children: vec![],
        }
    }

    fn fake_hash(password: &str) -> Result<String, String> {
        Ok(format!("$6$test${}", password.len()))
    }

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample dba@laptop";

    fn run(answers: &[&'static str], disks: &[Disk]) -> (Decision, Script) {
        let mut script = Script::new(answers);
        let decision = ask(&mut script, disks, &[], &Layout::default(), None, &fake_hash);
        (decision, script)
    }

    #[test]
    fn answered_and_confirmed_it_installs_what_was_asked() {
        let disks = [disk("/dev/vda", 20), disk("/dev/vdb", 40)];
        let answers =
            ["2", "db1", "dba", KEY, "", "correct horse battery", "correct horse battery", "poweroff", "/dev/vdb"];
        let (decision, script) = run(&answers, &disks);
        let Decision::Install { disk, config } = decision else { panic!("{:?}", script.transcript) };
        assert_eq!(disk.path, "/dev/vdb");
        assert_eq!(config.hostname, "db1");
        let admin = config.admin.as_ref().unwrap();
        assert_eq!((admin.user.as_str(), admin.ssh_authorized_keys.as_slice()), ("dba", [KEY.to_owned()].as_slice()));
        assert_eq!(admin.password_hash, None, "no password given: key only");
        assert_eq!(config.database.as_ref().unwrap().admin_password, "correct horse battery");
        assert_eq!((config.power, config.wipe), (PowerAction::Poweroff, Some(true)));
        assert!(script.said("  1) /dev/vda") && script.said("  2) /dev/vdb"));
        assert!(script.said("EVERYTHING on /dev/vdb will be erased"));
        // The plan was shown before the confirmation.
        assert!(script.transcript.iter().any(|l| l.contains("/dev/vdb1")), "{:?}", script.transcript);
        // Passwords were asked without echo, and never said back.
        assert!(script.said("(secret) Database administrator's password"));
        assert!(!script.transcript.iter().any(|l| l.contains("correct horse")));
    }

    #[test]
    fn the_sql_server_protocol_is_asked_about_only_when_the_payload_has_it() {
        let disks = [disk("/dev/vda", 20)];
        let before = ["", "db1", "dba", KEY, "", "correct horse battery", "correct horse battery"];
        let after = ["poweroff", "/dev/vda"];
        let mut script = Script::new(&[&before[..], &["maybe", "yes"], &after[..]].concat());
        let decision = ask(&mut script, &disks, &[], &Layout::default(), Some(1433), &fake_hash);
        let Decision::Install { config, .. } = decision else { panic!("{:?}", script.transcript) };
        assert!(config.database.as_ref().unwrap().tds, "{:?}", script.transcript);
        assert!(script.said("(TDS) on port 1433") && script.said("\"maybe\": answer yes or no"));
        // An empty answer is no; without a port (PostgreSQL) nothing is asked.
        let mut script = Script::new(&[&before[..], &[""], &after[..]].concat());
        let Decision::Install { config, .. } =
            ask(&mut script, &disks, &[], &Layout::default(), Some(1433), &fake_hash)
        else {
            panic!()
        };
        assert!(!config.database.as_ref().unwrap().tds);
        let (_, script) = run(&[&before[..], &after[..]].concat(), &disks);
        assert!(!script.said("TDS"), "{:?}", script.transcript);
    }

    #[test]
    fn bad_answers_are_asked_again_with_the_reason() {
        let disks = [disk("/dev/vda", 20)];
        let answers = [
            "7",         // no such disk
            "",          // the only one
            "bad_host!", // not a host name
            "",          // the default
            "root",      // the system's own
            "dba",
            "not-a-key",
            "", // no key...
            "", // ...and no password: refused
            "hunter2-long-password",
            "hunter2-different",
            "hunter2-long-password",
            "hunter2-long-password",
            "postgres", // weak
            "postgres",
            "a-good-database-password",
            "a-good-database-password",
            "later", // neither reboot nor poweroff
            "",
            "/dev/vdb", // not the disk
            "/dev/vda",
        ];
        let (decision, script) = run(&answers, &disks);
        let Decision::Install { disk, config } = decision else { panic!("{:?}", script.transcript) };
        assert_eq!(disk.path, "/dev/vda");
        assert_eq!(config.hostname, "truthdb");
        let admin = config.admin.as_ref().unwrap();
        assert_eq!(admin.user, "dba");
        assert!(admin.ssh_authorized_keys.is_empty());
        assert_eq!(admin.password_hash.as_deref(), Some("$6$test$21"));
        assert_eq!(config.power, PowerAction::Reboot);
        for reason in [
            "\"7\": answer a number",
            "\"not-a-key\" is not an OpenSSH public key",
            "needs an SSH key or a password",
            "The two differ",
            "at least 12 characters",
            "\"later\": answer reboot or poweroff",
            "\"/dev/vdb\" is not /dev/vda: nothing was written",
        ] {
            assert!(script.said(reason), "{reason:?} not said: {:#?}", script.transcript);
        }
    }

    #[test]
    fn line_noise_and_escape_sequences_are_unclear_and_plain_answers_are_not() {
        assert!(unclear("/dev/vda").is_none());
        assert!(unclear("ssh-ed25519 AAAA\tcomment").is_none());
        assert!(unclear("/dev/v\u{1b}[Ada").is_some());
        assert!(unclear("1\u{0}").is_some());
        assert!(unclear("\u{7f}").is_some());
    }

    #[test]
    fn quitting_or_the_end_of_input_installs_nothing() {
        let disks = [disk("/dev/vda", 20)];
        let full = ["1", "db1", "dba", KEY, "", "correct horse battery", "correct horse battery", "", "/dev/vda"];
        assert!(matches!(run(&full, &disks).0, Decision::Install { .. }));
        // `q` at each question (the confirmation's too), with the answers that would install after it.
        for at in 0..full.len() {
            let mut answers = full.to_vec();
            answers.insert(at, "q");
            let (decision, script) = run(&answers, &disks);
            assert!(matches!(decision, Decision::Quit), "q at {at}: {:?}", script.transcript);
            assert!(script.said("nothing was written to any disk"));
        }
        // The end of input (Ctrl-D) anywhere.
        for at in 0..full.len() {
            let (decision, _) = run(&full[..at], &disks);
            assert!(matches!(decision, Decision::Quit), "input ended at {at}");
        }
    }

    #[test]
    fn no_disk_to_offer_says_why_and_quits() {
        let mut script = Script::new(&[]);
        let medium = disk("/dev/sr0", 1);
        let decision =
            ask(&mut script, &[], &[(medium, "the boot medium".into())], &Layout::default(), None, &fake_hash);
        assert!(matches!(decision, Decision::Quit));
        assert!(script.said("not offered: /dev/sr0"), "{:?}", script.transcript);
        assert!(script.said("No disk to install to"), "{:?}", script.transcript);
    }
}
