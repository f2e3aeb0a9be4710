//! Seeing what a model learned: metrics.csv, the learning curve, the PCA picture of the
//! encodings, `evaluate --errors`, `predict --verbose`, shell completions and the help texts.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::*;
use serde_json::Value;
use tempfile::TempDir;

/// A small, deliberately undertrained model (about a second on one thread), so that it makes
/// mistakes for `--errors` to list; two epochs and an explicit log cadence for metrics.csv.
const SMALL_TRAINING: &[&str] = &[
    "--samples",
    "640",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--log-every",
    "200",
    "--encoder-units",
    "16",
    "--decoder-units",
    "16",
    "--seed",
    "4",
    "--eval-samples",
    "200",
    "--device",
    "cpu",
    "--quiet",
];

fn small_model() -> &'static TrainedModel {
    static SMALL: OnceLock<TrainedModel> = OnceLock::new();
    SMALL.get_or_init(|| train_for_the_run("insight-small-model-", SMALL_TRAINING))
}

/// Trains a tiny model (8 units a side, 50 samples scored at the end, on the CPU) with `args`
/// into `home/name`, and returns its directory.
fn train_tiny(home: &Path, name: &str, args: &[&str]) -> PathBuf {
    let dir = home.join(name);
    let mut command = vec!["train", "--out", path_str(&dir)];
    command.extend_from_slice(args);
    command.extend_from_slice(&["--encoder-units", "8", "--decoder-units", "8", "--eval-samples", "50"]);
    command.extend_from_slice(&["--device", "cpu", "--quiet"]);
    run(&command).succeeded();
    dir
}

/// The metrics log as rows of fields, after checking its header.
fn metrics_rows(dir: &Path) -> Vec<Vec<String>> {
    let text = fs::read_to_string(dir.join("metrics.csv")).expect("metrics.csv exists");
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(
            "samples_seen,epoch,elapsed_seconds,loss,char_accuracy,sequence_accuracy,validation_loss,\
             validation_char_accuracy,validation_sequence_accuracy,gradient_norm"
        )
    );
    let rows: Vec<Vec<String>> = lines.map(|line| line.split(',').map(String::from).collect()).collect();
    for row in &rows {
        assert_eq!(row.len(), 10, "{row:?}");
        let norm = number(&row[9]);
        assert!(norm.is_finite() && norm > 0.0, "the gradient norm: {row:?}");
    }
    rows
}

fn number(field: &str) -> f64 {
    field.parse().unwrap_or_else(|_| panic!("not a number: {field:?}"))
}

/// Where a run of `samples` per epoch in batches of `batch_size` reports every `every` samples:
/// the first batch past each multiple of `every`, and each epoch's end.
fn expected_report_positions(samples: usize, epochs: usize, batch_size: usize, every: usize) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut last = 0;
    for epoch in 0..epochs {
        let steps = samples.div_ceil(batch_size);
        for step in 1..=steps {
            let seen = epoch * samples + (step * batch_size).min(samples);
            if step == steps || seen / every > last / every {
                positions.push(seen);
                last = seen;
            }
        }
    }
    positions
}

/// Decodes the PNG at `path`, asserts its size, and returns the distinct colours of its middle
/// half in each direction (inside the plotting area).
fn central_colours(path: &Path, (width, height): (u32, u32)) -> HashSet<Vec<u8>> {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a PNG header");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sensible PNG size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG image data");
    assert_eq!((frame.width, frame.height), (width, height), "size of {}", path.display());
    let channels = frame.color_type.samples();
    let mut colours = HashSet::new();
    for y in height / 4..height * 3 / 4 {
        for x in width / 4..width * 3 / 4 {
            let start = y as usize * frame.line_size + x as usize * channels;
            colours.insert(pixels[start..start + channels].to_vec());
        }
    }
    colours
}

#[test]
fn train_logs_metrics_at_its_cadence_and_each_epoch_end() {
    let rows = metrics_rows(&small_model().dir);
    let samples_seen: Vec<usize> = rows.iter().map(|row| number(&row[0]) as usize).collect();
    assert_eq!(samples_seen, expected_report_positions(640, 2, 32, 200));
    assert_eq!(samples_seen, [224, 416, 608, 640, 800, 1024, 1216, 1280], "worked by hand");
    let epochs: Vec<&str> = rows.iter().map(|row| row[1].as_str()).collect();
    assert_eq!(epochs, ["1", "1", "1", "1", "2", "2", "2", "2"]);
    let mut previous_elapsed = 0.0;
    for row in &rows {
        let elapsed = number(&row[2]);
        assert!(elapsed >= previous_elapsed, "elapsed seconds go back: {rows:?}");
        previous_elapsed = elapsed;
        assert!(number(&row[3]) > 0.0 && number(&row[6]) > 0.0, "losses: {row:?}");
        for accuracy in [&row[4], &row[5], &row[7], &row[8]] {
            assert!((0.0..=1.0).contains(&number(accuracy)), "accuracy out of range: {row:?}");
        }
    }
    // Training helps: the last validation loss is below the first.
    assert!(number(&rows[7][6]) < number(&rows[0][6]), "{rows:?}");
}

/// `--log-every epoch` logs at each epoch's end only, whatever an epoch's size (your own data's
/// is known only once its pairs are read), as Keras does.
#[test]
fn log_every_epoch_gives_one_row_at_each_epoch_end() {
    let home = TempDir::new().unwrap();
    let data = home.path().join("pairs.tsv");
    write_pairs(&data, &reversal_pairs(400, 3));
    let dir = home.path().join("model");
    let mut args = vec!["train", "--data", path_str(&data), "--out", path_str(&dir), "--epochs", "3"];
    args.extend_from_slice(&["--log-every", "epoch", "--encoder-units", "8", "--decoder-units", "8", "--quiet"]);
    run(&args).succeeded();
    let config = read_json(&dir.join("config.json"));
    let pairs = config["task"]["data"]["training_pairs"].as_u64().expect("training pairs") as usize;
    assert_eq!(config["training"]["log_every"].as_u64(), Some(pairs as u64));
    let rows = metrics_rows(&dir);
    let positions: Vec<(usize, &str)> = rows.iter().map(|row| (number(&row[0]) as usize, row[1].as_str())).collect();
    assert_eq!(positions, [(pairs, "1"), (2 * pairs, "2"), (3 * pairs, "3")]);
    run(&["train", "--log-every", "epochs"]).failed_usage().stderr_has(&["neither a number of samples nor `epoch`"]);
}

#[test]
fn plot_draws_the_learning_curve_as_a_1200x700_png() {
    let home = TempDir::new().unwrap();
    let model = home.path().join("model");
    copy_dir(&small_model().dir, &model);
    let outcome = run(&["plot", "--model", path_str(&model)]);
    outcome.succeeded();
    let default_path = model.join("learning_curve.png");
    assert!(outcome.stdout.contains(&format!("Drew 8 reports of {}", model.join("metrics.csv").display())));
    assert!(central_colours(&default_path, (1200, 700)).len() > 1);

    let elsewhere = home.path().join("curve.png");
    run(&["plot", "--model", path_str(&model), "--out", path_str(&elsewhere)]).succeeded();
    assert_eq!(fs::read(&elsewhere).unwrap(), fs::read(&default_path).unwrap(), "same log, same picture");

    // The name chooses the format: vector graphics for .svg, and a refusal for a name that
    // promises a format the tool does not write (before, such a file held PNG bytes).
    let vector = home.path().join("curve.svg");
    run(&["plot", "--model", path_str(&model), "--out", path_str(&vector)]).succeeded();
    let svg = fs::read_to_string(&vector).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(r#"width="1200" height="700""#), "{}", &svg[..100]);
    let jpeg = home.path().join("curve.jpg");
    run(&["plot", "--model", path_str(&model), "--out", path_str(&jpeg)])
        .failed()
        .stderr_has(&["curve.jpg", "name the file .png or .svg"]);
    let gif = home.path().join("vectors.gif");
    run(&["encode", "--model", path_str(&model), "--plot", path_str(&gif)]).failed().stderr_has(&[
        "--plot",
        "vectors.gif",
        "name the file .png or .svg",
    ]);
    assert!(!jpeg.exists() && !gif.exists());

    // Without a log there is nothing to draw, and the message says why.
    fs::remove_file(model.join("metrics.csv")).unwrap();
    run(&["plot", "--model", path_str(&model)]).failed().stderr_has(&["metrics.csv does not exist"]);
    run(&["plot", "--model", "/nonexistent/run"]).failed().stderr_has(&["/nonexistent/run does not exist"]);
}

#[test]
fn metrics_logging_leaves_the_trained_weights_unchanged() {
    let home = TempDir::new().unwrap();
    // Two layers with dropout: scoring the validation samples must draw no random numbers.
    let train = |name: &str, every: &str| {
        let args = ["--log-every", every, "--samples", "320", "--encoder-layers", "2", "--dropout", "0.3"];
        train_tiny(home.path(), name, &args)
    };
    let often = train("often", "32");
    let once = train("once", "1000000");
    assert_eq!(metrics_rows(&often).len(), 10);
    assert_eq!(metrics_rows(&once).len(), 1, "only the epoch's end");
    assert!(
        fs::read(often.join("model.safetensors")).unwrap() == fs::read(once.join("model.safetensors")).unwrap(),
        "logging every batch changed the weights"
    );
    run(&["train", "--log-every", "0", "--samples", "64"]).failed().stderr_has(&["--log-every must be at least 1"]);
}

/// `--patience N` stops the run at the first row that ends N validation rows in a row without
/// a loss below the best before them, as the log itself shows, and says so.
#[test]
fn patience_stops_where_the_logged_validation_losses_say() {
    let home = TempDir::new().unwrap();
    let dir = home.path().join("patient");
    let args = ["--samples", "20000", "--log-every", "320", "--learning-rate", "0.01", "--patience", "2"];
    let mut command = vec!["train", "--out", path_str(&dir), "--eval-samples", "200", "--device", "cpu"];
    command.extend_from_slice(&args);
    let outcome = run(&command);
    outcome.succeeded().stdout_has(&["Stopped early after ", " of 20000 samples", "for 2 rows (--patience)"]);

    let rows = metrics_rows(&dir);
    let losses: Vec<f64> = rows.iter().map(|row| number(&row[6])).collect();
    let (mut best, mut since_best) = (f64::INFINITY, 0);
    let stop = losses.iter().position(|&loss| {
        if loss < best {
            (best, since_best) = (loss, 0);
        } else {
            since_best += 1;
        }
        since_best == 2
    });
    assert_eq!(stop, Some(rows.len() - 1), "the run ends at the row that stops it: {losses:?}");
    let last = number(&rows[rows.len() - 1][0]) as u64;
    assert!(last < 20_000);
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["stopped_early_after"].as_u64(), Some(last));
    assert_eq!(config["training"]["patience"].as_u64(), Some(2));
    run(&["info", "--model", path_str(&dir)]).succeeded().stdout_has(&[
        &format!("trained on {last} samples (stopped early, of 20000 planned)"),
        "early stopping after 2 rows",
    ]);
    run(&["train", "--out", path_str(&home.path().join("none")), "--patience", "0"])
        .failed()
        .stderr_has(&["--patience must be at least 1"]);

    // --restore-best keeps the weights of the row with the lowest validation loss: scored on the
    // same 1,000 samples (the first of the evaluation stream), they give that row's loss.
    let best = home.path().join("best");
    let mut command = vec!["train", "--out", path_str(&best), "--eval-samples", "200", "--device", "cpu"];
    command.extend_from_slice(&args);
    command.push("--restore-best");
    run(&command).succeeded().stdout_has(&["Kept the weights of the best validation row: loss "]);
    let without_time = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        rows.iter()
            .map(|row| row.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, f)| f.clone()).collect())
            .collect()
    };
    assert_eq!(
        without_time(&metrics_rows(&best)),
        without_time(&rows),
        "keeping the best weights changes nothing before the end"
    );
    let (best_index, best_loss) =
        losses.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map(|(i, &l)| (i, l)).expect("rows");
    let best_at = number(&rows[best_index][0]) as u64;
    assert!(best_at < last, "the best row is before the row that stopped the run");
    assert_eq!(read_json(&best.join("config.json"))["restored_best_after"].as_u64(), Some(best_at));
    let scored = run(&["evaluate", "--model", path_str(&best), "--samples", "1000", "--json"]);
    let scored: Value = serde_json::from_str(scored.succeeded().stdout.trim()).expect("JSON");
    let loss = scored["loss"].as_f64().expect("a loss");
    assert!((loss - best_loss).abs() <= 1e-6 * best_loss, "evaluated {loss}, the best row {best_loss}");
    assert_ne!(fs::read(best.join("model.safetensors")).unwrap(), fs::read(dir.join("model.safetensors")).unwrap());
    run(&["info", "--model", path_str(&best)])
        .succeeded()
        .stdout_has(&[&format!("the weights of its best validation row, after {best_at} samples")]);
}

/// `--validation-samples N` sets which samples every row's validation columns score (the first
/// N of the evaluation stream, as `evaluate --samples N` draws them); 0 leaves them out, and
/// changes no weight.
#[test]
fn validation_samples_set_what_each_row_scores_or_leave_the_columns_out() {
    let home = TempDir::new().unwrap();
    let train = |name: &str, validation: &str| {
        let args = ["--validation-samples", validation, "--samples", "640", "--log-every", "320"];
        train_tiny(home.path(), name, &args)
    };
    let evaluated_loss = |dir: &Path, samples: &str| {
        let scored = run(&["evaluate", "--model", path_str(dir), "--samples", samples, "--json"]);
        let scored: Value = serde_json::from_str(scored.succeeded().stdout.trim()).expect("JSON");
        scored["loss"].as_f64().expect("a loss")
    };

    let some = train("some", "300");
    let rows = metrics_rows(&some);
    let logged = number(&rows[rows.len() - 1][6]);
    let (on_300, on_1000) = (evaluated_loss(&some, "300"), evaluated_loss(&some, "1000"));
    assert!((logged - on_300).abs() <= 1e-6 * on_300, "the last row {logged}, the first 300 samples {on_300}");
    assert!((logged - on_1000).abs() > 1e-6 * on_1000, "the last row scored the default 1,000 samples");
    assert_eq!(read_json(&some.join("config.json"))["training"]["validation_samples"].as_u64(), Some(300));
    run(&["info", "--model", path_str(&some)]).succeeded().stdout_has(&["validation rows on 300 samples"]);

    let none = train("none", "0");
    let rows = metrics_rows(&none);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row[6..9].iter().all(String::is_empty)), "{rows:?}");
    assert!(rows.iter().all(|row| !row[3].is_empty()), "the training columns stay: {rows:?}");
    assert_eq!(fs::read(none.join("model.safetensors")).unwrap(), fs::read(some.join("model.safetensors")).unwrap());
    run(&["info", "--model", path_str(&none)]).succeeded().stdout_has(&["no validation rows"]);
    run(&["plot", "--model", path_str(&none)]).succeeded();

    let refused = home.path().join("refused");
    for watcher in [&["--restore-best"][..], &["--patience", "2"]] {
        let mut args = vec!["train", "--out", path_str(&refused), "--validation-samples", "0"];
        args.extend_from_slice(watcher);
        run(&args).failed().stderr_has(&[&format!("{} watches the validation rows", watcher[0])]);
    }
    assert!(!refused.exists());
}

#[test]
fn autoencoder_logs_and_draws_without_accuracies() {
    let home = TempDir::new().unwrap();
    let model = home.path().join("autoencoder");
    let mut args = vec!["train", "--task", "autoencoder", "--sequence", "random", "--out", path_str(&model)];
    args.extend_from_slice(&["--samples", "320", "--encoder-units", "8", "--decoder-units", "8"]);
    args.extend_from_slice(&["--eval-samples", "50", "--device", "cpu", "--quiet"]);
    run(&args).succeeded();
    let rows = metrics_rows(&model);
    assert!(!rows.is_empty());
    for row in &rows {
        assert!(number(&row[3]) > 0.0 && number(&row[6]) > 0.0, "losses: {row:?}");
        for accuracy in [&row[4], &row[5], &row[7], &row[8]] {
            assert_eq!(accuracy, "", "an autoencoder has no accuracies: {row:?}");
        }
    }
    run(&["plot", "--model", path_str(&model)]).succeeded();
    assert!(central_colours(&model.join("learning_curve.png"), (1200, 700)).len() > 1);

    let picture = home.path().join("encodings.png");
    run(&["encode", "--model", path_str(&model), "--plot", path_str(&picture), "--samples", "200"]).succeeded();
    assert!(central_colours(&picture, (1000, 800)).len() > 1);

    let model = path_str(&model);
    run(&["evaluate", "--model", model, "--errors", "3"]).failed().stderr_has(&["holds an autoencoder"]);
    run(&["predict", "--model", model, "--verbose", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"])
        .failed()
        .stderr_has(&["holds an autoencoder"]);
}

#[test]
fn encode_plot_draws_a_1000x800_scatter_of_fresh_samples_or_of_the_inputs() {
    let home = TempDir::new().unwrap();
    let model = path_str(&small_model().dir);
    let picture = home.path().join("encodings.png");
    let outcome = run(&["encode", "--model", model, "--plot", path_str(&picture), "--samples", "300"]);
    outcome.succeeded();
    assert_eq!(outcome.stdout, "", "--plot alone writes no vectors");
    assert!(outcome.stderr.contains("Drew the vectors of 300 inputs"), "{outcome}");
    assert!(central_colours(&picture, (1000, 800)).len() > 1);

    // Given inputs, it draws those, and --out still receives their vectors.
    let vectors = home.path().join("vectors.csv");
    let inputs = ["1+2+3", "10+10+10", "5+5+5", "2+9+1"];
    let mut args = vec!["encode", "--model", model, "--plot", path_str(&picture), "--out", path_str(&vectors)];
    args.extend_from_slice(&inputs);
    let outcome = run(&args);
    outcome.succeeded();
    assert!(outcome.stderr.contains("Drew the vectors of 4 inputs"), "{outcome}");
    assert_eq!(fs::read_to_string(&vectors).unwrap().lines().count(), inputs.len());
    assert!(central_colours(&picture, (1000, 800)).len() > 1);

    // Bare file names land in the working directory.
    let mut command =
        seq2seq(&["encode", "--model", model, "--plot", "here.png", "--out", "here.csv", "1+2+3", "4+5+6"]);
    command.current_dir(home.path());
    Outcome::of(command).succeeded();
    assert!(central_colours(&home.path().join("here.png"), (1000, 800)).len() > 1);
    assert_eq!(fs::read_to_string(home.path().join("here.csv")).unwrap().lines().count(), 2);

    run(&["encode", "--model", model, "--plot", path_str(&picture), "1+2+3"])
        .failed()
        .stderr_has(&["--plot needs at least 2 inputs"]);
    run(&["encode", "--model", model, "--samples", "10", "1+2+3"]).failed_usage();
}

/// The value of `a+b+c`, from the text alone.
fn sum_of(input: &str) -> i64 {
    input.split('+').map(|term| term.parse::<i64>().expect("a term")).sum()
}

fn evaluate_errors(errors: &str) -> Value {
    let outcome =
        run(&["evaluate", "--model", path_str(&small_model().dir), "--samples", "1000", "--errors", errors, "--json"]);
    outcome.succeeded();
    serde_json::from_str(&outcome.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {outcome}"))
}

#[test]
fn evaluate_errors_lists_real_mistakes_with_consistent_breakdowns() {
    let report = evaluate_errors("5");
    let samples = report["samples"].as_u64().expect("samples") as usize;
    let wrong = report["wrong"].as_u64().expect("wrong") as usize;
    assert_eq!(samples, 1000);
    assert!(wrong > 5, "the small model should make mistakes: {report}");
    let sequence_accuracy = report["sequence_accuracy"].as_f64().expect("sequence accuracy");
    assert!(((samples - wrong) as f64 / samples as f64 - sequence_accuracy).abs() < 1e-9, "{report}");

    let distinct_wrong = report["distinct_wrong"].as_u64().expect("distinct_wrong") as usize;
    assert!(distinct_wrong > 5 && distinct_wrong <= wrong, "{report}");
    let errors = report["errors"].as_array().expect("a list of errors");
    assert_eq!(errors.len(), 5.min(distinct_wrong));
    let mut previous_confidence = f64::INFINITY;
    for error in errors {
        let input = error["input"].as_str().expect("input");
        let expected = error["expected"].as_i64().expect("expected");
        assert_eq!(expected, sum_of(input), "{error}");
        assert_ne!(error["prediction"].as_str().expect("prediction"), expected.to_string(), "not a mistake: {error}");
        let confidence = error["confidence"].as_f64().expect("confidence");
        assert!(confidence > 0.0 && confidence <= 1.0, "{error}");
        assert!(confidence <= previous_confidence, "not sorted by confidence: {errors:?}");
        previous_confidence = confidence;
    }

    // Every output position weighs the same: their mean is the character accuracy.
    let by_position = report["by_position"].as_array().expect("by_position");
    assert_eq!(by_position.len(), 2, "outputs of 2 characters");
    let mean: f64 = by_position.iter().map(|p| p["char_accuracy"].as_f64().expect("accuracy")).sum::<f64>()
        / by_position.len() as f64;
    assert!((mean - report["char_accuracy"].as_f64().expect("char accuracy")).abs() < 1e-9, "{report}");
    assert_eq!(by_position[0]["position"], 1);

    // Sums of 3 terms of 1..=10 have 1 or 2 digits; the groups add up to every sample and mistake.
    let by_size = report["by_size"].as_array().expect("by_size");
    let digits: Vec<u64> = by_size.iter().map(|s| s["digits"].as_u64().expect("digits")).collect();
    assert_eq!(digits, [1, 2]);
    let counted: usize = by_size.iter().map(|s| s["samples"].as_u64().expect("samples") as usize).sum();
    assert_eq!(counted, samples);
    let wrong_in_groups: f64 = by_size
        .iter()
        .map(|s| s["samples"].as_f64().expect("samples") * (1.0 - s["sequence_accuracy"].as_f64().expect("accuracy")))
        .sum();
    assert!((wrong_in_groups - wrong as f64).abs() < 1e-6, "{report}");

    // Asking for more than there are lists them all, each input once, their counts adding up to
    // the wrong samples; the text output says the same.
    let all = evaluate_errors("1000000");
    let all = all["errors"].as_array().expect("errors");
    assert_eq!(all.len(), distinct_wrong);
    let inputs: HashSet<&str> = all.iter().map(|error| error["input"].as_str().expect("input")).collect();
    assert_eq!(inputs.len(), distinct_wrong, "an input listed twice");
    assert_eq!(all.iter().map(|error| error["count"].as_u64().expect("count")).sum::<u64>(), wrong as u64);
    let text = run(&["evaluate", "--model", path_str(&small_model().dir), "--samples", "1000", "--errors", "3"]);
    text.succeeded();
    for expected in [
        format!("Wrong: {wrong} of 1000 ({distinct_wrong} distinct inputs)."),
        "The 3 most confident mistakes:".to_owned(),
        "Character accuracy by output position".to_owned(),
        "2 digits".to_owned(),
    ] {
        assert!(text.stdout.contains(&expected), "{expected:?} missing\n{text}");
    }
}

#[test]
fn info_says_what_a_saved_model_is() {
    let model = small_model();
    let dir = path_str(&model.dir);
    let text = run(&["info", "--model", dir]);
    text.succeeded();
    let evaluated = read_json(&model.dir.join("config.json"));
    assert!(
        text.stdout.starts_with(&format!("{dir}: a finished model, trained on 1280 samples in ")),
        "{}",
        text.stdout
    );
    for expected in [
        "Problem: 3 terms, each 1..=10, joined by +",
        "Training: batches of 32, 2 epochs of 640 samples, Adam at 0.001, seed 4, 1 thread",
        "On 200 fresh samples: ",
        "Written by seq2seq ",
    ] {
        assert!(text.stdout.contains(expected), "{expected:?} in\n{}", text.stdout);
    }
    // The layer table: the encoder (4 gates over 12 classes, 16 units and a bias), the
    // decoder (over the encoder's 16), the output layer.
    for row in ["encoder (LSTM)                    (None, 16)                       1,856", "Total params: 4,172"] {
        assert!(text.stdout.contains(row), "{row:?} in\n{}", text.stdout);
    }

    let json = run(&["info", "--model", dir, "--json"]);
    json.succeeded();
    let info: Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
    assert_eq!(info["state"], "finished");
    assert_eq!((info["samples_trained"].as_u64(), info["samples_planned"].as_u64()), (Some(1280), Some(1280)));
    assert_eq!(info["training"], evaluated["training"]);
    assert_eq!(info["architecture"], evaluated["model"]);
    assert_eq!(info["scores"], evaluated["metrics"]);
    assert_eq!(info["parameters"].as_i64(), Some(4 * 16 * (12 + 16 + 1) + 4 * 16 * (16 + 16 + 1) + 16 * 12 + 12));

    // A damaged directory is named as predict names it; without --model, the machine.
    let (_home, damaged) =
        damaged_copy(|dir| fs::write(dir.join("model.safetensors"), b"not weights").expect("damage"));
    run(&["info", "--model", path_str(&damaged)]).failed().stderr_has(&["model.safetensors"]);
    run(&["info"]).succeeded().stdout_has(&["libtorch 2.11.0"]);
}

#[test]
fn predict_verbose_shows_the_probability_of_each_written_character() {
    let model = path_str(&small_model().dir);
    // The most confident mistake: its confidence is the product of its characters' probabilities.
    let report = evaluate_errors("1");
    let mistake = &report["errors"][0];
    let input = mistake["input"].as_str().expect("input");

    let outcome = run(&["predict", "--model", model, "--verbose", "--json", input, "1+2+3"]);
    outcome.succeeded();
    let answers = json_lines(&outcome.stdout);
    assert_eq!(answers.len(), 2);
    for answer in &answers {
        let probabilities: Vec<f64> =
            answer["probabilities"].as_array().expect("probabilities").iter().map(|p| p.as_f64().unwrap()).collect();
        assert_eq!(probabilities.len(), 2, "one per output character: {answer}");
        for probability in &probabilities {
            // The written character is the likeliest of the 12, so its probability is at least 1/12.
            assert!(*probability >= 1.0 / 12.0 - 1e-9 && *probability <= 1.0, "{answer}");
        }
    }
    let product: f64 = answers[0]["probabilities"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).product();
    let confidence = mistake["confidence"].as_f64().expect("confidence");
    // The two commands batch the input with different rows, and a row's probabilities may differ
    // in float32's last bits with its batch (MKL's AVX-512 kernels block by the rows: on an Intel
    // Xeon, 0.69036160 alone and 0.69036153 among 1,000 rows): equal to float32's precision.
    let relative = (product - confidence).abs() / confidence;
    assert!(relative < 1e-6, "predict says {product}, evaluate --errors says {confidence}");
    assert_eq!(answers[0]["prediction"], mistake["prediction"]);

    // Text: the usual line, then each character with its probability, to two decimals.
    let text = run(&["predict", "--model", model, "--verbose", input]);
    text.succeeded();
    let line = text.stdout.lines().next().expect("one line");
    let (answer, shown) = line.split_once("  [").expect("probabilities after two spaces");
    let parsed = parse_text_line(answer, 8, 2);
    let probabilities = answers[0]["probabilities"].as_array().unwrap();
    let expected: Vec<String> = parsed
        .prediction
        .chars()
        .zip(probabilities)
        .map(|(symbol, p)| format!("'{symbol}' {:.2}", p.as_f64().unwrap()))
        .collect();
    assert_eq!(shown, format!("{}]", expected.join(", ")), "{line:?}");

    let plain = run(&["predict", "--model", model, "--json", "1+2+3"]);
    assert!(!plain.stdout.contains("probabilities"), "only --verbose adds them: {}", plain.stdout);
}

#[test]
fn completions_are_generated_for_every_shell() {
    let subcommands = ["train", "evaluate", "predict", "encode", "plot", "completions", "info"];
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let outcome = run(&["completions", shell]);
        outcome.succeeded();
        assert!(outcome.stdout.len() > 500, "{shell}: {outcome}");
        for subcommand in subcommands {
            assert!(outcome.stdout.contains(subcommand), "{shell} misses {subcommand}");
        }
        assert!(outcome.stdout.contains("log-every"), "{shell} misses the options");
    }
    assert!(run(&["completions", "zsh"]).stdout.starts_with("#compdef seq2seq"));
    run(&["completions", "tcsh"]).failed_usage();
}

#[test]
fn every_subcommand_has_an_example_in_its_help() {
    for subcommand in ["train", "evaluate", "predict", "encode", "plot", "completions", "info"] {
        let outcome = run(&[subcommand, "--help"]);
        outcome.succeeded();
        assert!(outcome.stdout.contains("Example"), "{subcommand} --help has no example:\n{}", outcome.stdout);
        assert!(outcome.stdout.contains(&format!("seq2seq {subcommand}")), "{subcommand}: {}", outcome.stdout);
    }
}
