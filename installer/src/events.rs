//! The engine's typed progress events (not xtask's build progress): the install's [`Step`]s,
//! the [`Phase`]s a person sees them as, and the [`Event`]s the CLI prints and the graphical
//! installer draws. Every event names the step it comes from.

use std::fmt;

/// The install's steps, in the order [`crate::install::install`] runs them (as distinst's
/// `Step`). Each progress event names the step it comes from, and an error from a step says
/// which step failed ([`crate::Error::Step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// The refusals (boot medium, size, read-only, still the disk chosen, nothing on it in
    /// use) and the config checked against the image's own accounts; nothing is written yet.
    Check,
    /// A GPT written with `sfdisk`, and the partition nodes waited for.
    Partition,
    /// `mkfs.vfat` and `mkfs.ext4`, with UUIDs chosen here for fstab and the UKI.
    Format,
    /// The new root (and data) file systems mounted (the ESP is never mounted).
    Mount,
    /// The image's root file system copied with `unsquashfs`, then compared with the image.
    CopySystem,
    /// fstab by UUID, host name, hosts, a machine-id of its own.
    Identity,
    /// live-boot and live-config purged; the initrd made at image build put in place.
    RemoveLivePackages,
    /// New SSH host keys and the admin account.
    AdminAccount,
    /// The payload's services enabled and its configure program run.
    Payload,
    /// The unified kernel image built with `ukify` and written to the ESP's fallback path.
    Uki,
    /// A UEFI boot entry with `efibootmgr`, when asked for and the firmware allows it.
    BootEntry,
    /// The UKI read back, the log handed over, everything unmounted, the partition table and
    /// every file system checked.
    Verify,
    /// The install is done.
    Finish,
}

impl Step {
    /// Every step, in the order they run.
    pub const ALL: [Step; 13] = [
        Step::Check,
        Step::Partition,
        Step::Format,
        Step::Mount,
        Step::CopySystem,
        Step::Identity,
        Step::RemoveLivePackages,
        Step::AdminAccount,
        Step::Payload,
        Step::Uki,
        Step::BootEntry,
        Step::Verify,
        Step::Finish,
    ];

    /// The step's name in errors and the log.
    pub fn name(self) -> &'static str {
        match self {
            Step::Check => "check",
            Step::Partition => "partition",
            Step::Format => "format",
            Step::Mount => "mount",
            Step::CopySystem => "copy system",
            Step::Identity => "identity",
            Step::RemoveLivePackages => "remove live packages",
            Step::AdminAccount => "admin account",
            Step::Payload => "payload",
            Step::Uki => "uki",
            Step::BootEntry => "boot entry",
            Step::Verify => "verify",
            Step::Finish => "finish",
        }
    }

    /// The phase a person sees the step as.
    pub fn phase(self) -> Phase {
        self.place().0
    }

    /// The step's phase, and where in that phase it starts and how much of it it is.
    fn place(self) -> (Phase, f64, f64) {
        match self {
            Step::Check => (Phase::Partition, 0.0, 0.0),
            Step::Partition => (Phase::Partition, 0.0, 1.0),
            Step::Format => (Phase::Format, 0.0, 1.0),
            Step::Mount => (Phase::Copy, 0.0, 0.0),
            Step::CopySystem => (Phase::Copy, 0.0, 1.0),
            Step::Identity => (Phase::Configure, 0.0, 0.2),
            Step::RemoveLivePackages => (Phase::Configure, 0.2, 0.5),
            Step::AdminAccount => (Phase::Configure, 0.7, 0.3),
            Step::Payload => (Phase::Payload, 0.0, 1.0),
            Step::Uki => (Phase::Boot, 0.0, 0.8),
            Step::BootEntry => (Phase::Boot, 0.8, 0.2),
            Step::Verify => (Phase::Verify, 0.0, 1.0),
            Step::Finish => (Phase::Done, 0.0, 0.0),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The install's phases as a person sees them, in order: each groups one or more [`Step`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Partition,
    Format,
    Copy,
    Configure,
    Payload,
    Boot,
    Verify,
    Done,
}

impl Phase {
    /// Where each phase starts and how much of the whole it is (copying dominates).
    fn span(self) -> (f64, f64) {
        match self {
            Phase::Partition => (0.00, 0.02),
            Phase::Format => (0.02, 0.04),
            Phase::Copy => (0.06, 0.54),
            Phase::Configure => (0.60, 0.15),
            Phase::Payload => (0.75, 0.12),
            Phase::Boot => (0.87, 0.06),
            Phase::Verify => (0.93, 0.07),
            Phase::Done => (1.00, 0.00),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Partition => "partition",
            Phase::Format => "format",
            Phase::Copy => "copy",
            Phase::Configure => "configure",
            Phase::Payload => "payload",
            Phase::Boot => "boot",
            Phase::Verify => "verify",
            Phase::Done => "done",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// The step the event comes from.
    pub step: Step,
    /// Of the whole install, 0.0 to 1.0.
    pub fraction: f64,
    pub message: String,
}

impl Event {
    /// An event `within` (0.0-1.0) of the way through `step`.
    pub fn new(step: Step, within: f64, message: impl Into<String>) -> Event {
        let (phase, step_start, step_width) = step.place();
        let (start, width) = phase.span();
        let within_phase = step_start + step_width * within.clamp(0.0, 1.0);
        Event { step, fraction: (start + width * within_phase).min(1.0), message: message.into() }
    }

    /// The phase a person sees the event's step as.
    pub fn phase(&self) -> Phase {
        self.step.phase()
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>3}%] {}: {}", (self.fraction * 100.0).round() as u32, self.phase().name(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_grow_through_the_steps() {
        let mut last = -1.0;
        for step in Step::ALL {
            for within in [0.0, 0.5, 1.0] {
                let f = Event::new(step, within, "").fraction;
                assert!(f >= last - 1e-9, "{step:?} {within}: {f} < {last}");
                last = f;
            }
        }
        assert_eq!(Event::new(Step::Finish, 0.0, "").to_string(), "[100%] done: ");
        assert_eq!(Event::new(Step::CopySystem, 0.5, "x").to_string(), "[ 33%] copy: x");
    }

    #[test]
    fn the_steps_are_in_order_and_their_phases_too() {
        assert!(Step::ALL.windows(2).all(|w| w[0] < w[1]), "Step::ALL is in declaration order");
        let phases: Vec<Phase> = Step::ALL.iter().map(|s| s.phase()).collect();
        let mut distinct = phases.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            [
                Phase::Partition,
                Phase::Format,
                Phase::Copy,
                Phase::Configure,
                Phase::Payload,
                Phase::Boot,
                Phase::Verify,
                Phase::Done
            ],
            "every phase, each once, in order"
        );
        // The fractions the install's events had before they named steps.
        let fraction = |step, within| (Event::new(step, within, "").fraction * 1000.0).round() / 1000.0;
        assert_eq!(fraction(Step::Identity, 0.0), 0.60);
        assert_eq!(fraction(Step::RemoveLivePackages, 0.0), 0.63);
        assert_eq!(fraction(Step::AdminAccount, 0.0), 0.705);
        assert_eq!(fraction(Step::Payload, 0.2), 0.774);
        assert_eq!(fraction(Step::Verify, 0.3), 0.951);
    }
}
