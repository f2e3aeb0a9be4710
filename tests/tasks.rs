//! End-to-end tests of every problem beyond the reference: operators and precedence, variable
//! term counts, reversed input, stacked layers with dropout, the sequence autoencoder, and
//! `encode`. Each test trains its own small model in a few seconds on one thread.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use tempfile::TempDir;

/// Trains a model into a new temporary directory with `args` after `train --quiet --out DIR`.
fn train(args: &[&str]) -> (TempDir, PathBuf) {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("model");
    let mut all = vec!["train", "--quiet", "--device", "cpu", "--out", path_str(&dir)];
    all.extend_from_slice(args);
    run(&all).succeeded();
    (home, dir)
}

/// A barely trained calculator: only the problem's bookkeeping matters to the tests using it.
const UNTRAINED: &[&str] = &["--samples", "64", "--eval-samples", "64", "--encoder-units", "8", "--decoder-units", "8"];

/// Command-line words from one string: `words("--terms 2 --reverse")`.
fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

fn with(base: &[&'static str], extra: &[&'static str]) -> Vec<&'static str> {
    base.iter().chain(extra).copied().collect()
}

fn predict_json(dir: &Path, inputs: &[&str]) -> (Outcome, Vec<Value>) {
    let mut args = vec!["predict", "--model", path_str(dir), "--json", "--"];
    args.extend_from_slice(inputs);
    let outcome = run(&args);
    let records = json_lines(&outcome.stdout);
    (outcome, records)
}

// ---------------------------------------------------------------------------------------------
// Operators, term counts, reversal
// ---------------------------------------------------------------------------------------------

#[test]
fn calculator_records_its_operators_alphabet_and_lengths() {
    let (_home, dir) = train(&with(UNTRAINED, &["--ops", "*/+-", "--terms", "2", "--largest", "99"]));
    let config = read_json(&dir.join("config.json"));
    assert_eq!(
        config["task"],
        json!({"kind": "arithmetic", "operators": "+-*/", "min_terms": 2, "max_terms": 2, "largest": 99, "reverse": false})
    );
    // Only what the problem needs: digits, its operators ('-' doubling as the sign), the pad.
    assert_eq!(config["alphabet"], "0123456789+-*/ ");
    // 99*99 = 9801 is the longest result; "99*99" the longest input.
    assert_eq!((&config["input_len"], &config["output_len"]), (&json!(5), &json!(4)));

    let (_home, subtraction) = train(&with(UNTRAINED, &["--ops", "-", "--terms", "3", "--largest", "9"]));
    let config = read_json(&subtraction.join("config.json"));
    assert_eq!(config["alphabet"], "0123456789- ");
    // 1-9-9 = -17: three characters; the reference's formula would give 2.
    assert_eq!((&config["input_len"], &config["output_len"]), (&json!(5), &json!(3)));
}

#[test]
fn predict_follows_precedence_floor_division_and_signs() {
    let (_home, dir) = train(&with(UNTRAINED, &["--ops", "+-*/", "--terms", "1..3", "--largest", "12"]));
    // The generator's own evaluation is tested in the unit tests; here the answers must survive
    // parsing, the model directory and JSON, negative ones included.
    let cases = [("12", 12), ("1-12*12", -143), ("2+3*4", 14), ("7/2*2", 6), ("1-7/2", -2), ("3-10", -7)];
    let inputs: Vec<&str> = cases.iter().map(|(input, _)| *input).collect();
    let (outcome, records) = predict_json(&dir, &inputs);
    outcome.succeeded();
    assert_eq!(records.len(), cases.len(), "{outcome}");
    for ((input, value), record) in cases.iter().zip(&records) {
        assert_eq!(record["input"], *input);
        assert_eq!(record["expected"], *value, "{input}");
        let prediction = record["prediction"].as_str().expect("a string");
        assert!(prediction.chars().all(|c| "0123456789+-*/ ".contains(c)), "{record}");
    }

    // Text: the expression padded to the input length, the answer to the output length (12*12 = 144:
    // outputs of 4 characters, room for -143).
    let text = run(&["predict", "--model", path_str(&dir), "1-7/2"]);
    let line = text.succeeded().stdout.trim_end().to_owned();
    assert!(line.starts_with("   1-7/2 = "), "{line:?}");
    assert!(line.ends_with("(expect   -2)"), "{line:?}");
}

#[test]
fn predict_refuses_operators_and_term_counts_the_model_does_not_know() {
    let (_home, dir) = train(&with(UNTRAINED, &["--ops", "+-", "--terms", "2..3", "--largest", "9"]));
    let outcome = run(&["predict", "--model", path_str(&dir), "1+2", "3*4", "1+2+3+4", "5", "9-8-7"]);
    outcome.failed().stderr_has(&[
        "argument 2: operator '*' at column 2 is not one this model was trained on (+-): \"3*4\"",
        "argument 3: expression is 7 characters long; this model reads at most 5",
        "argument 4: 1 terms given; this model was trained on 2 to 3",
        "3 of 5 inputs were rejected",
    ]);
    // 1-9-9 = -17 sets the output length to 3.
    assert_eq!(outcome.stdout_lines().len(), 2, "{outcome}");
    assert!(outcome.stdout_lines()[0].starts_with("  1+2 = ") && outcome.stdout_lines()[0].ends_with("(expect   3)"));
    assert!(outcome.stdout_lines()[1].starts_with("9-8-7 = ") && outcome.stdout_lines()[1].ends_with("(expect  -6)"));
}

#[test]
fn variable_term_counts_are_padded_to_the_longest_and_all_answered() {
    let (_home, dir) = train(&with(UNTRAINED, &["--terms", "1..4", "--largest", "10"]));
    let config = read_json(&dir.join("config.json"));
    assert_eq!((&config["task"]["min_terms"], &config["task"]["max_terms"]), (&json!(1), &json!(4)));
    assert_eq!((&config["input_len"], &config["output_len"]), (&json!(11), &json!(2)));
    let outcome = run(&["predict", "--model", path_str(&dir), "7", "1+2", "10+10+10+10"]);
    let lines = outcome.succeeded().stdout_lines();
    assert!(lines[0].starts_with("          7 = "), "{outcome}");
    assert!(lines[1].starts_with("        1+2 = "), "{outcome}");
    assert!(lines[2].starts_with("10+10+10+10 = ") && lines[2].ends_with("(expect 40)"), "{outcome}");
}

/// Sequence accuracy of a model on fresh samples, as `evaluate --json` reports it.
fn sequence_accuracy(dir: &Path) -> f64 {
    let outcome = run(&["evaluate", "--model", path_str(dir), "--samples", "2000", "--seed", "99", "--json"]);
    json_lines(&outcome.succeeded().stdout)[0]["sequence_accuracy"].as_f64().expect("a character task")
}

#[test]
fn reversed_subtraction_learns_and_shows_expressions_forwards() {
    // Observed on the development machine (one thread, seeds 1..=3, 1 used here): 88.1%..92.7%
    // sequence accuracy on these samples, in about a second of training.
    let (_home, dir) = train(&words(
        "--ops +- --terms 2 --largest 9 --reverse --samples 12000 --learning-rate 0.005 --encoder-units 48 --decoder-units 48",
    ));
    assert_eq!(read_json(&dir.join("config.json"))["task"]["reverse"], true);
    let accuracy = sequence_accuracy(&dir);
    assert!(accuracy >= MIN_REVERSED_ACCURACY, "sequence accuracy {accuracy}");
    let outcome = run(&["predict", "--model", path_str(&dir), "9-3", "2+7"]);
    let lines = outcome.succeeded().stdout_lines();
    assert!(lines[0].starts_with("9-3 = ") && lines[0].ends_with("(expect  6)"), "{outcome}");
    assert!(lines[1].starts_with("2+7 = ") && lines[1].ends_with("(expect  9)"), "{outcome}");
}

const MIN_REVERSED_ACCURACY: f64 = 0.6;

#[test]
fn answers_written_backwards_are_learned_and_shown_forwards() {
    // Observed on the development machine (one thread, seeds 1..=3, 1 used here): 45.1%..59.7%
    // sequence accuracy on these samples, in about a second of training; a model that learned
    // nothing scores under 10%.
    let (_home, dir) = train(&words(
        "--ops +- --terms 2 --largest 9 --reverse-output --samples 12000 --learning-rate 0.005 --encoder-units 48 --decoder-units 48",
    ));
    assert_eq!(read_json(&dir.join("config.json"))["task"]["reverse_output"], true);
    let accuracy = sequence_accuracy(&dir);
    assert!(accuracy >= MIN_BACKWARDS_ACCURACY, "sequence accuracy {accuracy}");
    let outcome = run(&["predict", "--model", path_str(&dir), "9-3", "3-9", "9+9"]);
    let lines = outcome.succeeded().stdout_lines();
    for (line, expected) in lines.iter().zip(["(expect  6)", "(expect -6)", "(expect 18)"]) {
        assert!(line.ends_with(expected), "{outcome}");
    }
    // Every right answer reads as its value: the answers come back forwards.
    let inputs: Vec<String> =
        (1..=9).flat_map(|a| (1..=9).flat_map(move |b| [format!("{a}+{b}"), format!("{a}-{b}")])).collect();
    let mut args = vec!["predict", "--model", path_str(&dir), "--json"];
    args.extend(inputs.iter().map(String::as_str));
    let outcome = run(&args);
    let mut right = 0;
    for line in outcome.succeeded().stdout_lines() {
        let answer: Value = serde_json::from_str(line).expect("a JSON answer");
        let shown_as_value = answer["prediction"].as_str().map(str::to_owned) == Some(answer["expected"].to_string());
        assert_eq!(answer["correct"].as_bool(), Some(shown_as_value), "{answer}");
        right += usize::from(shown_as_value);
    }
    assert!(right > 0, "no expression of 1..=9 answered right:\n{outcome}");
}

const MIN_BACKWARDS_ACCURACY: f64 = 0.3;

// ---------------------------------------------------------------------------------------------
// Stacked layers and dropout
// ---------------------------------------------------------------------------------------------

#[test]
fn stacked_layers_with_dropout_are_summarised_saved_and_evaluated_without_dropout() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("deep");
    let outcome = run(&[
        "train",
        "--out",
        path_str(&dir),
        "--encoder-layers",
        "2",
        "--decoder-layers",
        "3",
        "--dropout",
        "0.3",
        "--encoder-units",
        "16",
        "--decoder-units",
        "12",
        "--samples",
        "256",
        "--eval-samples",
        "500",
    ]);
    outcome.succeeded();
    for row in ["encoder_1 (LSTM)", "encoder_2 (LSTM)", "decoder_3 (LSTM)", "(Dropout 0.3)", "Total params: "] {
        assert!(outcome.stdout.contains(row), "{row} missing from the summary\n{outcome}");
    }
    let config = read_json(&dir.join("config.json"));
    assert_eq!(
        config["model"],
        json!({"encoder_units": 16, "decoder_units": 12, "encoder_layers": 2, "decoder_layers": 3, "dropout": 0.3})
    );
    // Dropout is off when scoring: evaluating twice gives the saved figures both times.
    for _ in 0..2 {
        let evaluated = run(&["evaluate", "--model", path_str(&dir), "--samples", "500", "--json"]);
        assert_eq!(json_lines(&evaluated.succeeded().stdout)[0], config["metrics"]);
    }
    let first = run(&["predict", "--model", path_str(&dir), "1+2+3", "10+9+8"]);
    let second = run(&["predict", "--model", path_str(&dir), "1+2+3", "10+9+8"]);
    assert_eq!(first.succeeded().stdout, second.succeeded().stdout);
}

// ---------------------------------------------------------------------------------------------
// The sequence autoencoder
// ---------------------------------------------------------------------------------------------

const RAMP: &str = "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9";

#[test]
fn autoencoder_reconstructs_the_reference_ramp() {
    let (_home, dir) =
        train(&["--task", "autoencoder", "--samples", "6000", "--encoder-units", "32", "--decoder-units", "32"]);
    let config = read_json(&dir.join("config.json"));
    assert_eq!(
        config["task"],
        json!({"kind": "autoencoder", "length": 9, "sequence": "ramp", "low": 0.0, "high": 1.0})
    );
    assert_eq!(config.get("alphabet"), None, "real values have no alphabet");
    let (outcome, records) = predict_json(&dir, &[RAMP]);
    outcome.succeeded();
    let error = records[0]["max_abs_error"].as_f64().expect("a number");
    assert!(error <= 0.05, "max absolute error {error} on the ramp\n{outcome}");
    let reconstruction = records[0]["reconstruction"].as_array().expect("an array");
    assert_eq!(reconstruction.len(), 9);

    let text = run(&["predict", "--model", path_str(&dir), RAMP]);
    let values: Vec<f64> = text.succeeded().stdout.trim().split(',').map(|v| v.parse().expect("a number")).collect();
    assert_eq!(values.len(), 9);
    for (value, record) in values.iter().zip(reconstruction) {
        assert!((value - record.as_f64().unwrap()).abs() < 1e-4, "text and JSON agree");
    }

    let evaluated = run(&["evaluate", "--model", path_str(&dir), "--json"]);
    let figures = &json_lines(&evaluated.succeeded().stdout)[0];
    let keys: Vec<&str> = figures.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["loss", "max_abs_error", "samples"]);
    assert!(figures["max_abs_error"].as_f64().unwrap() <= 0.05, "{figures}");
    assert_eq!(figures, &config["metrics"]);
    let text = run(&["evaluate", "--model", path_str(&dir)]);
    text.succeeded();
    assert!(text.stdout.contains("mean squared error") && text.stdout.contains("max absolute error"), "{text}");
}

#[test]
fn autoencoder_learns_random_sequences() {
    // Observed on the development machine (one thread, seeds 1..=3): mean squared error
    // 4.6e-4..5.9e-4 after training against 0.34 untrained, so the bound is 50 times looser.
    const RANDOM: &str = "--task autoencoder --sequence random --length 4 --low -1 --high 1 --encoder-units 32 \
                          --decoder-units 32";
    let (_home, dir) = train(&words(&format!("{RANDOM} --samples 20000 --learning-rate 0.005")));
    let untrained = {
        let (_home, dir) = train(&words(&format!("{RANDOM} --samples 1")));
        read_json(&dir.join("config.json"))["metrics"]["loss"].as_f64().unwrap()
    };
    let trained = read_json(&dir.join("config.json"))["metrics"]["loss"].as_f64().unwrap();
    assert!(trained < MAX_RANDOM_MSE_RATIO * untrained, "mse {trained} vs untrained {untrained}");
    let (outcome, records) = predict_json(&dir, &["-0.5,0.25,0.9,-0.1"]);
    outcome.succeeded();
    assert!(records[0]["max_abs_error"].as_f64().unwrap() < 0.3, "{outcome}");
}

const MAX_RANDOM_MSE_RATIO: f64 = 0.05;

#[test]
fn autoencoder_refuses_bad_sequences_by_position() {
    let (_home, dir) = train(&["--task", "autoencoder", "--length", "3", "--samples", "32"]);
    let outcome = run(&["predict", "--model", path_str(&dir), "0.1,0.2,0.3", "0.1,0.2", "0.1,abc,0.3", "nan,1,2"]);
    outcome.failed().stderr_has(&[
        "argument 2: 2 values given; this model reads sequences of 3: \"0.1,0.2\"",
        "argument 3: value 2 (\"abc\") is not a finite number",
        "argument 4: value 1 (\"nan\") is not a finite number",
        "3 of 4 inputs were rejected",
    ]);
    assert_eq!(outcome.stdout_lines().len(), 1, "{outcome}");
}

#[test]
fn flags_of_the_other_task_are_refused() {
    let home = TempDir::new().unwrap();
    let out = home.path().join("never");
    for (args, reason) in [
        (vec!["--task", "autoencoder", "--ops", "+-"], "--ops does not apply to --task autoencoder"),
        (vec!["--reverse", "--task", "autoencoder"], "--reverse does not apply to --task autoencoder"),
        (vec!["--length", "5"], "--length does not apply to --task arithmetic"),
        (vec!["--task", "autoencoder", "--low", "1", "--high", "1"], "low < high"),
        (
            vec!["--task", "autoencoder", "--sequence", "random", "--low=-1e308", "--high", "1e308"],
            "does not fit float32",
        ),
        (vec!["--terms", "3..1"], "the smallest number of terms exceeds the largest"),
        (vec!["--ops", "+x"], "is not an operator"),
        (vec!["--ops", "*", "--terms", "4", "--largest", "100000"], "overflow 64-bit arithmetic"),
        (vec!["--dropout", "1"], "dropout must be in [0, 1)"),
        (vec!["--encoder-layers", "0"], "encoder layers must be between 1 and"),
    ] {
        let mut all = vec!["train", "--quiet", "--out", path_str(&out)];
        all.extend(args);
        let outcome = run(&all);
        outcome.did_not_panic().stderr_has(&[reason]);
        assert_ne!(outcome.code, Some(0), "{outcome}");
        assert!(!out.exists(), "a refused run created --out\n{outcome}");
    }
}

// ---------------------------------------------------------------------------------------------
// encode
// ---------------------------------------------------------------------------------------------

/// Reads a float32 `.npy` file written by `encode`: its shape and values.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> =
        shape_text.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = &bytes[10 + header_len..];
    let values: Vec<f32> = data.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (shape, values)
}

fn csv_rows(text: &str) -> Vec<Vec<f32>> {
    text.lines().map(|line| line.split(',').map(|v| v.parse().expect("a number")).collect()).collect()
}

#[test]
fn encode_writes_one_vector_per_input_as_csv_or_npy_in_input_order() {
    let (home, dir) =
        train(&["--samples", "64", "--eval-samples", "64", "--encoder-units", "6", "--decoder-units", "8"]);
    let model = path_str(&dir);
    let csv = run(&["encode", "--model", model, "1+2+3", "10+10+10", "1+2+3"]);
    let rows = csv_rows(&csv.succeeded().stdout);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|row| row.len() == 6), "encoder_units columns\n{csv}");
    assert_eq!(rows[0], rows[2], "the same input, the same vector");
    assert_ne!(rows[0], rows[1]);

    let inputs = home.path().join("inputs.txt");
    fs::write(&inputs, "1+2+3\nnot\n10+10+10\n").unwrap();
    let npy = home.path().join("vectors.npy");
    let outcome =
        run(&["encode", "--model", model, "--file", path_str(&inputs), "--format", "npy", "--out", path_str(&npy)]);
    outcome.failed().stderr_has(&[&format!("{}:2: unexpected character 'n' at column 1", inputs.display())]);
    let (shape, values) = read_npy(&npy);
    assert_eq!(shape, [2, 6]);
    // The same two inputs in one batch, as CSV: a batch of another size may round differently
    // in the last bit (the matrix library picks its kernels by size).
    let pair = csv_rows(&run(&["encode", "--model", model, "1+2+3", "10+10+10"]).succeeded().stdout);
    assert_eq!(values[..6], pair[0][..], "npy holds the same numbers as CSV");
    assert_eq!(values[6..], pair[1][..]);

    let csv_file = home.path().join("vectors.csv");
    run(&["encode", "--model", model, "--out", path_str(&csv_file), "10+10+10"]).succeeded();
    let single = csv_rows(&run(&["encode", "--model", model, "10+10+10"]).succeeded().stdout);
    assert_eq!(csv_rows(&fs::read_to_string(&csv_file).unwrap()), single);
    assert_eq!(single.len(), 1);

    let binary_to_stdout = run(&["encode", "--model", model, "--format", "npy", "1+2+3"]);
    binary_to_stdout.failed().stderr_has(&["--format npy writes a binary file: name it with --out"]);
}

#[test]
fn encode_gives_the_autoencoder_vector_of_the_ramp() {
    let (_home, dir) = train(&["--task", "autoencoder", "--samples", "64", "--encoder-units", "20"]);
    let outcome = run(&["encode", "--model", path_str(&dir), RAMP]);
    let rows = csv_rows(&outcome.succeeded().stdout);
    assert_eq!((rows.len(), rows[0].len()), (1, 20));
    assert!(rows[0].iter().all(|v| v.is_finite() && v.abs() <= 1.0), "an LSTM state lies in [-1, 1]");
}

// ---------------------------------------------------------------------------------------------
// Older model directories
// ---------------------------------------------------------------------------------------------

#[test]
fn format_version_1_directories_still_load() {
    let model = shared_model();
    let saved = read_json(&model.dir.join("config.json"))["metrics"].clone();
    let (_home, dir) = damaged_copy(|dir| {
        edit_config(dir, |config| {
            let object = config.as_object_mut().unwrap();
            object.remove("task");
            object.insert("problem".into(), json!({"n_terms": 3, "largest": 10}));
            object.insert("format_version".into(), json!(1));
        })
    });
    let outcome = run(&["evaluate", "--model", path_str(&dir), "--json"]);
    assert_eq!(json_lines(&outcome.succeeded().stdout)[0], saved);
}
