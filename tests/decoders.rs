//! The decoders that read what they wrote, through the real binary: training with feedback and
//! attention (and a bidirectional encoder), beam search and n-best lists, everything the
//! reference's decoder does (checkpoints, Ctrl-C and resume bit for bit, determinism across
//! threads, evaluate, encode, plot), and the errors of asking a decoder for what it cannot do.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use tempfile::TempDir;

/// A small attention model with every variant switched on: two threads, two layers with
/// dropout (so that the shares' masks must come from their seeds), a backward encoder, two
/// heads of attention and answers written backwards.
const ATTENTION_RUN: &[&str] = &[
    "train",
    "--quiet",
    "--decoder",
    "attention",
    "--bidirectional",
    "--reverse-output",
    "--encoder-units",
    "24",
    "--decoder-units",
    "20",
    "--encoder-layers",
    "2",
    "--decoder-layers",
    "2",
    "--attention-heads",
    "2",
    "--dropout",
    "0.1",
    "--samples",
    "9600",
    "--eval-samples",
    "500",
    "--seed",
    "4",
];

fn attention_run(threads: &str, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--threads", threads].iter().map(|s| s.to_string()).collect();
    args.extend(ATTENTION_RUN.iter().map(|s| s.to_string()));
    args.extend(["--out".to_owned(), path_str(dir).to_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn weights(dir: &Path) -> Vec<u8> {
    fs::read(dir.join("model.safetensors")).expect("model.safetensors")
}

#[test]
fn an_attention_model_trains_deterministically_and_resumes_bit_for_bit() {
    let home = TempDir::new().expect("temp dir");
    let first = home.path().join("first");
    let args = attention_run("2", &first, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&args).succeeded();
    let again = home.path().join("again");
    let args = attention_run("2", &again, &[]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).succeeded();
    assert!(weights(&first) == weights(&again), "the same seed and threads give the same weights");

    let config = read_json(&first.join("config.json"));
    assert_eq!(config["model"]["decoder"], "attention");
    assert_eq!(config["model"]["bidirectional"], true);
    assert_eq!(config["model"]["attention_heads"], 2);

    let interrupted = home.path().join("interrupted");
    let args = attention_run("2", &interrupted, &["--checkpoint-every", "1600"]);
    let child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until("the first checkpoint", || interrupted.join("training_state.safetensors").exists());
    send(&child, libc::SIGINT);
    let output = child.wait_with_output().expect("the run ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A short run may finish before the signal arrives; either way the weights must agree.
    if output.status.code() == Some(130) {
        assert!(stderr.contains("train --resume"), "{stderr}");
        run(&["--threads", "2", "train", "--quiet", "--resume", path_str(&interrupted)]).succeeded();
    } else {
        assert_eq!(output.status.code(), Some(0), "{stderr}");
    }
    assert!(weights(&interrupted) == weights(&first), "resumed weights differ from an uninterrupted run's");
}

#[test]
fn beam_search_lists_the_best_answers_with_their_log_probabilities() {
    let home = TempDir::new().expect("temp dir");
    let dir = home.path().join("attention");
    let args = attention_run("1", &dir, &[]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>()).succeeded();
    let model = path_str(&dir);

    let greedy = run(&["predict", "--model", model, "1+2+3", "10+9+8"]);
    greedy.succeeded();
    assert_eq!(greedy.stdout_lines().len(), 2);

    let listed = run(&["predict", "--model", model, "--beam", "4", "--n-best", "3", "1+2+3", "10+9+8"]);
    listed.succeeded();
    let lines = listed.stdout_lines();
    assert_eq!(lines.len(), 2 * 4, "each answer, then its 3 best: {lines:?}");
    for answer in lines.chunks(4) {
        let shown = answer[0].split(" = ").nth(1).and_then(|rest| rest.split(" (expect").next()).expect("an answer");
        let mut last = 0.0;
        let mut listed = std::collections::HashSet::new();
        for (rank, line) in answer[1..].iter().enumerate() {
            let (head, log_p) = line.rsplit_once("  (log p ").expect("a log-probability");
            // Answers that differ only where padding stands still read differently.
            assert!(listed.insert(head.split_once(". ").map(|(_, text)| text)), "listed twice: {answer:?}");
            assert!(head.starts_with(&format!("  {}. ", rank + 1)), "{line}");
            let (log_p, per_token) = log_p.trim_end_matches(')').split_once(", per token ").expect("both figures");
            let (log_p, per_token): (f64, f64) =
                (log_p.parse().expect("a number"), per_token.parse().expect("a number"));
            // The beam ranks by the log-probability per written token, the end marker included.
            assert!(log_p <= 0.0 && per_token >= log_p && (rank == 0 || per_token <= last + 1e-4), "{answer:?}");
            last = per_token;
            if rank == 0 {
                assert_eq!(head.trim_start_matches("  1. "), shown.trim_start(), "the best listed is the answer");
            }
        }
    }

    let json = run(&["predict", "--model", model, "--json", "--n-best", "2", "--verbose", "5+5+5"]);
    json.succeeded();
    let records = json_lines(&json.stdout);
    assert_eq!(records.len(), 1);
    let n_best = records[0]["n_best"].as_array().expect("an n_best list");
    assert_eq!(n_best.len(), 2);
    assert_eq!(n_best[0]["prediction"], records[0]["prediction"]);
    assert!(n_best.iter().all(|h| h["log_prob"].as_f64().is_some_and(|p| p <= 0.0)), "{n_best:?}");
    let per_token: Vec<f64> = n_best.iter().map(|h| h["log_prob_per_token"].as_f64().expect("a figure")).collect();
    assert!(per_token[0] >= per_token[1], "ranked by the log-probability per token: {n_best:?}");
    let probabilities = records[0]["probabilities"].as_array().expect("probabilities");
    assert_eq!(probabilities.len(), 2, "one per written character");

    // What works for the reference's decoder works here too.
    let evaluation = run(&["evaluate", "--model", model, "--samples", "300", "--errors", "2"]);
    evaluation.succeeded();
    assert!(evaluation.stdout.contains("sequence accuracy"), "{}", evaluation.stdout);
    let searched = run(&["evaluate", "--model", model, "--samples", "300", "--errors", "2", "--beam", "3"]);
    searched.succeeded();
    assert!(searched.stdout.contains("beam 3)") && searched.stdout.contains("most confident"), "{}", searched.stdout);
    let vectors = run(&["encode", "--model", model, "1+2+3"]);
    vectors.succeeded();
    assert_eq!(vectors.stdout.trim().split(',').count(), 48, "both encoder stacks' 24 units");
    run(&["plot", "--model", model]).succeeded();
    assert!(dir.join("learning_curve.png").exists());

    // What a decoder cannot do is refused with the reason.
    run(&["predict", "--model", model, "--beam", "2", "--n-best", "3", "1+2+3"])
        .failed()
        .stderr_has(&["--n-best 3 asks for more answers than --beam 2 keeps"]);
    run(&["predict", "--model", model, "--beam", "0", "1+2+3"]).failed_usage();
    let reference = &shared_model().dir;
    run(&["predict", "--model", path_str(reference), "--beam", "3", "1+2+3"])
        .failed()
        .stderr_has(&["decoder is repeat", "--decoder feedback or attention"]);
    run(&["evaluate", "--model", path_str(reference), "--beam", "3"]).failed().stderr_has(&["--beam searches"]);
    run(&["train", "--resume", model, "--decoder", "feedback"]).failed_usage();
    run(&["train", "--resume", model, "--attention-heads", "4"]).failed_usage();
    let out = home.path().join("refused");
    run(&[
        "train",
        "--decoder",
        "attention",
        "--decoder-units",
        "20",
        "--attention-heads",
        "3",
        "--out",
        path_str(&out),
    ])
    .failed()
    .stderr_has(&["attention heads must divide the decoder units", "20 decoder units, 3 heads"]);
    run(&["train", "--decoder", "feedback", "--attention-heads", "2", "--out", path_str(&out)])
        .failed()
        .stderr_has(&["attention heads (2) need the attention decoder"]);
    assert!(!out.exists(), "a refused run writes nothing");

    // A directory whose config.json no longer matches its weights names what is wrong.
    let damaged = home.path().join("damaged");
    copy_dir(&dir, &damaged);
    edit_config(&damaged, |config| config["model"]["decoder"] = "feedback".into());
    run(&["predict", "--model", path_str(&damaged), "1+2+3"])
        .failed()
        .stderr_has(&["config.json", "attention heads (2) need the attention decoder"]);
    edit_config(&damaged, |config| config["model"]["attention_heads"] = 1.into());
    run(&["predict", "--model", path_str(&damaged), "1+2+3"]).failed().stderr_has(&[
        "model.safetensors",
        "attention.",
        "does not have",
    ]);
    edit_config(&damaged, |config| {
        config["model"]["decoder"] = "attention".into();
        config["model"]["attention_heads"] = 1.into();
    });
    run(&["predict", "--model", path_str(&damaged), "1+2+3"]).failed().stderr_has(&["attention.combine.weight"]);
    edit_config(&damaged, |config| config["model"]["decoder"] = "sideways".into());
    run(&["predict", "--model", path_str(&damaged), "1+2+3"]).failed().stderr_has(&["unknown variant `sideways`"]);
}

/// On pairs, attention reads the source where it needs it: the same short budget that leaves
/// the reference's decoder far from reversing words teaches attention to reverse them.
#[test]
fn on_pairs_attention_learns_what_the_repeat_decoder_has_not_yet() {
    let home = TempDir::new().expect("temp dir");
    let data = home.path().join("reverse.tsv");
    write_pairs(&data, &reversal_pairs(3000, 2));
    let train = |dir: &Path, decoder: &str, units: &str, epochs: &str| {
        run(&[
            "--threads",
            "2",
            "train",
            "--quiet",
            "--data",
            path_str(&data),
            "--decoder",
            decoder,
            "--encoder-units",
            units,
            "--decoder-units",
            units,
            "--epochs",
            epochs,
            "--learning-rate",
            "0.01",
            "--out",
            path_str(dir),
        ])
        .succeeded();
    };
    let accuracy = |decoder: &str| {
        let dir = home.path().join(decoder);
        train(&dir, decoder, "32", "3");
        let evaluation = run(&["evaluate", "--model", path_str(&dir), "--json"]);
        evaluation.succeeded();
        let figures: serde_json::Value = serde_json::from_str(evaluation.stdout.trim()).expect("one JSON object");
        (dir, figures["sequence_accuracy"].as_f64().expect("accuracy"))
    };
    let (_, repeat) = accuracy("repeat");
    let (dir, attention) = accuracy("attention");
    assert!(attention >= 0.9, "attention reverses short words after 3 epochs: {attention}");
    assert!(attention > repeat + 0.2, "attention {attention} against repeat {repeat}");

    // Beam answers end at the end marker, as greedy ones do.
    let answers = run(&["predict", "--model", path_str(&dir), "--beam", "3", "--n-best", "2", "abcd", "hgfe\tefgh"]);
    answers.succeeded();
    let lines = answers.stdout_lines();
    assert_eq!(lines.len(), 6, "{lines:?}");
    assert_eq!(lines[0], "abcd\tdcba");
    assert!(lines[1].starts_with("  1. dcba  (log p "), "{lines:?}");
    assert_eq!(lines[3], "hgfe\tefgh\t(expect efgh: right)");

    // --verbose: the probability of each written token, then the end marker's; the same answers.
    let verbose = run(&["predict", "--model", path_str(&dir), "--verbose", "abcd", "hgfe\tefgh"]);
    verbose.succeeded();
    let lines = verbose.stdout_lines();
    assert!(lines[0].starts_with("abcd\tdcba\t[\"d\" ") && lines[0].contains(", end "), "{lines:?}");
    assert_eq!(lines[0].matches(", ").count(), 4, "four tokens and the end marker: {lines:?}");
    assert!(lines[1].starts_with("hgfe\tefgh\t(expect efgh: right)\t[\"e\" "), "{lines:?}");
    for beam in ["1", "3"] {
        let json = run(&[
            "predict",
            "--model",
            path_str(&dir),
            "--verbose",
            "--json",
            "--beam",
            beam,
            "--n-best",
            "1",
            "abcd",
        ]);
        json.succeeded();
        let answer: serde_json::Value = serde_json::from_str(json.stdout.trim()).expect("one JSON object");
        let probabilities: Vec<f64> =
            answer["probabilities"].as_array().expect("a list").iter().filter_map(serde_json::Value::as_f64).collect();
        assert_eq!(probabilities.len(), 5, "{answer}");
        assert!(probabilities.iter().all(|p| *p > 0.0 && *p <= 1.0), "{answer}");
        let log_prob = answer["n_best"][0]["log_prob"].as_f64().expect("the answer's log-probability");
        let summed: f64 = probabilities.iter().map(|p| p.ln()).sum();
        assert!((summed - log_prob).abs() < 1e-9, "the tokens' probabilities make the answer's: {answer}");
    }

    // evaluate --beam scores the answers predict --beam writes: the same pairs are wrong (of a
    // model trained too little to be always right).
    let fresh = home.path().join("fresh.tsv");
    write_pairs(&fresh, &reversal_pairs(400, 9));
    let dir = home.path().join("early");
    train(&dir, "attention", "16", "1");
    let scored = |beam: &str| {
        let evaluation = run(&[
            "evaluate",
            "--model",
            path_str(&dir),
            "--data",
            path_str(&fresh),
            "--beam",
            beam,
            "--errors",
            "1000",
            "--json",
        ]);
        evaluation.succeeded();
        serde_json::from_str::<serde_json::Value>(evaluation.stdout.trim()).expect("one JSON object")
    };
    let plain = run(&["evaluate", "--model", path_str(&dir), "--data", path_str(&fresh), "--errors", "1000", "--json"]);
    plain.succeeded();
    assert_eq!(scored("1"), serde_json::from_str::<serde_json::Value>(plain.stdout.trim()).expect("JSON"));
    let searched = scored("3");
    let predicted = run(&["predict", "--model", path_str(&dir), "--beam", "3", "--file", path_str(&fresh)]);
    predicted.succeeded();
    let wrong: Vec<String> = predicted
        .stdout_lines()
        .iter()
        .filter(|line| line.ends_with(": wrong)"))
        .map(|line| line.split('\t').take(2).collect::<Vec<_>>().join("\t"))
        .collect();
    assert_eq!(searched["samples"], 400);
    assert_eq!(searched["wrong"].as_u64(), Some(wrong.len() as u64), "{searched}");
    let accuracy = searched["sequence_accuracy"].as_f64().expect("accuracy");
    assert!((accuracy - (1.0 - wrong.len() as f64 / 400.0)).abs() < 1e-12, "{accuracy}");
    let mut listed: Vec<String> = searched["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| format!("{}\t{}", e["input"].as_str().unwrap_or(""), e["prediction"].as_str().unwrap_or("")))
        .collect();
    assert!(wrong.len() > 20, "enough mistakes to compare: {}", wrong.len());
    let mut wrong = wrong;
    listed.sort();
    wrong.sort();
    assert_eq!(listed, wrong, "the beam's wrong answers, as predict writes them");
}

#[test]
fn a_feedback_autoencoder_reads_its_previous_value() {
    let home = TempDir::new().expect("temp dir");
    let dir = home.path().join("autoencoder");
    run(&[
        "train",
        "--quiet",
        "--task",
        "autoencoder",
        "--decoder",
        "feedback",
        "--samples",
        "3200",
        "--out",
        path_str(&dir),
    ])
    .succeeded();
    let answer = run(&["predict", "--model", path_str(&dir), "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"]);
    answer.succeeded();
    assert_eq!(answer.stdout.trim().split(',').count(), 9, "{}", answer.stdout);
    run(&["evaluate", "--model", path_str(&dir), "--samples", "200"]).succeeded();
    run(&["predict", "--model", path_str(&dir), "--beam", "2", "0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"])
        .failed()
        .stderr_has(&["a model of values writes no tokens"]);
}
