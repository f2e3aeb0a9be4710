//! Early stopping on the validation loss of `metrics.csv` (Keras's
//! `EarlyStopping(monitor="val_loss", patience=N)`): a run stops once N validation rows in a row
//! have not improved on the best before them. The state is a function of the log's rows alone,
//! so that a resumed run rebuilds it from the rows its checkpoint kept and stops where an
//! uninterrupted run would.

/// Watches the validation losses of a run's reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Patience {
    patience: usize,
    /// The lowest validation loss so far, and the samples seen at its row.
    best: Option<(f64, u64)>,
    /// Validation rows since the best one.
    rows_since_best: usize,
}

impl Patience {
    pub fn new(patience: usize) -> Self {
        Self { patience, best: None, rows_since_best: 0 }
    }

    /// The state after `rows` (samples seen, validation loss), the rows a resumed run's log kept.
    pub fn after_rows(patience: usize, rows: impl IntoIterator<Item = (u64, Option<f64>)>) -> Self {
        let mut watch = Self::new(patience);
        for (samples_seen, validation_loss) in rows {
            watch.observe(samples_seen, validation_loss);
        }
        watch
    }

    /// The lowest validation loss so far, and the samples seen at its row.
    pub fn best(&self) -> Option<(f64, u64)> {
        self.best
    }

    /// Validation rows without a new best that stop a run.
    pub fn patience(&self) -> usize {
        self.patience
    }

    /// Takes in one report's row (samples seen, validation loss); `true` when the run should stop
    /// here. A row without a validation loss (cut short by a stop signal) counts neither way; a
    /// loss that is not a number never improves, and no run stops before it has a best row.
    pub fn observe(&mut self, samples_seen: u64, validation_loss: Option<f64>) -> bool {
        let Some(loss) = validation_loss else { return false };
        let improved = match self.best {
            Some((best, _)) => loss < best,
            None => !loss.is_nan(),
        };
        if improved {
            self.best = Some((loss, samples_seen));
            self.rows_since_best = 0;
        } else {
            self.rows_since_best += 1;
        }
        self.best.is_some() && self.rows_since_best >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The row index at which `losses` stop a run of `patience`, if any, and the best row then
    /// (loss, samples seen; row `i` is after `100 * (i + 1)` samples).
    fn stops_at(patience: usize, losses: &[Option<f64>]) -> Option<(usize, (f64, u64))> {
        let mut watch = Patience::new(patience);
        let index =
            losses.iter().enumerate().position(|(index, &loss)| watch.observe(100 * (index as u64 + 1), loss))?;
        Some((index, watch.best().expect("a run stops at a best row")))
    }

    #[test]
    fn stops_after_patience_rows_without_a_new_best() {
        let losses = [Some(3.0), Some(2.0), Some(2.5), Some(2.0), Some(1.5), Some(1.6), Some(1.7)];
        let stop = |patience| stops_at(patience, &losses).map(|(index, (_, best_at))| (index, best_at));
        assert_eq!(stop(1), Some((2, 200)), "2.5 is no improvement on 2.0");
        assert_eq!(stop(2), Some((3, 200)), "nor is an equal loss");
        assert_eq!(stop(3), None, "1.5 is a new best; two rows after it are not three");
        assert_eq!(stops_at(2, &losses), Some((3, (2.0, 200))));
    }

    #[test]
    fn rows_without_validation_count_neither_way_and_nan_never_improves() {
        assert_eq!(stops_at(1, &[Some(2.0), None, Some(1.0), None]), None);
        assert_eq!(stops_at(2, &[Some(2.0), Some(f64::NAN), None, Some(f64::NAN)]).map(|(index, _)| index), Some(3));
        assert_eq!(stops_at(1, &[Some(f64::NAN), Some(f64::NAN)]), None, "no best to stop at yet");
    }

    #[test]
    fn a_resumed_run_rebuilds_the_state_from_its_rows() {
        let rows = [(100, Some(3.0)), (200, Some(2.0)), (300, Some(2.5))];
        let mut whole = Patience::new(3);
        rows.iter().for_each(|&(samples, loss)| assert!(!whole.observe(samples, loss)));
        assert_eq!(Patience::after_rows(3, rows), whole);
    }
}
