//! Real-world stops and hostile files, through the real binary: SIGTERM and SIGHUP, a closed or
//! full stdout, a stop during the final evaluation, one owner per model directory, refusing to
//! overwrite, special files written through and never read, leftover temporary files, resumes
//! of edited or foreign runs, size limits, bounded memory and prompt answers on a pipe.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::sleep;
use std::time::Duration;

use common::*;
use tempfile::TempDir;

/// A run of a few seconds that checkpoints often: long enough to be stopped mid-way.
const RUN: &[&str] = &[
    "--samples",
    "30000",
    "--seed",
    "5",
    "--encoder-units",
    "24",
    "--decoder-units",
    "16",
    "--eval-samples",
    "500",
    "--checkpoint-every",
    "1000",
    "--device",
    "cpu",
];

fn binary() -> Command {
    let mut command = Command::new(assert_cmd::cargo::cargo_bin("seq2seq"));
    command.args(["--threads", "1"]);
    command
}

/// Starts `train --quiet --out DIR` plus `RUN` and `extra`, without waiting.
fn spawn_training(dir: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["train", "--quiet", "--out", path_str(dir)];
    args.extend_from_slice(RUN);
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Waits for `child`; returns its exit code and standard error.
fn finish(child: Child) -> (Option<i32>, String) {
    let output = child.wait_with_output().expect("the process ends");
    let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    // A process killed by a signal has no exit code: say which signal, for the failure message.
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&output.status) {
        stderr.push_str(&format!("\n[killed by signal {signal}]"));
    }
    (output.status.code(), stderr)
}

#[test]
fn sigterm_and_sighup_checkpoint_like_ctrl_c_and_exit_as_the_shell_expects() {
    let home = TempDir::new().expect("temp dir");
    // Twice in quick succession, as GNU `timeout` signals (the command, then its process group):
    // still one stop. The pause makes sure the first was taken before the second arrives.
    let cases =
        [(libc::SIGTERM, 1, 143, "SIGTERM"), (libc::SIGTERM, 2, 143, "SIGTERM"), (libc::SIGHUP, 1, 129, "SIGHUP")];
    for (signal, times, status, name) in cases {
        let dir = home.path().join(format!("{name}-{times}"));
        let child = spawn_training(&dir, &[]);
        wait_until("the first checkpoint", || dir.join("training_state.safetensors").exists());
        for _ in 0..times {
            send(&child, signal);
            std::thread::sleep(Duration::from_millis(50));
        }
        let (code, stderr) = finish(child);
        assert_eq!(code, Some(status), "{stderr}");
        assert!(stderr.contains(&format!("stopped by {name}")) && stderr.contains("train --resume"), "{stderr}");
        let info = run(&["info", "--model", path_str(&dir)]);
        let said = format!("{}: a checkpoint after ", dir.display());
        info.succeeded().stdout_has(&[&said, " of 30000 samples", "Not scored yet"]);
        run(&["train", "--quiet", "--resume", path_str(&dir)]).succeeded();
        assert_holds_exactly_a_model(&dir);
    }
}

#[test]
fn a_closed_stdout_does_not_stop_training() {
    let home = TempDir::new().expect("temp dir");
    let dir = home.path().join("model");
    // Progress lines on a pipe whose reader is gone from the start.
    let mut child = binary()
        .args(["train", "--out", path_str(&dir), "--samples", "3000", "--encoder-units", "16"])
        .args(["--decoder-units", "16", "--eval-samples", "200", "--device", "cpu", "--log-every", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    drop(child.stdout.take());
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert_holds_exactly_a_model(&dir);
    assert!(read_json(&dir.join("config.json"))["metrics"].is_object());
}

#[test]
fn a_stop_during_the_final_evaluation_keeps_the_trained_model() {
    let home = TempDir::new().expect("temp dir");
    let dir = home.path().join("model");
    let child = binary()
        .args(["train", "--quiet", "--out", path_str(&dir), "--samples", "2000", "--encoder-units", "8"])
        .args(["--decoder-units", "8", "--eval-samples", "100000000", "--device", "cpu"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    // The trained weights are saved before the (long) evaluation starts.
    wait_until("the trained model's save", || dir.join("config.json").exists());
    sleep(Duration::from_millis(300));
    send(&child, libc::SIGINT);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    assert!(stderr.contains("saved in") && stderr.contains("without its final scores"), "{stderr}");
    let config = read_json(&dir.join("config.json"));
    assert!(config.get("checkpoint").is_none() && config.get("metrics").is_none(), "{config}");
    run(&["evaluate", "--model", path_str(&dir), "--samples", "100"]).succeeded();
}

#[test]
fn a_model_directory_has_one_owner() {
    let home = TempDir::new().expect("temp dir");
    let dir = home.path().join("model");
    // Many epochs: the run outlasts the two tries below by far.
    let child = spawn_training(&dir, &["--epochs", "50"]);
    wait_until("the lock", || fs::read_to_string(dir.join(".lock")).is_ok_and(|text| !text.is_empty()));
    let holder = format!("process {}", child.id());
    for args in [
        vec!["train", "--quiet", "--out", path_str(&dir), "--overwrite", "--samples", "100"],
        vec!["train", "--quiet", "--resume", path_str(&dir)],
    ] {
        let outcome = run(&args);
        outcome.failed().stderr_has(&["is in use by seq2seq train", &holder]);
    }
    send(&child, libc::SIGKILL);
    let _ = finish(child);
    // The kernel released the lock with the process, though its file stays.
    assert!(dir.join(".lock").exists());
    let small = ["--samples", "64", "--encoder-units", "8", "--decoder-units", "8", "--eval-samples", "10"];
    let mut args = vec!["train", "--quiet", "--out", path_str(&dir), "--overwrite"];
    args.extend_from_slice(&small);
    run(&args).succeeded();
    assert_holds_exactly_a_model(&dir);
}

#[test]
fn train_refuses_to_overwrite_a_model_or_a_checkpoint_unless_told_to() {
    let home = TempDir::new().expect("temp dir");
    let finished = home.path().join("finished");
    copy_dir(&shared_model().dir, &finished);
    let small = ["--samples", "64", "--encoder-units", "8", "--decoder-units", "8", "--eval-samples", "10"];
    let mut args = vec!["train", "--quiet", "--out", path_str(&finished)];
    args.extend_from_slice(&small);
    run(&args).failed().stderr_has(&["already holds a trained model", "--overwrite"]);
    assert_eq!(read_json(&finished.join("config.json")), read_json(&shared_model().dir.join("config.json")));
    args.push("--overwrite");
    run(&args).succeeded();
    assert_eq!(read_json(&finished.join("config.json"))["model"]["encoder_units"], 8);

    // The picture of the replaced model's metrics goes with them; the user's own files stay.
    run(&["plot", "--model", path_str(&finished)]).succeeded();
    fs::write(finished.join("predictions.txt"), "keep me").expect("write");
    args.extend_from_slice(&["--seed", "2"]);
    run(&args).succeeded();
    assert_eq!(read_json(&finished.join("config.json"))["training"]["seed"], 2);
    assert!(!finished.join("learning_curve.png").exists(), "the old learning curve was left beside the new model");
    assert_eq!(fs::read_to_string(finished.join("predictions.txt")).expect("kept"), "keep me");

    let unfinished = stopped_run(home.path(), "unfinished", &[]);
    let mut args = vec!["train", "--quiet", "--out", path_str(&unfinished)];
    args.extend_from_slice(&small);
    run(&args).failed().stderr_has(&["checkpoint of an unfinished run", "--resume"]);
    assert!(unfinished.join("training_state.safetensors").exists());
}

#[test]
fn outputs_naming_a_fifo_or_a_symlink_are_written_through() {
    let model = path_str(&shared_model().dir);
    let home = TempDir::new().expect("temp dir");
    let fifo = home.path().join("vectors.csv");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read_to_string(fifo).expect("read the FIFO"))
    };
    run(&["encode", "--model", model, "--out", path_str(&fifo), "1+2+3", "4+5+6"]).succeeded();
    assert_eq!(reader.join().expect("reader").lines().count(), 2);
    assert!(fs::symlink_metadata(&fifo).expect("still there").file_type().is_fifo());

    let target = home.path().join("curve.png");
    fs::write(&target, "old").expect("write");
    let link = home.path().join("link.png");
    symlink(&target, &link).expect("symlink");
    run(&["plot", "--model", model, "--out", path_str(&link)]).succeeded();
    assert!(fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link stays a link");
    assert!(fs::read(&target).expect("target").starts_with(b"\x89PNG"), "the link's target holds the picture");

    run(&["encode", "--model", model, "--format", "npy", "--out", path_str(&fifo), "1+2+3"])
        .failed()
        .stderr_has(&["not a regular file"]);
}

#[test]
fn model_files_that_are_fifos_or_devices_are_refused_at_once() {
    for (name, command) in [("model.safetensors", "predict"), ("config.json", "predict"), ("metrics.csv", "plot")] {
        for kind in ["fifo", "zero"] {
            let (_home, dir) = damaged_copy(|dir| {
                let path = dir.join(name);
                fs::remove_file(&path).expect("remove");
                match kind {
                    "fifo" => mkfifo(&path),
                    _ => symlink("/dev/zero", &path).expect("symlink"),
                }
            });
            let mut args = vec![command, "--model", path_str(&dir)];
            if command == "predict" {
                args.push("1+2+3");
            }
            let expected = if kind == "fifo" { "is a FIFO" } else { "is a character device" };
            run(&args).failed().stderr_has(&[name, expected]);
        }
    }
}

#[test]
fn a_training_state_that_is_a_fifo_is_refused() {
    let home = TempDir::new().expect("temp dir");
    let dir = stopped_run(home.path(), "model", &[]);
    let state = dir.join("training_state.safetensors");
    fs::remove_file(&state).expect("remove");
    mkfifo(&state);
    run(&["train", "--resume", path_str(&dir)]).failed().stderr_has(&["training_state.safetensors", "is a FIFO"]);
}

/// A checkpoint stopped by Ctrl-C, in `home/name`.
fn stopped_run(home: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let dir = home.join(name);
    let child = spawn_training(&dir, extra);
    wait_until("the first checkpoint", || dir.join("training_state.safetensors").exists());
    send(&child, libc::SIGINT);
    let (code, stderr) = finish(child);
    assert_eq!(code, Some(130), "{stderr}");
    dir
}

#[test]
fn leftover_temporary_files_of_killed_writers_are_removed() {
    let home = TempDir::new().expect("temp dir");
    let dir = stopped_run(home.path(), "model", &[]);
    // What a SIGKILL in the middle of a checkpoint leaves: pid 4,000,000,000 runs nowhere.
    let leftover = dir.join(".training_state.safetensors.tmp-4000000000");
    fs::write(&leftover, vec![0u8; 4096]).expect("plant");
    run(&["train", "--quiet", "--resume", path_str(&dir)]).succeeded().stderr_has(&["Removed .training_state"]);
    assert!(!leftover.exists());
    assert_holds_exactly_a_model(&dir);
}

#[test]
fn a_resume_refuses_an_edited_config_or_a_state_from_another_run() {
    let home = TempDir::new().expect("temp dir");
    let first = stopped_run(home.path(), "first", &[]);
    for (key, value) in [("seed", 6.into()), ("learning_rate", 0.01.into()), ("batch_size", 16.into())] {
        let copy = home.path().join(format!("edited-{key}"));
        copy_dir(&first, &copy);
        edit_config(&copy, |config| config["training"][key] = value);
        run(&["train", "--resume", path_str(&copy)])
            .failed()
            .stderr_has(&["config.json was edited since the checkpoint", &format!("training.{key} is ")]);
    }
    let copy = home.path().join("edited-reverse");
    copy_dir(&first, &copy);
    edit_config(&copy, |config| config["task"]["reverse"] = true.into());
    run(&["train", "--resume", path_str(&copy)]).failed().stderr_has(&["task.reverse is true in config.json"]);

    // Same shape, same settings, another run: its state does not continue this one.
    let second = stopped_run(home.path(), "second", &[]);
    fs::copy(second.join("training_state.safetensors"), first.join("training_state.safetensors")).expect("copy");
    run(&["train", "--resume", path_str(&first)]).failed().stderr_has(&["written by run", "copied from another run"]);

    let zero_batch = home.path().join("zero-batch");
    copy_dir(&second, &zero_batch);
    edit_config(&zero_batch, |config| config["training"]["batch_size"] = 0.into());
    run(&["train", "--resume", path_str(&zero_batch)]).failed().stderr_has(&["batch size must be between 1"]);
}

#[test]
fn a_damaged_metrics_log_is_rebuilt_and_the_checkpoint_resumed() {
    let home = TempDir::new().expect("temp dir");
    let dir = stopped_run(home.path(), "model", &["--log-every", "500"]);
    let log = dir.join("metrics.csv");
    let mut text = fs::read_to_string(&log).expect("the log");
    let rows_before = text.lines().count();
    assert!(rows_before >= 3, "{text}");
    text.push_str("\0\0\0garbage,,\n");
    fs::write(&log, text).expect("damage");
    run(&["train", "--quiet", "--resume", path_str(&dir)]).succeeded().stderr_has(&["metrics.csv line", "is damaged"]);
    let rows = fs::read_to_string(&log).expect("the log").lines().count();
    assert!(rows > rows_before, "the resumed run went on logging");
    run(&["plot", "--model", path_str(&dir)]).succeeded();
}

#[test]
fn sizes_beyond_the_limits_are_refused_before_anything_is_made() {
    let home = TempDir::new().expect("temp dir");
    let out = home.path().join("never");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--quiet", "--out", path_str(&out)];
        args.extend_from_slice(extra);
        run(&args)
    };
    train(&["--encoder-units", "100000"]).failed().stderr_has(&["encoder units must be between 1 and 8192"]);
    train(&["--encoder-layers", "100000"]).failed().stderr_has(&["encoder layers must be between 1 and 16"]);
    train(&["--samples", "18446744073709551615"]).failed().stderr_has(&["training samples must be between 1"]);
    train(&["--encoder-units", "8192", "--decoder-units", "8192", "--encoder-layers", "16", "--decoder-layers", "16"])
        .failed()
        .stderr_has(&["would need about", "GiB to train, and this machine has"]);
    train(&["--learning-rate", "1e39"]).failed().stderr_has(&["at most 3.4028235e38"]);
    train(&["--dropout", "0.5"]).failed().stderr_has(&["--dropout applies between stacked LSTM layers"]);
    assert!(!out.exists(), "nothing was made for refused settings");
    for threads in ["10000", "4294967296", "4294967297", "0"] {
        run(&["--threads", threads, "info"]).failed().stderr_has(&["--threads must be between 1 and 256"]);
    }
    let (_home, dir) =
        damaged_copy(|dir| edit_config(dir, |config| config["model"]["encoder_units"] = 1_000_000_000_000u64.into()));
    run(&["predict", "--model", path_str(&dir), "1+2+3"]).failed().stderr_has(&["encoder units must be between 1"]);
}

/// Runs `args` with stdout on /dev/full: never a panic; an error that names stdout.
fn run_into_full_disk(args: &[&str]) -> (Option<i32>, String) {
    let output = binary()
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
        .stderr(Stdio::piped())
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_ne!(output.status.code(), Some(101), "{args:?} panicked:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}:\n{stderr}");
    (output.status.code(), stderr)
}

#[test]
fn every_subcommand_with_stdout_on_a_full_disk_reports_it_without_panicking() {
    let model = path_str(&shared_model().dir);
    let home = TempDir::new().expect("temp dir");
    let picture = home.path().join("curve.png");
    let trained = home.path().join("trained");
    let commands: Vec<Vec<&str>> = vec![
        vec!["info"],
        vec!["completions", "bash"],
        vec!["evaluate", "--model", model, "--samples", "50"],
        vec!["evaluate", "--model", model, "--samples", "50", "--json"],
        vec!["predict", "--model", model, "1+2+3"],
        vec!["encode", "--model", model, "1+2+3"],
        vec!["plot", "--model", model, "--out", path_str(&picture)],
        vec!["train", "--quiet", "--out", path_str(&trained), "--samples", "64", "--encoder-units", "8"],
        vec!["--help"],
        vec!["train", "--help"],
        vec!["--version"],
    ];
    for args in &commands {
        let (code, stderr) = run_into_full_disk(args);
        assert_eq!(code, Some(1), "{args:?}:\n{stderr}");
        assert!(stderr.contains("cannot write to stdout: No space left on device"), "{args:?}:\n{stderr}");
    }
    // The training run's work was kept all the same.
    assert_holds_exactly_a_model(&trained);
}

/// The resident memory of a running process, in KiB.
fn resident_kib(child: &Child) -> u64 {
    let status = fs::read_to_string(format!("/proc/{}/status", child.id())).expect("/proc status");
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()).expect("a number of KiB")
}

#[test]
fn an_endless_line_is_refused_with_bounded_memory() {
    let model = path_str(&shared_model().dir);
    let mut child = binary()
        .args(["predict", "--model", model, "--file", "/dev/zero"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut first = String::new();
    stderr.read_line(&mut first).expect("a message");
    assert!(first.contains("/dev/zero:1: longer than 1048576 bytes"), "{first}");
    // Reading on, still within a line: the memory stays what a model and a line buffer take.
    sleep(Duration::from_secs(2));
    let resident = resident_kib(&child);
    send(&child, libc::SIGKILL);
    let _ = child.wait();
    assert!(resident < 1024 * 1024, "predict on /dev/zero holds {resident} KiB");
}

#[test]
fn a_lone_line_on_a_pipe_is_answered_before_the_next_arrives() {
    let model = path_str(&shared_model().dir);
    let mut child = binary()
        .args(["predict", "--model", model])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.expect("UTF-8")).is_err() {
                break;
            }
        }
    });
    stdin.write_all(b"1+2+3\n").expect("write");
    stdin.flush().expect("flush");
    // The next line comes only after the answer: a wait of the batch would take forever.
    let first = lines_rx.recv_timeout(Duration::from_secs(30)).expect("the first answer while the pipe is open");
    assert!(first.trim_start().starts_with("1+2+3 =") && first.ends_with(" 6)"), "{first}");
    stdin.write_all(b"4+5+6\n").expect("write");
    drop(stdin);
    let second = lines_rx.recv_timeout(Duration::from_secs(30)).expect("the second answer");
    assert!(second.contains("15"), "{second}");
    let mut rest = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut rest).expect("stderr");
    assert_eq!(child.wait().expect("ends").code(), Some(0), "{rest}");
}

#[test]
fn a_byte_order_mark_is_accepted() {
    let model = path_str(&shared_model().dir);
    let home = TempDir::new().expect("temp dir");
    let file = home.path().join("inputs.txt");
    fs::write(&file, "\u{feff}1+2+3\r\n4+5+6\n").expect("write");
    let outcome = run(&["predict", "--model", model, "--file", path_str(&file)]);
    outcome.succeeded();
    assert_eq!(outcome.stdout_lines().len(), 2);
}

/// The alphabet config.json records decides the class indices: with `1` and `2` swapped in it,
/// the model reads `2+1+3` as it read `1+2+3`, and its answer comes back with the two swapped.
#[test]
fn the_recorded_alphabet_decides_the_class_indices() {
    let model = path_str(&shared_model().dir);
    let (_swapped, swapped) = damaged_copy(|dir| edit_config(dir, |config| config["alphabet"] = "0213456789+ ".into()));
    let swap = |text: &str| -> String {
        text.chars()
            .map(|c| match c {
                '1' => '2',
                '2' => '1',
                other => other,
            })
            .collect()
    };
    // One-digit terms, so that every swapped input is in the model's range too.
    let inputs = ["1+2+3", "2+2+2", "1+1+9", "5+6+7", "9+8+7", "3+4+1", "2+1+5"];
    let predictions = |dir: &str, inputs: &[String]| -> Vec<String> {
        let mut args = vec!["predict", "--model", dir, "--json"];
        args.extend(inputs.iter().map(String::as_str));
        let outcome = run(&args);
        outcome.succeeded();
        outcome
            .stdout_lines()
            .iter()
            .map(|line| {
                let answer: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
                answer["prediction"].as_str().expect("a prediction").to_owned()
            })
            .collect()
    };
    let plain: Vec<String> = inputs.iter().map(|&input| input.to_owned()).collect();
    let swapped_inputs: Vec<String> = inputs.iter().map(|input| swap(input)).collect();
    let expected: Vec<String> = predictions(model, &plain).iter().map(|p| swap(p)).collect();
    assert_eq!(predictions(path_str(&swapped), &swapped_inputs), expected);
}

#[test]
fn messages_show_no_rust_internals() {
    let (_edited, edited) = damaged_copy(|dir| edit_config(dir, |config| config["alphabet"] = "0123456789+".into()));
    let (_removed, removed) = damaged_copy(|dir| {
        edit_config(dir, |config| {
            config.as_object_mut().expect("config.json is an object").remove("alphabet");
        })
    });
    let home = TempDir::new().expect("temp dir");
    let missing = home.path().join("no-such-file.txt");
    let (_short, short) = damaged_copy(|dir| edit_config(dir, |config| config["alphabet"] = "012345678+ ".into()));
    let cases = [
        (
            vec!["predict", "--model", path_str(&edited), "1+2+3"],
            "alphabet \"0123456789+\" has no padding symbol (space)",
        ),
        (
            vec!["predict", "--model", path_str(&removed), "1+2+3"],
            "it records no alphabet, which an arithmetic model needs",
        ),
        (
            vec!["evaluate", "--model", path_str(&short)],
            "the alphabet \"012345678+ \" lacks '9', which expressions of +",
        ),
        (
            vec!["predict", "--model", path_str(&shared_model().dir), "--file", path_str(&missing)],
            "no-such-file.txt: No such file or directory",
        ),
    ];
    for (args, expected) in cases {
        let outcome = run(&args);
        outcome.failed().stderr_has(&[expected]);
        for internal in ["Some(", "Os {", "IoError", "os error", "Position {"] {
            assert!(!outcome.stderr.contains(internal), "{internal:?} shown to a user:\n{outcome}");
        }
    }
}
