//! Ctrl-C during training: the first SIGINT only raises a flag, which the training loop polls
//! so that it can stop at a step boundary and save a resumable checkpoint. The handler is
//! one-shot (`SA_RESETHAND`): the kernel restores the default action as it delivers that first
//! SIGINT, so a second Ctrl-C kills the process at once, even if the loop never looks again.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// The handler: a store into an atomic is all it does, which is async-signal-safe.
extern "C" fn on_sigint(_signal: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the one-shot SIGINT handler (again, after a SIGINT spent the previous one).
/// It does not clear an earlier request: see [`reset`].
pub fn install() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: `action` is fully initialised (zeroed, an empty mask, then the fields set), and the
    // handler only touches an atomic. SA_RESTART keeps reads and writes from failing with EINTR.
    let status = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGINT, &action, std::ptr::null_mut())
    };
    // sigaction fails only for an invalid signal or handler; SIGINT and ours are valid.
    debug_assert_eq!(status, 0, "sigaction(SIGINT) failed");
}

/// Whether a SIGINT arrived since the start (or the last [`reset`]).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Forgets an earlier SIGINT (for tests, or a second training run in one process).
pub fn reset() {
    REQUESTED.store(false, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_sigint_handler() -> libc::sighandler_t {
        // SAFETY: a null new action only reads the current one into `current`.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            assert_eq!(libc::sigaction(libc::SIGINT, std::ptr::null(), &mut current), 0);
            current.sa_sigaction
        }
    }

    /// One test for all of it: the signal disposition is process-wide, and tests run in parallel.
    #[test]
    fn first_sigint_sets_the_flag_and_rearms_the_default() {
        reset();
        install();
        assert!(!requested());
        assert_ne!(current_sigint_handler(), libc::SIG_DFL);

        // SAFETY: raise delivers to this thread, and our handler runs before it returns.
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        // Still alive, and the request is recorded.
        assert!(requested());
        // A second SIGINT would now kill the process.
        assert_eq!(current_sigint_handler(), libc::SIG_DFL);

        reset();
        assert!(!requested());
        install();
        assert_ne!(current_sigint_handler(), libc::SIG_DFL);
        assert_eq!(unsafe { libc::raise(libc::SIGINT) }, 0);
        assert!(requested());
        reset();
    }
}
