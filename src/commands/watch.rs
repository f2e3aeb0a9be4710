//! What watches a training run's validation rows: `--patience` to stop it early, and
//! `--restore-best` to keep the weights of its best row.

use std::path::Path;

use anyhow::{Result, bail};
use tch::nn;

use crate::store::checkpoint::BestWeights;
use crate::store::metrics_log::MetricsRow;
use crate::train::TrainConfig;
use crate::train::patience::Patience;

/// The validation losses of a run's rows, watched as its settings ask.
pub struct ValidationWatch {
    rows: Patience,
    /// With `--restore-best`: the best row's weights so far.
    best: Option<BestWeights>,
    keep_best: bool,
}

impl ValidationWatch {
    /// The watch of a run whose log `metrics_path` holds `logged` rows so far (none for a fresh
    /// run; a resumed one's, what its checkpoint kept); `None` where `training` asks for none. A
    /// resumed run takes up those rows and the best weights its checkpoint holds, which must be
    /// those of the log's best row.
    pub fn start(
        training: &TrainConfig,
        logged: &[MetricsRow],
        metrics_path: &Path,
        best: Option<BestWeights>,
    ) -> Result<Option<Self>> {
        if training.patience.is_none() && !training.restore_best {
            return Ok(None);
        }
        // Without --patience the watch never stops a run.
        let patience = training.patience.unwrap_or(usize::MAX);
        let rows = Patience::after_rows(patience, logged.iter().map(|row| (row.samples_seen, row.validation_loss)));
        let watch = Self { rows, best, keep_best: training.restore_best };
        let (logged, kept) = (watch.rows.best().map(|(_, at)| at), watch.best.as_ref().map(|b| b.samples_seen));
        if watch.keep_best && logged != kept {
            let at = |samples: Option<u64>| samples.map_or("none".to_owned(), |at| format!("after {at} samples"));
            bail!(
                "{}'s best validation row ({}) is not the one whose weights the checkpoint keeps ({}): the log lost \
                 rows that the checkpoint saw, so --restore-best cannot go on from it; train afresh (the directory's \
                 model.safetensors holds the checkpoint's latest weights)",
                metrics_path.display(),
                at(logged),
                at(kept),
            );
        }
        Ok(Some(watch))
    }

    /// Takes in a row just logged, with `vs` the weights it scored; `true` when the run should stop.
    pub fn observe(&mut self, row: &MetricsRow, vs: &nn::VarStore) -> bool {
        let before = self.rows.best();
        let stop = self.rows.observe(row.samples_seen, row.validation_loss);
        if self.keep_best && self.rows.best() != before {
            self.best = Some(BestWeights::of(vs, row.samples_seen));
        }
        stop
    }

    /// The closing line of a run this watch stopped after `samples` of `total`.
    pub fn stop_line(&self, samples: usize, total: usize) -> String {
        let (loss, at) = self.rows.best().unwrap_or((f64::NAN, 0));
        let rows = self.rows.patience();
        format!(
            "Stopped early after {samples} of {total} samples: the validation loss has not improved on {loss:.4} \
             (after {at} samples) for {rows} row{} (--patience)",
            if rows == 1 { "" } else { "s" }
        )
    }

    /// The best row's weights, for a checkpoint.
    pub fn best_weights(&self) -> Option<&BestWeights> {
        self.best.as_ref()
    }

    /// With `--restore-best`, puts the best row's weights into `vs`; returns that row's
    /// validation loss and samples seen.
    pub fn restore_best(&self, vs: &nn::VarStore) -> Result<Option<(f64, u64)>> {
        match (&self.best, self.rows.best()) {
            (Some(best), Some(row)) if self.keep_best => {
                best.restore_into(vs)?;
                Ok(Some(row))
            }
            _ => Ok(None),
        }
    }
}
