//! The `seq2seq` binary: parse the command line, run it, report errors with their context.

use std::process::ExitCode;

use clap::Parser;
use seq2seq::cli::{Cli, run};

fn main() -> ExitCode {
    restore_default_sigpipe();
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
