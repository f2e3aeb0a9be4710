//! The `seq2seq` binary: parse the command line, run it, report errors with their context.

use std::process::ExitCode;

use clap::Parser;
use seq2seq::cli::{Cli, run};

fn main() -> ExitCode {
    restore_default_sigpipe();
    keep_freed_memory();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, which turns `seq2seq ... | head` into a panic inside `println!`.
/// Like other Unix tools, end quietly instead when the reader goes away.
fn restore_default_sigpipe() {
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
