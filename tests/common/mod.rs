//! Helpers for the integration tests: running the binary, the model most tests share, and
//! fixtures built from copies of it.

// Each test file compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// Far above the slowest command (training the shared model: about 4 s on one thread), so
/// that a hang fails the test instead of stalling the suite.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The binary with `args`, and `--threads 1` unless they say otherwise (tests run side by side).
pub fn seq2seq(args: &[&str]) -> Command {
    let mut command = Command::cargo_bin("seq2seq").expect("cargo builds the seq2seq binary for integration tests");
    if !args.contains(&"--threads") {
        command.args(["--threads", "1"]);
    }
    command.args(args).timeout(TIMEOUT);
    command
}

/// Starts the binary with `args` (a training run to stop), and `--threads 1` unless they say
/// otherwise, without waiting: stdout discarded, stderr piped.
pub fn spawn(args: &[&str]) -> Child {
    let threads: &[&str] = if args.contains(&"--threads") { &[] } else { &["--threads", "1"] };
    std::process::Command::new(assert_cmd::cargo::cargo_bin("seq2seq"))
        .args(threads)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the seq2seq binary starts")
}

/// Sends `signal` to a process the test started.
pub fn send(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill({pid}, {signal})");
}

/// Waits until `ready()` holds, at most a minute.
pub fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} never happened");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes a named pipe at `path`.
pub fn mkfifo(path: &Path) {
    let name = std::ffi::CString::new(path_str(path)).expect("no NUL in a temp path");
    // SAFETY: a valid NUL-terminated path and mode.
    assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
}

/// Runs the binary with `args` and empty standard input.
pub fn run(args: &[&str]) -> Outcome {
    Outcome::of(seq2seq(args))
}

/// Runs the binary with `args`, feeding it `stdin`.
pub fn run_with_stdin(args: &[&str], stdin: impl Into<Vec<u8>>) -> Outcome {
    let mut command = seq2seq(args);
    command.write_stdin(stdin);
    Outcome::of(command)
}

/// What a finished command left: exit code and both streams.
pub struct Outcome {
    pub args: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Runs `command` to the end.
    pub fn of(mut command: Command) -> Self {
        let args = command.get_args().map(|arg| arg.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ");
        let output = command.output().expect("the seq2seq binary runs");
        Self {
            args,
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts exit status 0 and no panic.
    pub fn succeeded(&self) -> &Self {
        assert_eq!(self.code, Some(0), "expected success\n{self}");
        self.did_not_panic()
    }

    /// Asserts a handled error: exit status 1, `error: ...` last on stderr, and no panic.
    pub fn failed(&self) -> &Self {
        assert_eq!(self.code, Some(1), "expected exit status 1\n{self}");
        let last = self.stderr.lines().last().unwrap_or_default();
        assert!(last.starts_with("error: "), "expected the last stderr line to be `error: ...`\n{self}");
        self.did_not_panic()
    }

    /// Asserts a command-line error caught by clap: exit status 2 and no panic.
    pub fn failed_usage(&self) -> &Self {
        assert_eq!(self.code, Some(2), "expected clap's exit status 2\n{self}");
        assert!(self.stderr.starts_with("error: "), "expected `error: ...` on stderr\n{self}");
        self.did_not_panic()
    }

    pub fn did_not_panic(&self) -> &Self {
        for sign in ["panicked", "RUST_BACKTRACE"] {
            assert!(!self.stderr.contains(sign), "the binary panicked\n{self}");
        }
        self
    }

    /// Asserts that stderr contains every one of `fragments`.
    pub fn stderr_has(&self, fragments: &[&str]) -> &Self {
        for fragment in fragments {
            assert!(self.stderr.contains(fragment), "expected {fragment:?} on stderr\n{self}");
        }
        self
    }

    /// Asserts that stdout contains every one of `fragments`.
    pub fn stdout_has(&self, fragments: &[&str]) -> &Self {
        for fragment in fragments {
            assert!(self.stdout.contains(fragment), "expected {fragment:?} on stdout\n{self}");
        }
        self
    }

    pub fn stdout_lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: seq2seq {}\nexit: {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// Options of the shared model: the reference problem (3 terms of 1..=10), smaller LSTMs and
/// fewer samples than the reference so that it trains in about 3 s on one thread, and values
/// other than the defaults so that config.json shows each flag was honoured.
pub const SHARED_TRAINING: &[&str] = &[
    "--terms",
    "3",
    "--largest",
    "10",
    "--samples",
    "24000",
    "--batch-size",
    "32",
    "--learning-rate",
    "0.002",
    "--encoder-units",
    "64",
    "--decoder-units",
    "48",
    "--seed",
    "11",
    "--device",
    "cpu",
    "--quiet",
];

/// A model trained by this test binary, with what `train` printed.
pub struct TrainedModel {
    pub dir: PathBuf,
    pub stdout: String,
    /// Kept so that the directory lives as long as the model is used.
    _home: TempDir,
}

/// The model most tests share, trained on first use.
pub fn shared_model() -> &'static TrainedModel {
    static SHARED: OnceLock<TrainedModel> = OnceLock::new();
    SHARED.get_or_init(|| train_for_the_run("cli-shared-model-", SHARED_TRAINING))
}

/// Trains a model with `training` into a new directory named `prefix`..., for a static that
/// keeps it for the whole test run.
///
/// Statics are never dropped, so the directory outlives the run: it is made under cargo's
/// `target/tmp` (removed by `cargo clean`) rather than in the system's temporary directory.
pub fn train_for_the_run(prefix: &str, training: &[&str]) -> TrainedModel {
    let home = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("a temporary directory under target/tmp");
    let dir = home.path().join("model");
    let mut args = vec!["train", "--out", path_str(&dir)];
    args.extend_from_slice(training);
    let outcome = run(&args);
    outcome.succeeded();
    TrainedModel { dir, stdout: outcome.stdout, _home: home }
}

/// The path as a command-line argument (temporary directories have ASCII names).
pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are valid UTF-8")
}

/// Copies the files of `from` (recursively) into a new directory `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy's directory");
    for entry in fs::read_dir(from).expect("read the directory to copy") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

/// A copy of the shared model in a fresh temporary directory, damaged by `damage`; returns
/// the temporary directory (keep it alive) and the copy's path.
pub fn damaged_copy(damage: impl FnOnce(&Path)) -> (TempDir, PathBuf) {
    let home = TempDir::new().expect("a temporary directory");
    let dir = home.path().join("model");
    copy_dir(&shared_model().dir, &dir);
    damage(&dir);
    (home, dir)
}

/// Rewrites `dir/config.json` after `edit` changed its JSON.
pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config = read_json(&path);
    edit(&mut config);
    fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON serialises")).expect("write config.json");
}

pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// One JSON value per line of `text`.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))).collect()
}

/// The names in `dir`, sorted.
pub fn file_names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("read the model directory")
        .map(|entry| entry.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// A model directory holds its three files (config, weights, metrics log) and nothing else: no
/// temporary file (`.name.tmp-PID`) left behind by the atomic writes.
pub fn assert_holds_exactly_a_model(dir: &Path) {
    let expected: BTreeSet<String> = ["config.json", "metrics.csv", "model.safetensors"].map(String::from).into();
    assert_eq!(file_names(dir), expected, "files of {}", dir.display());
    let weights = fs::metadata(dir.join("model.safetensors")).expect("model.safetensors exists");
    assert!(weights.len() > 0, "model.safetensors is empty");
}

/// Every expression of the shared model's problem: `a+b+c` for a, b, c in 1..=10.
pub fn every_expression() -> Vec<(String, u64)> {
    let mut all = Vec::with_capacity(1000);
    for a in 1..=10u64 {
        for b in 1..=10 {
            for c in 1..=10 {
                all.push((format!("{a}+{b}+{c}"), a + b + c));
            }
        }
    }
    all
}

/// Symbols a model can write.
pub const ALPHABET: &str = "0123456789+ ";

/// One line of `predict`'s text output, split into its fixed-width fields.
#[derive(Debug, PartialEq, Eq)]
pub struct TextPrediction {
    pub input: String,
    pub prediction: String,
    pub expected: String,
}

/// Splits ` 9+10+9 = 27 (expect 28)` (input `input_len` wide, answers `output_len` wide),
/// asserting the layout.
pub fn parse_text_line(line: &str, input_len: usize, output_len: usize) -> TextPrediction {
    let chars: Vec<char> = line.chars().collect();
    let field = |start: usize, len: usize| chars.get(start..start + len).map(String::from_iter);
    let input = field(0, input_len);
    let prediction = field(input_len + 3, output_len);
    let expected = field(input_len + 3 + output_len + 9, output_len);
    let layout_ok = chars.len() == input_len + 3 + output_len + 9 + output_len + 1
        && field(input_len, 3).as_deref() == Some(" = ")
        && field(input_len + 3 + output_len, 9).as_deref() == Some(" (expect ")
        && line.ends_with(')');
    assert!(layout_ok, "not `<input> = <prediction> (expect <answer>)` with widths {input_len}/{output_len}: {line:?}");
    let prediction = prediction.expect("checked above");
    assert!(prediction.chars().all(|c| ALPHABET.contains(c)), "prediction outside the alphabet: {line:?}");
    TextPrediction { input: input.expect("checked above"), prediction, expected: expected.expect("checked above") }
}

/// `count` words of 2 to 6 letters from a..h and their reversals, seeded: the same file every run.
pub fn reversal_pairs(count: usize, seed: u64) -> Vec<(String, String)> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    (0..count)
        .map(|_| {
            let length = 2 + next(5) as usize;
            let word: String = (0..length).map(|_| (b'a' + next(8) as u8) as char).collect();
            let reversed = word.chars().rev().collect();
            (word, reversed)
        })
        .collect()
}

pub fn write_pairs(path: &Path, pairs: &[(String, String)]) {
    let text: String = pairs.iter().map(|(source, target)| format!("{source}\t{target}\n")).collect();
    fs::write(path, text).expect("write pairs");
}
