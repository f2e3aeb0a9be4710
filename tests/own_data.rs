//! Training on the user's own data, through the real binary: pairs in both file layouts,
//! characters and words, the vocabulary kept in the model, unknown tokens, length limits, the
//! held-out split, resume, every kind of bad data, a small problem that must really be learnt,
//! and the autoencoder on a file of sequences.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use tempfile::TempDir;

fn small_model<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--quiet"];
    if !extra.contains(&"--encoder-units") {
        args.extend_from_slice(&["--encoder-units", "32", "--decoder-units", "32"]);
    }
    args.extend_from_slice(extra);
    args
}

fn train_pairs(home: &Path, name: &str, data: &[&str], extra: &[&str]) -> (PathBuf, Outcome) {
    let dir = home.join(name);
    let mut args = vec!["train", "--out", path_str(&dir)];
    args.extend_from_slice(data);
    args.extend(small_model(extra));
    let outcome = run(&args);
    (dir, outcome)
}

#[test]
fn a_small_reversal_problem_is_learnt_and_scored_on_its_held_out_pairs() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("reverse.tsv");
    write_pairs(&data, &reversal_pairs(3000, 1));
    let (dir, outcome) = train_pairs(
        home.path(),
        "model",
        &["--data", path_str(&data)],
        &["--epochs", "12", "--learning-rate", "0.01", "--encoder-units", "64", "--decoder-units", "64"],
    );
    outcome.succeeded();
    let evaluation = run(&["evaluate", "--model", path_str(&dir), "--json"]);
    evaluation.succeeded();
    let figures: serde_json::Value = serde_json::from_str(evaluation.stdout.trim()).expect("one JSON object");
    for key in ["samples", "loss", "token_accuracy", "sequence_accuracy", "token_error_rate"] {
        assert!(figures[key].is_number(), "{key} in {figures}");
    }
    // Held out: about 5% of 3,000 distinct-ish words.
    let samples = figures["samples"].as_u64().expect("samples");
    assert!((80..=230).contains(&samples), "{figures}");
    let accuracy = figures["sequence_accuracy"].as_f64().expect("accuracy");
    assert!(accuracy >= 0.80, "reversing short words must be learnt: {figures}");
    assert!(figures["token_error_rate"].as_f64().expect("rate") <= 0.08, "{figures}");
    // The figures in config.json are the same held-out pairs' (evaluate reads the file again).
    let saved = &read_json(&dir.join("config.json"))["metrics"];
    assert_eq!(saved["sequence_accuracy"], figures["sequence_accuracy"]);
    assert_eq!(saved["token_error_rate"], figures["token_error_rate"]);
    // Every held-out pair is scored: a count of fresh samples is refused, not silently ignored.
    run(&["evaluate", "--model", path_str(&dir), "--samples", "10"]).failed().stderr_has(&["--samples", "every pair"]);
    // A new process answers from the vocabulary in config.json alone: the data file is gone.
    fs::remove_file(&data).expect("remove the data");
    let answers = run(&["predict", "--model", path_str(&dir), "abcd", "hgfe"]);
    answers.succeeded();
    assert_eq!(answers.stdout_lines(), ["abcd\tdcba", "hgfe\tefgh"]);
    run(&["evaluate", "--model", path_str(&dir)]).failed().stderr_has(&["reverse.tsv does not exist"]);
    // The encoder's vectors of sources, and the learning curve.
    let vectors = run(&["encode", "--model", path_str(&dir), "abc", "hhgg"]);
    vectors.succeeded();
    let rows = vectors.stdout_lines();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|row| row.split(',').count() == 64), "{rows:?}");
    let picture = home.path().join("vectors.png");
    fs::write(home.path().join("inputs.txt"), "abc\nbad\ncab\nhhh\n").expect("write");
    run(&[
        "encode",
        "--model",
        path_str(&dir),
        "--file",
        path_str(&home.path().join("inputs.txt")),
        "--plot",
        path_str(&picture),
    ])
    .succeeded();
    assert!(fs::read(&picture).expect("the picture").starts_with(b"\x89PNG"));
    run(&["plot", "--model", path_str(&dir)]).succeeded();
    assert!(dir.join("learning_curve.png").exists());
}

#[test]
fn aligned_files_and_words_give_the_same_pairs_as_one_tabbed_file() {
    let home = TempDir::new().expect("temp dir");
    let pairs: Vec<(String, String)> = reversal_pairs(400, 2)
        .into_iter()
        .map(|(word, reversed)| {
            let spelled: Vec<String> = reversed.chars().map(|c| c.to_ascii_uppercase().to_string()).collect();
            (word, spelled.join(" "))
        })
        .collect();
    let tabbed = home.path().join("pairs.tsv");
    write_pairs(&tabbed, &pairs);
    let (source, target) = (home.path().join("src.txt"), home.path().join("tgt.txt"));
    fs::write(&source, pairs.iter().map(|(s, _)| format!("{s}\r\n")).collect::<String>()).expect("write");
    fs::write(&target, pairs.iter().map(|(_, t)| format!("{t}\n")).collect::<String>()).expect("write");
    let words = ["--target-tokens", "words", "--epochs", "1"];
    let (one, outcome) = train_pairs(home.path(), "tabbed", &["--data", path_str(&tabbed)], &words);
    outcome.succeeded();
    let aligned_args = ["--source", path_str(&source), "--target", path_str(&target)];
    let (two, outcome) = train_pairs(home.path(), "aligned", &aligned_args, &words);
    outcome.succeeded();
    assert_eq!(fs::read(one.join("model.safetensors")).unwrap(), fs::read(two.join("model.safetensors")).unwrap());
    let task = &read_json(&one.join("config.json"))["task"];
    assert_eq!(task["kind"], "pairs");
    assert_eq!(task["target_tokens"], "words");
    // A target vocabulary of letters A..H as words, and the end marker's step.
    let targets: Vec<&str> =
        task["target_vocabulary"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(&targets[..2], ["<pad>", "<unk>"]);
    assert!(targets[2..].iter().all(|t| t.len() == 1 && t.chars().all(|c| c.is_ascii_uppercase())), "{targets:?}");
    assert_eq!(read_json(&one.join("config.json"))["output_len"], task["max_target_len"].as_u64().unwrap() + 1);
    // Words are printed joined by single spaces.
    let answer = run(&["predict", "--model", path_str(&one), "--json", "abc"]);
    let prediction = json_lines(&answer.stdout)[0]["prediction"].as_str().unwrap().to_owned();
    assert!(prediction.is_empty() || prediction.split(' ').all(|token| targets.contains(&token)), "{prediction:?}");
    // Aligned files of different lengths: both counts named.
    fs::write(&target, "A\nB\n").expect("write");
    let (_, outcome) = train_pairs(home.path(), "uneven", &aligned_args, &words);
    outcome.failed().stderr_has(&["has 400 lines but", "has 2"]);
}

#[test]
fn unknown_tokens_length_limits_and_expected_answers() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("pairs.tsv");
    let mut pairs = reversal_pairs(300, 3);
    pairs.push(("abcdefghabcdefgh".into(), "hgfedcbahgfedcba".into()));
    write_pairs(&data, &pairs);
    let (dir, outcome) =
        train_pairs(home.path(), "model", &["--data", path_str(&data)], &["--max-source-len", "8", "--epochs", "1"]);
    outcome.succeeded().stderr_has(&["left out 1 of", "pairs longer than 8/"]);
    let model = path_str(&dir);
    assert_eq!(read_json(&dir.join("config.json"))["input_len"], 8);
    // An unknown token is read as <unk>, said with its line and column, and the line answered.
    let file = home.path().join("inputs.txt");
    fs::write(&file, "abc\nazc\tcza\nabcdefghab\n").expect("write");
    let outcome = run(&["predict", "--model", model, "--file", path_str(&file)]);
    outcome.failed().stderr_has(&[
        "inputs.txt:2: token 2 (\"z\") is not in the model's vocabulary; read as <unk>",
        "inputs.txt:3: 10 tokens; this model reads sources of at most 8",
        "1 of 3 inputs was rejected (see the message above)",
    ]);
    let lines = outcome.stdout_lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].starts_with("azc\t") && lines[1].contains("(expect cza: "), "{lines:?}");
    let json = run(&["predict", "--model", model, "--json", "--file", path_str(&file)]);
    let answers = json_lines(&json.stdout);
    assert_eq!(answers[0].get("expected"), None);
    assert_eq!(answers[1]["expected"], "cza");
    assert_eq!(answers[1]["correct"], false, "an unknown token cannot be written back");
    // --errors lists mistakes with what was expected.
    let listed = run(&["evaluate", "--model", model, "--errors", "3", "--json"]);
    let report: serde_json::Value = serde_json::from_str(listed.stdout.trim()).expect("JSON");
    let errors = report["errors"].as_array().expect("errors");
    assert!(errors.len() <= 3 && report["wrong"].as_u64().unwrap() >= errors.len() as u64);
    for error in errors {
        assert_ne!(error["prediction"], error["expected"]);
    }
}

#[test]
fn tokens_the_model_lacks_are_never_right_and_shown_as_written() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("pairs.tsv");
    write_pairs(&data, &reversal_pairs(300, 3));
    let (dir, outcome) = train_pairs(home.path(), "model", &["--data", path_str(&data)], &["--epochs", "1"]);
    outcome.succeeded();
    let model = path_str(&dir);
    // `z` is no token of the model: whatever it writes for `zzz`, it cannot be `zzz`.
    let scored = home.path().join("scored.tsv");
    fs::write(&scored, "zzz\tzzz\nzz\tzz\n").expect("write");
    let outcome = run(&["evaluate", "--model", model, "--data", path_str(&scored), "--errors", "5", "--json"]);
    let outcome = outcome.succeeded();
    outcome.stderr_has(&["5 target tokens of", "are not in the model's vocabulary: the model cannot write them"]);
    let report: serde_json::Value = serde_json::from_str(outcome.stdout.trim()).expect("JSON");
    // No token is right but the end markers (two of the seven steps); every token is an edit.
    assert_eq!(report["sequence_accuracy"].as_f64(), Some(0.0));
    assert!(report["token_accuracy"].as_f64().is_some_and(|a| a <= 2.0 / 7.0 + 1e-9), "{report}");
    assert!(report["token_error_rate"].as_f64().is_some_and(|rate| rate >= 1.0), "{report}");
    assert_eq!(report["wrong"], 2);
    // The mistakes show the text of the file, not `<unk>`.
    let errors = report["errors"].as_array().expect("errors");
    let inputs: Vec<&str> = errors.iter().map(|e| e["input"].as_str().unwrap_or_default()).collect();
    assert!(inputs.contains(&"zzz") && errors.iter().all(|e| !e["expected"].as_str().unwrap().contains("<unk>")));
    // An empty expected target is refused like train's, with its line.
    let file = home.path().join("inputs.txt");
    fs::write(&file, "abc\t\n").expect("write");
    run(&["predict", "--model", model, "--file", path_str(&file)])
        .failed()
        .stderr_has(&["inputs.txt:1: the target after the tab is empty"]);
    // A --min-count that no token reaches is refused before anything is written.
    let (dir, outcome) =
        train_pairs(home.path(), "none", &["--data", path_str(&data)], &["--epochs", "1", "--min-count", "100000"]);
    outcome.failed().stderr_has(&["occurs --min-count 100000 times", "lower --min-count"]);
    assert!(!dir.exists());
    // So is a warm-up longer than the run, once the pairs have said how long it is.
    let (dir, outcome) =
        train_pairs(home.path(), "warm", &["--data", path_str(&data)], &["--epochs", "2", "--warmup", "100000"]);
    outcome.failed().stderr_has(&["--warmup 100000 is longer than the run (", " training pairs × --epochs 2)"]);
    assert!(!dir.exists());
}

#[test]
fn a_csv_file_is_read_in_its_named_columns_by_train_evaluate_and_predict() {
    let home = TempDir::new().expect("temp dir");
    let csv = |pairs: &[(String, String)]| -> String {
        let rows: String =
            pairs.iter().enumerate().map(|(i, (word, reversed))| format!("{i},\"{word}\",{reversed}\n")).collect();
        format!("id,word,reversed\n{rows}")
    };
    let data = home.path().join("pairs.csv");
    fs::write(&data, csv(&reversal_pairs(600, 8))).expect("write");
    let (dir, outcome) = train_pairs(
        home.path(),
        "model",
        &["--data", path_str(&data), "--columns", "word,reversed"],
        &["--epochs", "1", "--encoder-units", "8", "--decoder-units", "8"],
    );
    outcome
        .succeeded()
        .stderr_has(&["pairs.csv: the source is column 2 (\"word\"), the target column 3 (\"reversed\")"]);
    let config = read_json(&dir.join("config.json"));
    assert_eq!(config["task"]["data"]["columns"], serde_json::json!({"source": "word", "target": "reversed"}));
    // Only the letters of the chosen columns became tokens: no digit of `id`, no quote, no comma.
    let tokens = config["task"]["source_vocabulary"].as_array().expect("a list of tokens").clone();
    let foreign = |token: &serde_json::Value| {
        token.as_str().is_some_and(|t| t.len() == 1 && !t.chars().all(|c| c.is_ascii_lowercase()))
    };
    assert!(!tokens.iter().any(foreign), "{tokens:?}");
    let model = path_str(&dir);

    // evaluate --data and predict --file read another CSV in the model's columns, found by name.
    let scored = home.path().join("scored.csv");
    fs::write(&scored, "reversed,word\ncba,abc\n,dd\n").expect("write");
    let report = run(&["evaluate", "--model", model, "--data", path_str(&scored), "--skip-bad-lines", "--json"]);
    let report: serde_json::Value = serde_json::from_str(report.succeeded().stdout.trim()).expect("JSON");
    assert_eq!(report["samples"], 1, "the line with an empty target is bad: {report}");
    let answers = run(&["predict", "--model", model, "--file", path_str(&scored), "--json"]);
    let lines = answers.succeeded().stdout_lines();
    let rows: Vec<serde_json::Value> = lines.iter().map(|line| serde_json::from_str(line).expect("JSON")).collect();
    assert_eq!(rows.len(), 2, "{lines:?}");
    assert_eq!((rows[0]["input"].as_str(), rows[0]["expected"].as_str()), (Some("abc"), Some("cba")));
    assert_eq!(
        (rows[1]["input"].as_str(), rows[1].get("expected")),
        (Some("dd"), None),
        "an empty field gives no target"
    );
    // Without the target column, predict answers the sources alone; without the source, it refuses the file.
    let sources = home.path().join("sources.csv");
    fs::write(&sources, "word\nabc\n\n\"ab\n").expect("write");
    let answers = run(&["predict", "--model", model, "--file", path_str(&sources)]);
    answers.failed().stderr_has(&[
        "sources.csv:3: the source is empty",
        "sources.csv:4: a quoted field opened on this record's first line is not closed at the end of the file",
    ]);
    assert!(answers.stdout.starts_with("abc\t"), "{}", answers.stdout);
    // A quoted field may hold a line break (a spreadsheet's cell of two lines): its record spans
    // its lines, located by them; the plain output writes the break as \n, JSON keeps it.
    let broken = home.path().join("broken.csv");
    fs::write(&broken, "word,reversed\n\"ab\nc\",\"c\nba\"\nabc,cba\n").expect("write");
    let answers = run(&["predict", "--model", model, "--file", path_str(&broken)]);
    let lines = answers.succeeded().stdout_lines();
    assert!(lines.len() == 2 && lines[0].starts_with("ab\\nc\t"), "{lines:?}");
    assert!(lines[0].ends_with("(expect c\\nba: wrong)") && lines[1].starts_with("abc\t"), "{lines:?}");
    answers.stderr_has(&["broken.csv:2-4: token 3 (\"\\n\") is not in the model's vocabulary"]);
    let answers = run(&["predict", "--model", model, "--file", path_str(&broken), "--json"]);
    let first: serde_json::Value = serde_json::from_str(answers.succeeded().stdout_lines()[0]).expect("JSON");
    assert_eq!((first["input"].as_str(), first["expected"].as_str()), (Some("ab\nc"), Some("c\nba")));
    let numbered = run(&["predict", "--model", model, "--file", path_str(&scored), "--columns", "2,1"]);
    assert!(numbered.succeeded().stdout_lines()[0].starts_with("abc\t"), "{:?}", numbered.stdout);
    run(&["predict", "--model", model, "--file", path_str(&sources), "--columns", "spelling,reversed"])
        .failed()
        .stderr_has(&["sources.csv:1: the header has no column \"spelling\" for the source"]);
    // Standard input is CSV when --columns says so, and otherwise a source per line.
    let piped =
        run_with_stdin(&["predict", "--model", model, "--file", "-", "--columns", "word,reversed"], "word\nabc\n");
    assert!(piped.succeeded().stdout_lines().len() == 1 && piped.stdout.starts_with("abc\t"), "{}", piped.stdout);
    let lines = run_with_stdin(&["predict", "--model", model, "--file", "-"], "word\nabc\n");
    assert_eq!(lines.succeeded().stdout_lines().len(), 2, "{}", lines.stdout);
    // encode reads the same sources.
    let vectors = run(&["encode", "--model", model, "--file", path_str(&scored)]);
    assert_eq!(vectors.succeeded().stdout_lines().len(), 2);

    // --columns where no CSV file is read is refused, not ignored.
    let tabbed = home.path().join("pairs.tsv");
    write_pairs(&tabbed, &reversal_pairs(50, 2));
    let (_, outcome) = train_pairs(home.path(), "tabbed", &["--data", path_str(&tabbed), "--columns", "1,2"], &[]);
    outcome.failed().stderr_has(&["--columns picks the columns of a CSV file", "pairs.tsv is read as"]);
    run(&["predict", "--model", model, "--columns", "1,2", "abc"]).failed().stderr_has(&["--columns", "CSV --file"]);
    run(&["predict", "--model", model, "--columns", "1,2"]).failed_usage();
    // A header without the chosen columns stops training before anything is written.
    let (dir, outcome) =
        train_pairs(home.path(), "missing", &["--data", path_str(&data), "--columns", "word,french"], &[]);
    outcome
        .failed()
        .stderr_has(&["pairs.csv:1: the header has no column \"french\" for the target", "\"id\", \"word\""]);
    assert!(!dir.exists());
}

#[test]
fn the_held_out_split_is_deterministic_disjoint_and_a_valid_file_is_checked_for_overlap() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("pairs.tsv");
    let pairs = reversal_pairs(1000, 4);
    write_pairs(&data, &pairs);
    let fast = ["--epochs", "1", "--encoder-units", "8", "--decoder-units", "8"];
    let (a, outcome) = train_pairs(home.path(), "a", &["--data", path_str(&data)], &fast);
    outcome.succeeded();
    let (b, _) = train_pairs(home.path(), "b", &["--data", path_str(&data)], &fast);
    let (c, _) = train_pairs(home.path(), "c", &["--data", path_str(&data), "--seed", "2"], &fast);
    let held = |dir: &Path| read_json(&dir.join("config.json"))["metrics"]["samples"].as_u64().unwrap();
    let trained = |dir: &Path| read_json(&dir.join("config.json"))["task"]["data"]["training_pairs"].as_u64().unwrap();
    assert_eq!((held(&a), trained(&a)), (held(&b), trained(&b)), "same seed, same split");
    assert_eq!(held(&a) + trained(&a), 1000);
    assert_eq!(fs::read(a.join("model.safetensors")).unwrap(), fs::read(b.join("model.safetensors")).unwrap());
    assert_ne!(
        read_json(&a.join("config.json"))["task"]["data"]["fingerprint"],
        read_json(&c.join("config.json"))["task"]["data"]["fingerprint"]
    );
    // Disjoint: a duplicated pair lands on one side only, so the held-out pairs never occur in
    // training. Checked through --valid: the training file itself as validation overlaps fully.
    let (_, outcome) =
        train_pairs(home.path(), "self", &["--data", path_str(&data), "--valid", path_str(&data)], &fast);
    outcome.succeeded().stderr_has(&["of the 1,000 held-out pairs also occur in the training data"]);
    let valid = home.path().join("valid.tsv");
    write_pairs(&valid, &reversal_pairs(50, 99));
    let (v, outcome) =
        train_pairs(home.path(), "valid", &["--data", path_str(&data), "--valid", path_str(&valid)], &fast);
    outcome.succeeded();
    assert_eq!(held(&v), 50);
    assert_eq!(trained(&v), 1000);
    // The validation rows score at most the held-out pairs, and say so when asked for more.
    let more = ["--data", path_str(&data), "--valid", path_str(&valid), "--validation-samples", "80"];
    let (m, outcome) = train_pairs(home.path(), "more", &more, &fast);
    outcome
        .succeeded()
        .stderr_has(&["the validation rows score all 50 held-out samples, fewer than --validation-samples 80"]);
    run(&["info", "--model", path_str(&m)]).succeeded().stdout_has(&["validation rows on 50 samples"]);
    // A model evaluates on any file of pairs in its own token settings.
    let scored = run(&["evaluate", "--model", path_str(&v), "--data", path_str(&valid), "--json"]);
    assert_eq!(json_lines(&scored.stdout)[0]["samples"], 50);
    // Scoring pairs the model was trained on is allowed, and said: here the whole training file.
    let scored = run(&["evaluate", "--model", path_str(&a), "--data", path_str(&data)]);
    let trained_on = format!("note: {} of the 1,000 pairs scored are pairs this model was trained on", trained(&a));
    scored.succeeded().stderr_has(&[&trained_on]);
}

#[test]
fn a_stopped_run_on_file_data_resumes_to_the_same_weights_and_refuses_changed_data() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("pairs.tsv");
    write_pairs(&data, &reversal_pairs(1500, 5));
    // Twenty epochs: long enough (a second or two) that the stop lands mid-run on a busy machine.
    let run_args = ["--epochs", "20", "--encoder-units", "16", "--decoder-units", "16", "--device", "cpu"];
    let (whole, outcome) = train_pairs(home.path(), "whole", &["--data", path_str(&data)], &run_args);
    outcome.succeeded();
    let stopped = home.path().join("stopped");
    let mut args = vec!["train", "--quiet", "--out", path_str(&stopped), "--data", path_str(&data)];
    args.extend_from_slice(&run_args);
    args.extend_from_slice(&["--checkpoint-every", "300"]);
    let child = spawn(&args);
    wait_until("the first checkpoint", || stopped.join("training_state.safetensors").exists());
    send(&child, libc::SIGINT);
    let output = child.wait_with_output().expect("ends");
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    run(&["train", "--quiet", "--resume", path_str(&stopped)]).succeeded();
    assert_eq!(
        fs::read(whole.join("model.safetensors")).unwrap(),
        fs::read(stopped.join("model.safetensors")).unwrap()
    );

    // Changed data: the checkpoint does not continue on it.
    let copy = home.path().join("copy");
    let child = spawn(&[
        "train",
        "--quiet",
        "--out",
        path_str(&copy),
        "--data",
        path_str(&data),
        "--checkpoint-every",
        "300",
        "--epochs",
        "400",
        "--device",
        "cpu",
    ]);
    wait_until("the first checkpoint", || copy.join("training_state.safetensors").exists());
    send(&child, libc::SIGINT);
    let _ = child.wait_with_output();
    let mut file = fs::OpenOptions::new().append(true).open(&data).expect("open");
    file.write_all(b"gfh\thfg\nhhg\tghh\n").expect("append");
    run(&["train", "--resume", path_str(&copy)])
        .failed()
        .stderr_has(&["pairs.tsv changed since the model was trained"]);
}

#[test]
fn bad_data_is_refused_with_its_location_or_skipped_when_asked() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("bad.tsv");
    let mut text = Vec::new();
    for (source, target) in reversal_pairs(200, 6) {
        text.extend_from_slice(format!("{source}\t{target}\n").as_bytes());
    }
    text.extend_from_slice(b"no tab here\n\tempty source\nempty target\t\nbad \xff utf8\tx\nnul\0byte\tx\n");
    text.extend(std::iter::repeat_n(b'a', 1 << 20));
    text.extend_from_slice(b"\tlong\n");
    fs::write(&data, &text).expect("write");
    let out = home.path().join("never");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--quiet", "--out", path_str(&out), "--data", path_str(&data), "--epochs", "1"];
        args.extend_from_slice(&["--encoder-units", "8", "--decoder-units", "8"]);
        args.extend_from_slice(extra);
        run(&args)
    };
    train(&[]).failed().stderr_has(&[
        "6 of 206 lines of",
        "bad.tsv:201: no tab",
        "bad.tsv:202: the source is empty",
        "bad.tsv:203: the target is empty",
        "bad.tsv:204: not valid UTF-8 (byte 5)",
        "bad.tsv:205: a NUL byte at byte 4",
        "bad.tsv:206: longer than 1048576 bytes",
        "--skip-bad-lines",
    ]);
    assert!(!out.exists(), "nothing is made from refused data");
    train(&["--skip-bad-lines"]).succeeded().stderr_has(&["skipped 6 bad lines of 206 lines"]);
    assert_holds_exactly_a_model(&out);
    // evaluate applies the same rule.
    run(&["evaluate", "--model", path_str(&out), "--data", path_str(&data)]).failed().stderr_has(&["bad.tsv:201"]);
    run(&["evaluate", "--model", path_str(&out), "--data", path_str(&data), "--skip-bad-lines"]).succeeded();

    let empty = home.path().join("empty.tsv");
    fs::write(&empty, "").expect("write");
    let only_bad = home.path().join("only-bad.tsv");
    fs::write(&only_bad, "a\nb\n").expect("write");
    let missing = home.path().join("missing.tsv");
    // A FIFO nobody writes to would never end: it is refused at once, as are devices.
    let fifo = home.path().join("fifo.tsv");
    mkfifo(&fifo);
    for (path, message) in [
        (path_str(&missing), "missing.tsv does not exist"),
        (path_str(&fifo), "is a FIFO"),
        (path_str(home.path()), "is a directory"),
        (path_str(&empty), "empty.tsv is empty"),
        ("/dev/zero", "is a character device"),
    ] {
        let out = home.path().join("refused");
        run(&["train", "--quiet", "--out", path_str(&out), "--data", path]).failed().stderr_has(&[message]);
    }
    let out2 = home.path().join("refused2");
    run(&["train", "--quiet", "--out", path_str(&out2), "--data", path_str(&only_bad), "--skip-bad-lines"])
        .failed()
        .stderr_has(&["holds no good pair"]);
    // Flags that do not fit.
    run(&["train", "--data", path_str(&data), "--samples", "100"])
        .failed()
        .stderr_has(&["an epoch is every training pair"]);
    run(&["train", "--min-count", "2"]).failed().stderr_has(&["--min-count applies to your own pairs"]);
    run(&["train", "--data", path_str(&data), "--eval-samples", "5"]).failed().stderr_has(&["every held-out pair"]);
    run(&["train", "--data", path_str(&data), "--ops", "+-"])
        .failed()
        .stderr_has(&["--ops describes a generated problem"]);
    run(&["train", "--data", path_str(&data), "--valid-fraction", "1.5", "--skip-bad-lines"])
        .failed()
        .stderr_has(&["--valid-fraction must be above 0 and below 1", "--valid FILE"]);
    // A share to hold out means nothing beside a held-out file: refused rather than ignored.
    run(&["train", "--data", path_str(&data), "--valid", path_str(&data), "--valid-fraction", "0.1"])
        .failed_usage()
        .stderr_has(&["--valid-fraction", "cannot be used with", "--valid"]);
    run(&["evaluate", "--model", path_str(&shared_model().dir), "--data", path_str(&data)])
        .failed()
        .stderr_has(&["--data scores a model of your own pairs"]);
}

#[test]
fn an_autoencoder_trains_on_a_file_of_sequences_of_one_length() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("windows.csv");
    let mut state = 7u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let lines: Vec<String> = (0..1500)
        .map(|_| {
            let (start, slope) = (next(), 0.1 * next());
            (0..6).map(|step| format!("{:.4}", start + slope * step as f64)).collect::<Vec<_>>().join(",")
        })
        .collect();
    fs::write(&data, lines.join("\n") + "\n").expect("write");
    let dir = home.path().join("model");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--quiet", "--task", "autoencoder", "--data", path_str(&data), "--out"];
        args.push(path_str(&dir));
        args.extend_from_slice(&["--epochs", "2", "--encoder-units", "16", "--decoder-units", "16"]);
        args.extend_from_slice(extra);
        run(&args)
    };
    let trained = train(&[]);
    trained.succeeded();
    assert!(trained.stdout.contains("held-out sequences: mean squared error"), "{trained}");
    let config = read_json(&dir.join("config.json"));
    assert_eq!((config["input_len"].as_u64(), config["task"]["kind"].as_str()), (Some(6), Some("autoencoder")));
    let held = config["metrics"]["samples"].as_u64().expect("samples");
    assert_eq!(held + config["task"]["data"]["training_sequences"].as_u64().unwrap(), 1500);
    let scored = run(&["evaluate", "--model", path_str(&dir), "--json"]);
    assert_eq!(json_lines(&scored.stdout)[0]["samples"].as_u64(), Some(held));
    let whole = run(&["evaluate", "--model", path_str(&dir), "--data", path_str(&data), "--json"]);
    assert_eq!(json_lines(&whole.stdout)[0]["samples"], 1500);
    let reconstruction = run(&["predict", "--model", path_str(&dir), "0.1,0.2,0.3,0.4,0.5,0.6"]);
    assert_eq!(reconstruction.stdout_lines()[0].split(',').count(), 6);
    // Sequences of another length are bad lines: refused, or left out when asked.
    let mut text = fs::read_to_string(&data).expect("read");
    text.push_str("0.1,0.2\n");
    fs::write(&data, text).expect("write");
    train(&["--overwrite"]).failed().stderr_has(&["windows.csv:1501: 2 values, but the sequences have 6"]);
    train(&["--overwrite", "--skip-bad-lines"]).succeeded().stderr_has(&["skipped 1 bad line of 1,501 lines"]);
    train(&["--overwrite", "--min-count", "2"]).failed().stderr_has(&["--min-count applies to pairs of tokens"]);
}
