//! Nothing lost, nothing crashes: checkpoints, Ctrl-C and resume (bit for bit), SIGKILL at any
//! moment, divergence, and damaged training state.

mod common;

use std::fs;
use std::path::Path;
use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

/// A small run of a few seconds: long enough to be interrupted, with dropout, two layers and
/// two epochs so that resume must restore dropout masks and the second epoch's shuffle.
const RUN: &[&str] = &[
    "--samples",
    "24000",
    "--epochs",
    "2",
    "--seed",
    "3",
    "--encoder-units",
    "24",
    "--decoder-units",
    "16",
    "--encoder-layers",
    "2",
    "--dropout",
    "0.2",
    "--eval-samples",
    "500",
    "--device",
    "cpu",
];

/// Starts `seq2seq --threads 1 train --quiet --out DIR` plus `RUN` and `extra`, without waiting.
fn spawn_training(dir: &Path, extra: &[&str]) -> Child {
    spawn_training_on(1, dir, extra)
}

/// [`spawn_training`] with each batch shared among `threads` threads.
fn spawn_training_on(threads: usize, dir: &Path, extra: &[&str]) -> Child {
    let threads = threads.to_string();
    let mut args = vec!["--threads", &threads, "train", "--quiet", "--out", path_str(dir)];
    args.extend_from_slice(RUN);
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Waits until `path` exists (the first checkpoint is written), at most a minute.
fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "{} never appeared", path.display());
        sleep(Duration::from_millis(5));
    }
}

#[test]
fn interrupted_then_resumed_run_ends_with_the_same_weights_bit_for_bit() {
    let home = TempDir::new().unwrap();
    let uninterrupted = home.path().join("uninterrupted");
    let mut args = vec!["train", "--quiet", "--out", path_str(&uninterrupted)];
    args.extend_from_slice(RUN);
    run(&args).succeeded();

    let interrupted = home.path().join("interrupted");
    let child = spawn_training(&interrupted, &["--checkpoint-every", "2000"]);
    wait_for(&interrupted.join("training_state.safetensors"));
    send(&child, libc::SIGINT);
    let output = child.wait_with_output().expect("the run ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "Ctrl-C exits as the shell expects (128 + SIGINT)\n{stderr}");
    assert!(stderr.contains("stopped by Ctrl-C (SIGINT)") && stderr.contains("train --resume"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // The checkpoint is a model too.
    run(&["evaluate", "--model", path_str(&interrupted), "--samples", "100"]).succeeded();
    let config = read_json(&interrupted.join("config.json"));
    assert!(config["checkpoint"]["epoch"].is_u64() && config.get("metrics").is_none(), "{config}");

    let resumed = run(&["train", "--quiet", "--resume", path_str(&interrupted)]);
    resumed.succeeded();
    assert_eq!(
        fs::read(interrupted.join("model.safetensors")).unwrap(),
        fs::read(uninterrupted.join("model.safetensors")).unwrap(),
        "resumed weights differ from an uninterrupted run's"
    );
    assert!(!interrupted.join("training_state.safetensors").exists(), "a finished run leaves no training state");
    let finished = read_json(&interrupted.join("config.json"));
    assert_eq!(finished["metrics"], read_json(&uninterrupted.join("config.json"))["metrics"]);
    assert!(finished.get("checkpoint").is_none());

    // The resumed run appended to metrics.csv: the same reports at the same positions, with the
    // same validation figures and gradient norms (the weights agree at every one of them). Only
    // the training figures of the report spanning the interruption cover fewer samples, and the
    // times differ.
    let resumed_rows = validation_columns(&interrupted);
    assert_eq!(resumed_rows.len(), 20, "every twentieth of 48,000 samples; the first epoch's end is one of them");
    assert_eq!(resumed_rows, validation_columns(&uninterrupted));
}

/// The columns of `dir`'s metrics.csv that an interruption leaves as they were: samples seen,
/// epoch, the validation figures and the gradient norm.
fn validation_columns(dir: &Path) -> Vec<[String; 6]> {
    let text = fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv exists");
    assert_eq!(text.lines().filter(|line| line.starts_with("samples_seen,")).count(), 1, "one header");
    text.lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            [0, 1, 6, 7, 8, 9].map(|index| fields[index].to_owned())
        })
        .collect()
}

/// A stop that lands while a row's validation runs leaves that row without its figures, and the
/// checkpoint is written at the row's position. The resumed run scores the row first, from the
/// checkpoint's weights, which are the ones it was to score: its log, and the best row whose
/// weights `--restore-best` keeps, are the uninterrupted run's.
#[test]
fn a_row_whose_validation_a_stop_cut_short_is_scored_when_the_run_resumes() {
    let home = TempDir::new().unwrap();
    // Scoring 100,000 samples after every 64 trained: a stop soon after the start lands in one.
    let run_args = [
        "--samples",
        "320",
        "--log-every",
        "64",
        "--validation-samples",
        "100000",
        "--restore-best",
        "--seed",
        "5",
        "--eval-samples",
        "100",
        "--device",
        "cpu",
    ];
    fn train<'a>(dir: &'a Path, run_args: &[&'a str]) -> Vec<&'a str> {
        [&["train", "--quiet", "--out", path_str(dir)][..], run_args].concat()
    }
    let uninterrupted = home.path().join("uninterrupted");
    run(&train(&uninterrupted, &run_args)).succeeded();

    let mut cut_short = None;
    for attempt in 1..=5 {
        let dir = home.path().join(format!("interrupted-{attempt}"));
        let child = spawn(&train(&dir, &run_args));
        wait_for(&dir.join("metrics.csv"));
        sleep(Duration::from_millis(100 * attempt));
        send(&child, libc::SIGINT);
        let output = child.wait_with_output().expect("the run ends");
        assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
        let rows = validation_columns(&dir);
        if rows.last().is_some_and(|row| row[2].is_empty()) {
            cut_short = Some(dir);
            break;
        }
    }
    let interrupted = cut_short.expect("in five tries, no stop landed in a validation");
    let resumed = run(&["train", "--quiet", "--resume", path_str(&interrupted)]);
    resumed.succeeded();
    let rows = validation_columns(&interrupted);
    assert!(rows.iter().all(|row| !row[2].is_empty()), "{rows:?}");
    assert_eq!(rows, validation_columns(&uninterrupted));
    assert_eq!(
        fs::read(interrupted.join("model.safetensors")).unwrap(),
        fs::read(uninterrupted.join("model.safetensors")).unwrap(),
        "resumed weights differ from an uninterrupted run's"
    );
}

/// Batches shared among two threads, a learning rate that warms up and decays, a curriculum,
/// weighted operators and clipped gradients: the thread count, the schedule, the curriculum,
/// the weights and the clipping come back from the checkpoint's config.json (the resumed
/// process is given none of them), and the weights end as an uninterrupted run's, bit for bit.
#[test]
fn a_threaded_scheduled_run_resumes_bit_for_bit_with_its_recorded_settings() {
    let home = TempDir::new().unwrap();
    let schedule = [
        "--lr-schedule",
        "cosine",
        "--warmup",
        "6000",
        "--learning-rate",
        "0.004",
        "--curriculum",
        "12000",
        "--ops",
        "+-",
        "--op-weights",
        "-=3",
        // Below every step's norm here, so every step is clipped.
        "--max-grad-norm",
        "0.01",
        "--adam-betas",
        "0.85,0.98",
        // The best validation row's weights go into the checkpoint and come back with it.
        "--restore-best",
    ];
    let uninterrupted = home.path().join("uninterrupted");
    let mut args = vec!["--threads", "2", "train", "--quiet", "--out", path_str(&uninterrupted)];
    args.extend_from_slice(RUN);
    args.extend_from_slice(&schedule);
    run(&args).succeeded();
    let training = &read_json(&uninterrupted.join("config.json"))["training"];
    assert_eq!((training["threads"].as_u64(), training["lr_schedule"].as_str()), (Some(2), Some("cosine")));
    assert_eq!((training["warmup"].as_u64(), training["curriculum"].as_u64()), (Some(6000), Some(12000)));
    assert_eq!(training["operator_weights"].as_str(), Some("+=1,-=3,*=1,/=1"));
    assert_eq!(training["max_grad_norm"].as_f64(), Some(0.01));
    assert_eq!(training["adam_betas"], serde_json::json!([0.85, 0.98]));
    run(&["info", "--model", path_str(&uninterrupted)])
        .succeeded()
        .stdout_has(&["gradients clipped to norm 0.01", "Adam's betas 0.85 and 0.98"]);
    // metrics.csv logs each row's last gradient as it was before clipping.
    let log = fs::read_to_string(uninterrupted.join("metrics.csv")).unwrap();
    let norms: Vec<f64> = log.lines().skip(1).map(|line| line.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert!(!norms.is_empty() && norms.iter().all(|&norm| norm > 0.01), "{norms:?}");

    let interrupted = home.path().join("interrupted");
    let mut extra = vec!["--checkpoint-every", "2000"];
    extra.extend_from_slice(&schedule);
    let child = spawn_training_on(2, &interrupted, &extra);
    wait_for(&interrupted.join("training_state.safetensors"));
    send(&child, libc::SIGINT);
    assert_eq!(child.wait_with_output().expect("the run ends").status.code(), Some(130));
    let stopped_at = read_json(&interrupted.join("config.json"))["checkpoint"].clone();
    copy_dir(&interrupted, &home.path().join("interrupted-before-resume"));
    // No --threads: the resumed run takes the recorded two.
    let resumed = std::process::Command::new(assert_cmd::cargo::cargo_bin("seq2seq"))
        .args(["train", "--quiet", "--resume", path_str(&interrupted)])
        .output()
        .expect("the seq2seq binary starts");
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let same_log = validation_columns(&interrupted) == validation_columns(&uninterrupted);
    let same_weights = fs::read(interrupted.join("model.safetensors")).unwrap()
        == fs::read(uninterrupted.join("model.safetensors")).unwrap();
    if !(same_log && same_weights) {
        // Kept for a look: both runs' directories.
        let kept = home.keep();
        panic!(
            "resumed run (stopped at {stopped_at}) differs from an uninterrupted run's: the same metrics.csv \
             {same_log}, the same weights {same_weights}; both kept in {}",
            kept.display()
        );
    }
}

/// Without --checkpoint-every, the clock still checkpoints (every 10 minutes by default; here
/// every 0.3 s): a run killed outright goes on from there to the weights of a run never stopped,
/// and checkpointing by the clock changes nothing in them.
#[test]
fn a_run_killed_outright_resumes_from_its_last_checkpoint_by_the_clock() {
    let home = TempDir::new().unwrap();
    let whole = home.path().join("whole");
    let mut args = vec!["--threads", "1", "train", "--quiet", "--out", path_str(&whole), "--checkpoint-minutes", "0"];
    args.extend_from_slice(RUN);
    run(&args).succeeded();
    assert_eq!(read_json(&whole.join("config.json"))["training"]["checkpoint_minutes"].as_f64(), Some(0.0));

    let killed = home.path().join("killed");
    let child = spawn_training(&killed, &["--checkpoint-minutes", "0.005"]);
    // config.json is the first checkpoint's last file.
    wait_for(&killed.join("config.json"));
    send(&child, libc::SIGKILL);
    child.wait_with_output().expect("the killed run is reaped");
    let training = &read_json(&killed.join("config.json"))["training"];
    assert_eq!(training["checkpoint_minutes"].as_f64(), Some(0.005));
    assert!(training.get("checkpoint_every").is_none(), "{training}");
    run(&["train", "--quiet", "--resume", path_str(&killed), "--checkpoint-minutes", "0"]).succeeded();
    assert_holds_exactly_a_model(&killed);
    assert_eq!(
        fs::read(killed.join("model.safetensors")).unwrap(),
        fs::read(whole.join("model.safetensors")).unwrap(),
        "resumed weights differ from an uninterrupted run's"
    );
    run(&["train", "--out", path_str(&home.path().join("never")), "--checkpoint-minutes=-1"])
        .failed()
        .stderr_has(&["--checkpoint-minutes must be a number of minutes, at least 0"]);
}

#[test]
fn sigkill_at_any_moment_leaves_a_loadable_checkpoint_that_resumes() {
    let home = TempDir::new().unwrap();
    for (attempt, delay_ms) in [0u64, 7, 23, 61, 150].into_iter().enumerate() {
        let dir = home.path().join(format!("killed-{attempt}"));
        // Checkpoints every 256 samples: the kill lands while files are being written. Reports
        // every 96 samples: some are written after the last checkpoint.
        let mut child = spawn_training(&dir, &["--checkpoint-every", "256", "--log-every", "96"]);
        wait_for(&dir.join("config.json"));
        sleep(Duration::from_millis(delay_ms));
        send(&child, libc::SIGKILL);
        child.wait().expect("the killed run is reaped");
        run(&["evaluate", "--model", path_str(&dir), "--samples", "50"]).succeeded();
        run(&["predict", "--model", path_str(&dir), "1+2+3"]).succeeded();
        if attempt == 0 {
            // What is left resumes to the end, and reports past the checkpoint are not repeated.
            run(&["train", "--quiet", "--resume", path_str(&dir)]).succeeded();
            let text = fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv exists");
            let samples_seen: Vec<u64> =
                text.lines().skip(1).map(|line| line.split(',').next().unwrap().parse().unwrap()).collect();
            assert!(samples_seen.windows(2).all(|pair| pair[0] < pair[1]), "repeated reports: {samples_seen:?}");
            assert_eq!(samples_seen.last(), Some(&48_000));
            assert_eq!(samples_seen.len(), 500, "every 96 samples; the first epoch ends at one of them (250 × 96)");
        }
        let leftovers: Vec<String> = file_names(&dir).into_iter().filter(|name| name.contains(".tmp-")).collect();
        assert!(leftovers.len() <= 1, "at most the one file being written when killed: {leftovers:?}");
    }
}

#[test]
fn a_diverging_run_names_the_step_and_keeps_the_last_checkpoint() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("diverged");
    // Adam's first steps move every weight by about the learning rate: 1e36 overflows float32
    // at the second step. A checkpoint after every batch leaves the first one behind.
    let outcome = run(&[
        "train",
        "--quiet",
        "--out",
        path_str(&dir),
        "--samples",
        "320",
        "--learning-rate",
        "1e36",
        "--checkpoint-every",
        "32",
    ]);
    outcome.failed().stderr_has(&[
        "training diverged: the loss became inf at step 2 of epoch 1 (after 32 samples)",
        "The last checkpoint, after 32 samples, stays in",
    ]);
    run(&["evaluate", "--model", path_str(&dir), "--samples", "50"]).succeeded();
    assert_eq!(read_json(&dir.join("config.json"))["checkpoint"], serde_json::json!({"epoch": 0, "step": 1}));
}

#[test]
fn a_run_that_fails_before_saving_anything_leaves_no_directory() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("diverged");
    let outcome = run(&["train", "--quiet", "--out", path_str(&dir), "--samples", "320", "--learning-rate", "1e36"]);
    outcome.failed().stderr_has(&["training diverged: the loss became inf at step 2"]);
    assert!(!dir.exists(), "a stub without config.json stays behind: {:?}", file_names(&dir));
}

/// `--overwrite` sets the old model aside until the new run first saves: a run that fails
/// before then puts it back byte for byte; a run killed then leaves it set aside, and the next
/// run into the directory says so.
#[test]
fn an_overwrite_keeps_the_old_model_until_the_new_run_saves() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("model");
    copy_dir(&shared_model().dir, &dir);
    let names = ["config.json", "metrics.csv", "model.safetensors"];
    let before = names.map(|name| fs::read(dir.join(name)).unwrap());
    let diverging = ["--samples", "320", "--learning-rate", "1e36"];
    let mut args = vec!["train", "--quiet", "--out", path_str(&dir), "--overwrite"];
    args.extend_from_slice(&diverging);
    run(&args).failed().stderr_has(&["training diverged"]);
    assert_holds_exactly_a_model(&dir);
    for (name, bytes) in names.iter().zip(&before) {
        assert_eq!(&fs::read(dir.join(name)).unwrap(), bytes, "{name} is not the old model's");
    }

    // Killed before its first save (no checkpoints, fifty epochs): the old files stay aside.
    let mut child = spawn(&["train", "--quiet", "--out", path_str(&dir), "--overwrite", "--epochs", "50"]);
    wait_for(&dir.join("model.safetensors.replaced"));
    send(&child, libc::SIGKILL);
    child.wait().expect("reaped");
    assert!(!dir.join("config.json").exists());
    for (name, bytes) in names.iter().zip(&before) {
        assert_eq!(&fs::read(dir.join(format!("{name}.replaced"))).unwrap(), bytes, "{name}.replaced");
    }
    run(&["predict", "--model", path_str(&dir), "1+2+3"]).failed().stderr_has(&[
        "config.json is missing, but",
        "config.json.replaced is there",
        "rename the files",
    ]);
    let small = ["--samples", "64", "--encoder-units", "8", "--decoder-units", "8", "--eval-samples", "10"];
    let mut args = vec!["train", "--quiet", "--out", path_str(&dir)];
    args.extend_from_slice(&small);
    run(&args).failed().stderr_has(&["set aside", ".replaced", "rename them back", "--overwrite"]);
    args.push("--overwrite");
    run(&args).succeeded();
    assert_holds_exactly_a_model(&dir);
}

#[test]
fn resume_refuses_what_it_cannot_continue() {
    let model = shared_model();
    run(&["train", "--resume", path_str(&model.dir)])
        .failed()
        .stderr_has(&["holds a finished model, not a checkpoint: there is nothing to resume"]);
    run(&["train", "--resume", "/nonexistent/run"]).failed().stderr_has(&["/nonexistent/run does not exist"]);
    run(&["train", "--resume", path_str(&model.dir), "--samples", "10"])
        .failed_usage()
        .stderr_has(&["'--resume <DIR>' cannot be used with '--samples <SAMPLES>'"]);
    // The validation rows of the log so far, which --patience and --restore-best read, stay comparable.
    run(&["train", "--resume", path_str(&model.dir), "--validation-samples", "10"])
        .failed_usage()
        .stderr_has(&["'--resume <DIR>' cannot be used with '--validation-samples <N>'"]);
    run(&["train", "--checkpoint-every", "0", "--out", "/tmp/never-made"])
        .failed()
        .stderr_has(&["--checkpoint-every must be at least 1 sample"]);

    // A checkpoint whose training state is missing or damaged.
    let home = TempDir::new().unwrap();
    let dir = home.path().join("run");
    let mut child = spawn_training(&dir, &["--checkpoint-every", "1000"]);
    let state = dir.join("training_state.safetensors");
    // The config is written last: once it is there, so is the training state.
    wait_for(&dir.join("config.json"));
    send(&child, libc::SIGKILL);
    child.wait().expect("reaped");
    let bytes = fs::read(&state).unwrap();
    fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    run(&["train", "--resume", path_str(&dir)])
        .failed()
        .stderr_has(&["training_state.safetensors", "not a readable safetensors file"]);
    fs::remove_file(&state).unwrap();
    run(&["train", "--resume", path_str(&dir)])
        .failed()
        .stderr_has(&["training_state.safetensors is missing: the checkpoint cannot be resumed"]);
}

#[test]
fn weights_of_the_wrong_dtype_are_refused() {
    let (_home, dir) = damaged_copy(|dir| {
        let path = dir.join("model.safetensors");
        let tensors = tch::Tensor::read_safetensors(&path).unwrap();
        let doubled: Vec<(String, tch::Tensor)> =
            tensors.into_iter().map(|(name, t)| (name, t.to_kind(tch::Kind::Double))).collect();
        tch::Tensor::write_safetensors(&doubled, &path).unwrap();
    });
    run(&["evaluate", "--model", path_str(&dir)])
        .failed()
        .stderr_has(&["model.safetensors", "is float64, expected float32"]);
}

#[test]
fn a_batch_larger_than_the_sample_count_is_fine() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("one-batch");
    run(&[
        "train",
        "--quiet",
        "--out",
        path_str(&dir),
        "--samples",
        "10",
        "--batch-size",
        "100",
        "--eval-samples",
        "5",
    ])
    .succeeded();
    run(&["predict", "--model", path_str(&dir), "1+2+3"]).succeeded();
}
