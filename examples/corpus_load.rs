//! Loads a file of pairs the way `train --data FILE` does (the same loader: vocabularies, length
//! limits, the held-out split), and reports the time, the pairs kept and the memory:
//! `cargo run --release --example corpus_load -- FILE`. `scripts/corpus_memory` runs it on a
//! generated corpus of 1,000,000 pairs.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use seq2seq::data::corpus::load::{DEFAULT_VALID_FRACTION, PairSettings, load_for_training};
use seq2seq::data::corpus::read::PairFiles;
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
    let settings = PairSettings {
        files: PairFiles::Tabbed(path),
        valid: None,
        valid_fraction: DEFAULT_VALID_FRACTION,
        min_count: 1,
        skip_bad_lines: false,
        source_tokens: TokenKind::Chars,
        target_tokens: TokenKind::Chars,
        max_source_len: None,
        max_target_len: None,
    };
    let loaded = load_for_training(&settings, 1)?;
    let seconds = start.elapsed().as_secs_f64();
    let (training, held_out) = (&loaded.training, &loaded.validation);
    println!(
        "{} training pairs and {} held out; longest {}/{} tokens; vocabularies {}/{}",
        thousands(training.len()),
        thousands(held_out.len()),
        loaded.problem.max_source_len,
        loaded.problem.max_target_len,
        training.source_vocabulary.len(),
        training.target_vocabulary.len()
    );
    println!(
        "loaded in {seconds:.2} s; packed pairs {:.1} MiB; peak resident {:.1} MiB (before loading {:.1} MiB)",
        (training.heap_bytes() + held_out.heap_bytes()) as f64 / (1 << 20) as f64,
        peak_resident_kib()? as f64 / 1024.0,
        before as f64 / 1024.0
    );
    Ok(())
}
