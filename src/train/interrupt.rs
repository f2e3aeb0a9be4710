//! Stops asked for while training: Ctrl-C (SIGINT), SIGTERM (systemd, Kubernetes, SLURM and
//! `timeout` stop jobs this way) and SIGHUP (a closed terminal). The first of them only records
//! itself in a flag, which the training loop polls so that it can stop at a step boundary, save a
//! resumable checkpoint, and exit as the shell expects (128 + the signal's number).
//!
//! While training, the handlers are one-shot (`SA_RESETHAND`): the kernel restores the default
//! action as it delivers the first signal of a kind, so a second Ctrl-C kills the process at
//! once, even if the loop never looks again. [`shield`] keeps them for the final save instead.

use std::fmt;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signal asked for, or 0 for none.
static REQUESTED: AtomicI32 = AtomicI32::new(0);

/// The signals that stop a run gracefully.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// A signal that asked the program to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopSignal(pub libc::c_int);

impl StopSignal {
    /// The exit status a shell gives a command ended by this signal.
    pub fn exit_status(self) -> u8 {
        (128 + self.0).clamp(0, 255) as u8
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            libc::SIGINT => write!(f, "Ctrl-C (SIGINT)"),
            libc::SIGTERM => write!(f, "SIGTERM"),
            libc::SIGHUP => write!(f, "SIGHUP"),
            other => write!(f, "signal {other}"),
        }
    }
}

/// The error a command returns when a stop signal ended it early; `main` exits with
/// [`StopSignal::exit_status`].
#[derive(Debug)]
pub struct Stopped {
    pub signal: StopSignal,
    /// What was kept and how to go on, in plain words.
    pub message: String,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stopped by {}: {}", self.signal, self.message)
    }
}

impl std::error::Error for Stopped {}

/// The handler: a store into an atomic is all it does, which is async-signal-safe. The first
/// signal is kept; a later one of another kind does not overwrite it.
extern "C" fn on_stop_signal(signal: libc::c_int) {
    let _ = REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

fn set_handlers(flags: libc::c_int) {
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    for signal in STOP_SIGNALS {
        // SAFETY: `action` is fully initialised (zeroed, an empty mask, then the fields set), and
        // the handler only touches an atomic. SA_RESTART keeps reads and writes from failing with
        // EINTR.
        let status = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = flags | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        // sigaction fails only for an invalid signal or handler; ours are valid.
        debug_assert_eq!(status, 0, "sigaction({signal}) failed");
    }
}

/// Installs the one-shot handlers (again, after a signal spent one). It does not clear an
/// earlier request: see [`reset`].
pub fn install() {
    set_handlers(libc::SA_RESETHAND);
}

/// Installs handlers that stay: for the final save, which a second Ctrl-C must not cut short
/// (it takes a fraction of a second, and losing it would lose the trained weights).
pub fn shield() {
    set_handlers(0);
}

/// Runs `work` (a save) with the stop signals caught for its whole length, then re-arms their
/// one-shot handlers.
pub fn shielded<T>(work: impl FnOnce() -> T) -> T {
    shield();
    let done = work();
    install();
    done
}

/// The first stop signal since the start (or the last [`reset`]).
pub fn requested() -> Option<StopSignal> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(StopSignal(signal)),
    }
}

/// Forgets an earlier signal (for tests, or a second training run in one process).
pub fn reset() {
    REQUESTED.store(0, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_handler(signal: libc::c_int) -> libc::sighandler_t {
        // SAFETY: a null new action only reads the current one into `current`.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(signal, std::ptr::null(), &mut current), 0);
            current.sa_sigaction
        }
    }

    /// One test for all of it: the signal disposition is process-wide, and tests run in parallel.
    #[test]
    fn first_signal_sets_the_flag_and_rearms_the_default() {
        reset();
        install();
        assert_eq!(requested(), None);
        for signal in STOP_SIGNALS {
            assert_ne!(current_handler(signal), libc::SIG_DFL);
        }

        // SAFETY: raise delivers to this thread, and our handler runs before it returns.
        assert_eq!(unsafe { libc::raise(libc::SIGTERM) }, 0);
        // Still alive, and the request is recorded.
        assert_eq!(requested(), Some(StopSignal(libc::SIGTERM)));
        assert_eq!(requested().map(StopSignal::exit_status), Some(143));
        // A second SIGTERM would now kill the process; the others are still caught.
        assert_eq!(current_handler(libc::SIGTERM), libc::SIG_DFL);
        assert_ne!(current_handler(libc::SIGINT), libc::SIG_DFL);

        // A later signal of another kind does not replace the first.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert_eq!(requested(), Some(StopSignal(libc::SIGTERM)));

        reset();
        assert_eq!(requested(), None);
        shield();
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert_eq!(requested().map(StopSignal::exit_status), Some(130));
        // Shielded handlers stay.
        assert_ne!(current_handler(libc::SIGINT), libc::SIG_DFL);
        install();
        reset();
    }
}
