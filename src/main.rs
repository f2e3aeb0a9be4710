//! The `seq2seq` binary: parse the command line, run it, report errors with their context.

use std::process::ExitCode;

use clap::Parser;
use seq2seq::cli::{Cli, run};
use seq2seq::output::{StdoutError, is_closed_pipe};
use seq2seq::train::interrupt::Stopped;

fn main() -> ExitCode {
    ignore_sigpipe();
    keep_freed_memory();
    let outcome = match Cli::try_parse() {
        Ok(cli) => run(cli),
        Err(usage) if usage.use_stderr() => usage.exit(),
        // --help and --version: a failed write to stdout is an error like any other command's.
        Err(usage) => print_usage(&usage),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        // `seq2seq ... | head`: the reader has what it wanted.
        Err(error) if is_closed_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            seq2seq::output::note(format!("error: {}", without_os_error_numbers(&format!("{error:#}"))));
            match error.downcast_ref::<Stopped>() {
                Some(stopped) => ExitCode::from(stopped.signal.exit_status()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Prints what clap made of `--help` or `--version` to stdout.
fn print_usage(usage: &clap::Error) -> anyhow::Result<()> {
    let written = usage.print().and_then(|()| std::io::Write::flush(&mut std::io::stdout()));
    written.map_err(|error| StdoutError(error).into())
}

/// `Permission denied (os error 13)` → `Permission denied`: the number means nothing to a user.
fn without_os_error_numbers(message: &str) -> String {
    let mut plain = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(" (os error ") {
        let tail = &rest[at + " (os error ".len()..];
        let digits = tail.chars().take_while(char::is_ascii_digit).count();
        plain.push_str(&rest[..at]);
        if digits > 0 && tail[digits..].starts_with(')') {
            rest = &tail[digits + 1..];
        } else {
            plain.push_str(" (os error ");
            rest = tail;
        }
    }
    plain.push_str(rest);
    plain
}

/// A closed pipe must not kill a training run (SIGPIPE's default): with the signal ignored, the
/// write fails with EPIPE instead, which training shrugs off and other commands end on quietly.
fn ignore_sigpipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_IGN is valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// A forward pass allocates its buffers anew (megabytes at prediction's batch sizes), and
/// glibc hands blocks that large back to the kernel when freed, so every batch paid for page
/// faults on fresh zeroed pages: half of a 1000-sample forward pass. Keeping freed memory in
/// the process (up to 256 MiB) lets the next batch reuse it; the peak resident size is the same.
fn keep_freed_memory() {
    // SAFETY: called first thing in main, before any allocation that these settings concern.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
