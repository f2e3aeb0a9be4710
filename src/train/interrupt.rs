//! Stops asked for while training: Ctrl-C (SIGINT), SIGTERM (systemd, Kubernetes, SLURM and
//! `timeout` stop jobs this way) and SIGHUP (a closed terminal). The first of them only records
//! itself in a flag, which the training loop polls so that it can stop at a step boundary, save a
//! resumable checkpoint, and exit as the shell expects (128 + the signal's number). A second
//! signal of the same kind kills the process at once, unless [`shield`] holds them for the final
//! save, or it comes within [`REPEAT_GRACE`] of the first: GNU `timeout` signals the command and
//! then its whole process group, so one stop request can arrive twice a millisecond apart.
//!
//! No handler ever runs on a computing thread: [`install`] blocks the three signals in the
//! calling thread (and so in every thread it starts later) and one waiter thread takes them with
//! `sigwait`. A handler that interrupts libtorch in the middle of oneDNN's kernels was seen to
//! corrupt the heap (about 1 run in 80 stopped mid-step: `corrupted size vs. prev_size` from
//! `sgemm_nocopy_driver`); a thread that only waits for signals interrupts nothing.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::time::{Duration, Instant};

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

/// Whether the signals are held for a save (every signal is then only recorded).
static SHIELDED: AtomicBool = AtomicBool::new(false);
/// Per stop signal, when the first one arrived since [`install`] armed it: a second one kills,
/// once the grace has passed. Only the waiter thread and [`install`] touch it, never a handler.
static FIRST_SEEN: Mutex<[Option<Instant>; 3]> = Mutex::new([None; 3]);
static WAITER: Once = Once::new();

/// How long a repeat of the first signal counts as the same request. Machines repeat within a
/// millisecond (`timeout`, a supervisor signalling both a process and its group); a person who
/// presses Ctrl-C a second time because nothing seems to happen does so later than this.
pub const REPEAT_GRACE: Duration = Duration::from_secs(1);

/// [`FIRST_SEEN`], whose instants stay valid even if a holder panicked.
fn first_seen() -> MutexGuard<'static, [Option<Instant>; 3]> {
    FIRST_SEEN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the waiter does with a signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Record it (the first of its kind, or any while shielded).
    Record,
    /// End the process as the signal's default action does.
    Kill,
}

/// The waiter's rule for a signal that arrived `at`: the first signal of each kind is recorded,
/// and so is a repeat within [`REPEAT_GRACE`] of it; a later one kills; while shielded every one
/// is recorded.
fn action_for(signal: libc::c_int, at: Instant) -> Action {
    let Some(index) = STOP_SIGNALS.iter().position(|&s| s == signal) else { return Action::Record };
    let first = *first_seen()[index].get_or_insert(at);
    let repeat_of_the_first = at.saturating_duration_since(first) < REPEAT_GRACE;
    if repeat_of_the_first || SHIELDED.load(Ordering::SeqCst) { Action::Record } else { Action::Kill }
}

/// Records `signal` as the stop request, unless one is there already (the first one is kept).
fn record(signal: libc::c_int) {
    let _ = REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// The handler for a stop signal that reaches a thread which does not block it (a thread that
/// existed before [`install`]; there is none in the binary, but a test harness has some): it
/// records the request, which is async-signal-safe.
extern "C" fn on_stop_signal(signal: libc::c_int) {
    record(signal);
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set; sigaddset takes valid signal numbers.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// Blocks the stop signals in this thread, installs the recording handler, and starts the thread
/// that waits for them: once per process.
fn start_waiter() {
    let set = stop_set();
    let handler: extern "C" fn(libc::c_int) = on_stop_signal;
    // SAFETY: `set` is initialised; `action` is fully initialised (zeroed, an empty mask, then the
    // fields set), and the handler only touches an atomic. SA_RESTART keeps reads and writes from
    // failing with EINTR.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        for signal in STOP_SIGNALS {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
    let spawned = std::thread::Builder::new().name("stop-signals".to_owned()).spawn(move || {
        loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and blocked in this thread (inherited from its parent).
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                continue;
            }
            match action_for(signal, Instant::now()) {
                Action::Record => record(signal),
                Action::Kill => kill_with(signal),
            }
        }
    });
    // Without the waiter, a blocked signal would stay pending: unblock and let the handler record.
    if spawned.is_err() {
        // SAFETY: `set` is initialised.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    }
}

/// Ends the process by `signal`'s default action, as if no handler had been there.
fn kill_with(signal: libc::c_int) -> ! {
    // SAFETY: restoring the default action and raising a valid signal in this thread, where it
    // is then unblocked: the kernel ends the process.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Arms the stop signals for a training run: the first of each kind is recorded, a second
/// kills. Call it before starting any thread that computes, so that they all block the signals.
/// It does not clear an earlier request: see [`reset`].
pub fn install() {
    WAITER.call_once(start_waiter);
    SHIELDED.store(false, Ordering::SeqCst);
    *first_seen() = [None; 3];
}

/// Holds every signal for the final save, which a second Ctrl-C must not cut short (it takes a
/// fraction of a second, and losing it would lose the trained weights).
pub fn shield() {
    WAITER.call_once(start_waiter);
    SHIELDED.store(true, Ordering::SeqCst);
}

/// Runs `work` (a save) with the stop signals held for its whole length, then re-arms them.
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

    /// One test for all of it: the flag, the arming and the shield are process-wide, and tests
    /// run in parallel.
    #[test]
    fn the_first_signal_is_recorded_a_second_of_its_kind_kills_unless_shielded() {
        reset();
        install();
        assert_eq!(requested(), None);
        // A signal to the whole process reaches the waiter (or, in this harness, a thread that
        // does not block it, whose handler records it alike).
        // SAFETY: kill(2) to our own process with a valid signal number.
        assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
        let start = std::time::Instant::now();
        while requested().is_none() && start.elapsed().as_secs() < 5 {
            std::thread::yield_now();
        }
        assert_eq!(requested(), Some(StopSignal(libc::SIGTERM)));
        assert_eq!(requested().map(StopSignal::exit_status), Some(143));

        // The waiter's rule, without sending anything more to this process.
        install();
        let first = Instant::now();
        let later = first + REPEAT_GRACE;
        assert_eq!(action_for(libc::SIGINT, first), Action::Record);
        assert_eq!(action_for(libc::SIGHUP, first), Action::Record, "another kind is still recorded");
        let soon = first + Duration::from_millis(1);
        assert_eq!(action_for(libc::SIGINT, soon), Action::Record, "a repeat a millisecond later is the same request");
        assert_eq!(action_for(libc::SIGINT, later), Action::Kill, "a second Ctrl-C after the grace kills");
        shield();
        assert_eq!(action_for(libc::SIGINT, later), Action::Record, "held for the final save");
        install();
        assert_eq!(action_for(libc::SIGINT, later), Action::Record, "re-armed after the save");

        // A later request of another kind does not replace the first.
        record(libc::SIGHUP);
        assert_eq!(requested(), Some(StopSignal(libc::SIGTERM)));
        reset();
        assert_eq!(requested(), None);
    }
}
