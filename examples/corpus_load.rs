//! Loads a file of pairs the way training will, and reports the time, the pairs kept and the
//! memory: `cargo run --release --example corpus_load -- FILE`. `scripts/corpus_memory` runs it
//! on a generated corpus of 1,000,000 pairs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use seq2seq::data::corpus::read::{PairFiles, Tokenizing, read_pairs};
use seq2seq::data::corpus::{TokenKind, thousands};

/// The process's peak resident memory in KiB (VmHWM), from /proc.
fn peak_resident_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).context("no VmHWM in /proc/self/status")?;
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).context("VmHWM is not a number")
}

fn main() -> Result<()> {
    let path: PathBuf = std::env::args_os().nth(1).context("usage: corpus_load FILE")?.into();
    let before = peak_resident_kib()?;
    let start = Instant::now();
    let tokenizing =
        Tokenizing { source_tokens: TokenKind::Chars, target_tokens: TokenKind::Chars, vocabularies: None };
    let read = read_pairs(&PairFiles::Tabbed(path), &tokenizing, 1)?;
    let seconds_read = start.elapsed().as_secs_f64();
    let mut corpus = read.corpus;
    let limits = corpus.limit_lengths(None, None);
    let (training, held_out) = corpus.split(0.05, 1);
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{} lines, {} bad; {} training pairs and {} held out; longest {}/{} tokens; vocabularies {}/{}",
        thousands(read.lines),
        read.bad.count,
        thousands(training.len()),
        thousands(held_out.len()),
        limits.source,
        limits.target,
        training.source_vocabulary.len(),
        training.target_vocabulary.len()
    );
    println!(
        "read in {seconds_read:.2} s, split in {:.2} s more; packed pairs {:.1} MiB; peak resident {:.1} MiB (before loading {:.1} MiB)",
        seconds - seconds_read,
        (training.heap_bytes() + held_out.heap_bytes()) as f64 / (1 << 20) as f64,
        peak_resident_kib()? as f64 / 1024.0,
        before as f64 / 1024.0
    );
    Ok(())
}
