//! Where spec-supplied CEL runs: off the async workers, on at most a few blocking
//! threads at once, each evaluation within a wall-clock budget.
//!
//! The admission estimate (`domain::incident::cost`) bounds what an expression may cost
//! over a body of the allowed size; this is the run-time half. An async worker also
//! serves `/healthz`, `/readyz` and every other integration's deliveries, so a
//! mapping that takes a second there stalls them all. Here it takes a permit (never more
//! than [`Evaluator::workers`] evaluations run at once, so CPU is left for the rest),
//! runs on tokio's blocking pool, and is stopped at its next loop step once its budget
//! is spent: the waiting request is answered then, and the thread frees its permit
//! within one iteration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::domain::incident::cost::Interrupt;

/// Wall-clock time one delivery's mapping may take, waiting for a permit included.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(250);

/// Evaluations at once by default: half the cores (at least one), so that CEL never
/// holds every core the async workers need.
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get() / 2)
        .unwrap_or(1)
        .max(1)
}

/// Why an evaluation gave no result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalRefusal {
    /// It ran past its budget and was interrupted.
    BudgetExceeded,
    /// No permit came free within the budget (other evaluations hold them all).
    Busy,
}

/// The bounded pool of CEL evaluations.
#[derive(Debug)]
pub struct Evaluator {
    permits: Arc<Semaphore>,
    workers: usize,
    budget: Duration,
}

impl Default for Evaluator {
    fn default() -> Self {
        Evaluator::new(default_workers(), DEFAULT_BUDGET)
    }
}

impl Evaluator {
    pub fn new(workers: usize, budget: Duration) -> Evaluator {
        let workers = workers.max(1);
        Evaluator {
            permits: Arc::new(Semaphore::new(workers)),
            workers,
            budget,
        }
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// Runs `evaluate` on a blocking thread once a permit is free. Past the budget the
    /// interrupt is raised and [`EvalRefusal::BudgetExceeded`] returned at once; the
    /// thread keeps its permit until `evaluate` returns (at its next loop step).
    pub async fn run<T, F>(&self, evaluate: F) -> Result<T, EvalRefusal>
    where
        T: Send + 'static,
        F: FnOnce(&Interrupt) -> T + Send + 'static,
    {
        let deadline = Instant::now() + self.budget;
        let permit = tokio::time::timeout_at(deadline.into(), self.permits.clone().acquire_owned())
            .await
            .map_err(|_| EvalRefusal::Busy)?
            .map_err(|_| EvalRefusal::Busy)?;
        let interrupt = Interrupt::new();
        let watched = interrupt.clone();
        let task = tokio::task::spawn_blocking(move || {
            let result = evaluate(&watched);
            drop(permit);
            result
        });
        match tokio::time::timeout_at(deadline.into(), task).await {
            Ok(Ok(result)) => Ok(result),
            // The evaluation panicked (a bug in the interpreter): treated as an
            // evaluation that could not finish, not as a crash of the request.
            Ok(Err(_)) => Err(EvalRefusal::BudgetExceeded),
            Err(_) => {
                interrupt.raise();
                Err(EvalRefusal::BudgetExceeded)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_evaluation_past_its_budget_is_interrupted_and_frees_its_permit() {
        let evaluator = Evaluator::new(1, Duration::from_millis(50));
        let started = Instant::now();
        let spin = evaluator
            .run(|interrupt: &Interrupt| {
                while !interrupt.is_raised() {
                    std::hint::spin_loop();
                }
            })
            .await;
        assert_eq!(spin, Err(EvalRefusal::BudgetExceeded));
        assert!(started.elapsed() < Duration::from_millis(500));
        // The interrupted thread gave its permit back: the next one runs.
        assert_eq!(evaluator.run(|_: &Interrupt| 7).await, Ok(7));
    }

    #[tokio::test]
    async fn no_more_than_the_workers_run_at_once() {
        let evaluator = Arc::new(Evaluator::new(1, Duration::from_millis(100)));
        let busy = evaluator.clone();
        let holder = tokio::spawn(async move {
            busy.run(|i: &Interrupt| {
                while !i.is_raised() {
                    std::hint::spin_loop();
                }
                // A slow stop: the permit stays held past the second caller's budget.
                std::thread::sleep(Duration::from_millis(150));
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The one permit is held for the rest of this budget: the second waits, then
        // gives up.
        assert_eq!(
            evaluator.run(|_: &Interrupt| ()).await,
            Err(EvalRefusal::Busy)
        );
        assert_eq!(
            holder.await.expect("joined"),
            Err(EvalRefusal::BudgetExceeded)
        );
    }
}
