//! Typed progress events (the engine's events, as opposed to xtask's build progress): what the
//! CLI prints and the graphical installer draws.

use std::fmt;

/// The install's phases, in order.
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
    pub phase: Phase,
    /// Of the whole install, 0.0 to 1.0.
    pub fraction: f64,
    pub message: String,
}

impl Event {
    /// An event `within` (0.0-1.0) of the way through `phase`.
    pub fn new(phase: Phase, within: f64, message: impl Into<String>) -> Event {
        let (start, width) = phase.span();
        Event { phase, fraction: (start + width * within.clamp(0.0, 1.0)).min(1.0), message: message.into() }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:>3}%] {}: {}", (self.fraction * 100.0).round() as u32, self.phase.name(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_grow_through_the_phases() {
        let phases = [
            Phase::Partition,
            Phase::Format,
            Phase::Copy,
            Phase::Configure,
            Phase::Payload,
            Phase::Boot,
            Phase::Verify,
            Phase::Done,
        ];
        let mut last = -1.0;
        for phase in phases {
            for within in [0.0, 0.5, 1.0] {
                let f = Event::new(phase, within, "").fraction;
                assert!(f >= last - 1e-9, "{phase:?} {within}: {f} < {last}");
                last = f;
            }
        }
        assert_eq!(Event::new(Phase::Done, 0.0, "").to_string(), "[100%] done: ");
        assert_eq!(Event::new(Phase::Copy, 0.5, "x").to_string(), "[ 33%] copy: x");
    }
}
