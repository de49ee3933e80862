//! Strategy arithmetic: which targets go in which batch.

use std::ops::Range;
use std::time::Duration;

use crate::spec::RolloutStrategy;

/// One batch: a range of target positions, and for canary steps how long to watch them afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Batch {
    pub(super) targets: Range<usize>,
    pub(super) watch_for: Option<Duration>,
    /// For a canary step with `"pause": "until_promoted"`: its number (from 1); the rollout waits after it until the
    /// step is promoted.
    pub(super) gate: Option<u32>,
}

/// The batches of `strategy` over `total` targets, in order, covering every target exactly once.
pub(super) fn batches(strategy: &RolloutStrategy, total: usize) -> Vec<Batch> {
    if total == 0 {
        return Vec::new();
    }
    match strategy {
        RolloutStrategy::AllAtOnce => vec![Batch { targets: 0..total, watch_for: None, gate: None }],
        RolloutStrategy::Rolling { batch_size, .. } => {
            let size = batch_size.of_rounding_up(total).max(1);
            (0..total)
                .step_by(size)
                .map(|start| Batch { targets: start..(start + size).min(total), watch_for: None, gate: None })
                .collect()
        }
        RolloutStrategy::Canary { steps } => {
            let mut out = Vec::with_capacity(steps.len());
            let mut done = 0;
            for (n, step) in (1u32..).zip(steps) {
                let end = (total * usize::from(step.percent)).div_ceil(100).clamp(1, total);
                let gate = step.until_promoted.then_some(n);
                if end > done {
                    out.push(Batch { targets: done..end, watch_for: Some(step.verify_for.as_std()), gate });
                    done = end;
                } else if let Some(last) = out.last_mut().filter(|_| gate.is_some()) {
                    // A step that adds no target (few targets) still waits to be promoted, after the step before it.
                    last.gate = gate;
                }
            }
            if done < total {
                out.push(Batch { targets: done..total, watch_for: None, gate: None });
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use crate::spec::{CanaryStep, CountOrPercent};

    fn sizes(strategy: &RolloutStrategy, total: usize) -> Vec<usize> {
        let b = batches(strategy, total);
        let mut next = 0;
        for batch in &b {
            assert_eq!(batch.targets.start, next, "batches are contiguous");
            assert!(!batch.targets.is_empty(), "no empty batch");
            next = batch.targets.end;
        }
        assert_eq!(next, total, "every target is covered");
        b.iter().map(|b| b.targets.len()).collect()
    }

    fn rolling(c: CountOrPercent) -> RolloutStrategy {
        RolloutStrategy::Rolling { batch_size: c, pause: HumanDuration::ZERO }
    }

    fn canary(percents: &[u8]) -> RolloutStrategy {
        RolloutStrategy::Canary {
            steps: percents
                .iter()
                .map(|&p| CanaryStep { percent: p, verify_for: HumanDuration::from_secs(1), until_promoted: false })
                .collect(),
        }
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(sizes(&RolloutStrategy::AllAtOnce, 5), [5]);
        assert_eq!(sizes(&rolling(CountOrPercent::Count(2)), 5), [2, 2, 1]);
        assert_eq!(sizes(&rolling(CountOrPercent::Percent(25)), 4), [1, 1, 1, 1]);
        assert_eq!(sizes(&rolling(CountOrPercent::Percent(25)), 3), [1, 1, 1]);
        assert_eq!(sizes(&rolling(CountOrPercent::Percent(50)), 5), [3, 2]);
        assert_eq!(sizes(&rolling(CountOrPercent::Count(10)), 3), [3]);
        assert_eq!(sizes(&canary(&[10, 50, 100]), 10), [1, 4, 5]);
        assert_eq!(sizes(&canary(&[10, 50, 100]), 1), [1]);
        assert_eq!(sizes(&canary(&[1, 2, 100]), 3), [1, 2]);
        assert!(batches(&RolloutStrategy::AllAtOnce, 0).is_empty());
    }
}
