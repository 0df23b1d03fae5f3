//! Running a plan: one pinned executor per chosen CPU, each owning its share of the
//! connections, and the main thread, which prints the progress lines, writes the interval log
//! and merges the cores' results at the end.
//!
//! With --verify-keys each connection reads its keys back as soon as its own run is over (no
//! other connection sets them, so it need not wait for the others).
//!
//! Start-up is in two steps so that every core measures from the same instant: each core
//! connects its slots (and prefills its share of the keyspace), then all cores and the main
//! thread meet at a barrier, and the first one through it fixes the run's start time. Cores
//! share nothing while running; once a second each sends its interval over a bounded channel.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use percore::runtime::{self, Executor};

use crate::cli::{Plan, Stop};
use crate::conn::Slot;
use crate::context::CoreCtx;
use crate::progress::{CacheSecond, Progress};
use crate::schedule::Schedule;
use crate::stats::{first_tick, tick_time, Recorder, Tick};

/// Intervals the main thread may fall behind by before a core drops one (each is a few
/// histograms; the main thread normally takes them as they come).
const TICK_QUEUE: usize = 256;

/// The merged results of a run.
pub struct Outcome {
    pub total: Recorder,
    /// The measured time: --duration, or with --requests from measure start to the last reply.
    pub duration: Duration,
    /// Intervals dropped because the main thread fell behind.
    pub dropped_ticks: u64,
    /// The cache workload's lookups and hits per interval, warmup's included.
    pub cache_seconds: Vec<CacheSecond>,
}

pub fn run(plan: Plan) -> anyhow::Result<Outcome> {
    let cores = plan.cpus.len();
    let barrier = Arc::new(Barrier::new(cores + 1));
    let start_cell = Arc::new(OnceLock::new());
    let failed = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::sync_channel::<Tick>(TICK_QUEUE);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut executors = Vec::with_capacity(cores);
    let mut start_error = None;
    for (core, &cpu) in plan.cpus.iter().enumerate() {
        let (core_plan, core_barrier, core_start, core_failed, core_tx, core_dropped) = (
            plan.clone(),
            barrier.clone(),
            start_cell.clone(),
            failed.clone(),
            tx.clone(),
            dropped.clone(),
        );
        let idle_poll = Some(plan.idle_poll);
        let started = Executor::start(cpu, &format!("percore-load-{core}"), idle_poll, move || {
            core_main(
                core,
                core_plan,
                core_barrier,
                core_start,
                core_failed,
                core_tx,
                core_dropped,
            )
        });
        match started {
            Ok(executor) => executors.push(executor),
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                start_error.get_or_insert(anyhow::Error::from(e));
                // Stand in for the core that did not start, so the others get past the barrier.
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                });
            }
        }
    }
    drop(tx);
    barrier.wait();
    let start = *start_cell.get_or_init(Instant::now);

    let mut progress = Progress::new(&plan, start, cores)?;
    for tick in rx {
        progress.add(tick)?;
    }
    progress.finish()?;
    let cache_seconds = progress.take_cache_seconds();

    let mut total = Recorder::new();
    let mut first_error = start_error;
    for executor in executors {
        match executor.join() {
            Ok(Ok(recorder)) => total.merge(&recorder),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let measure_start = start + plan.warmup;
    let duration = match plan.stop {
        Stop::After(d) => d,
        Stop::Requests(_) => total
            .last_reply
            .map(|t| t.saturating_duration_since(measure_start))
            .unwrap_or_default()
            .max(Duration::from_micros(1)),
    };
    Ok(Outcome {
        total,
        duration,
        dropped_ticks: dropped.load(Ordering::Relaxed),
        cache_seconds,
    })
}

/// What a core that cannot run reports when another core's failure is the real cause.
const OTHER_CORE_FAILED: &str = "another core failed to start";

async fn core_main(
    core: usize,
    plan: Plan,
    barrier: Arc<Barrier>,
    start_cell: Arc<OnceLock<Instant>>,
    failed: Arc<AtomicBool>,
    tx: SyncSender<Tick>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<Recorder> {
    let cores = plan.cpus.len();
    let plan = Rc::new(plan);
    let ctx = Rc::new(CoreCtx::new(plan.clone(), core));

    // Connect this core's slots and prefill their share of the keyspace, all at once.
    let prefill = plan.prefill;
    let setups: Vec<_> = (core..plan.connections)
        .step_by(cores)
        .map(|index| {
            let ctx = ctx.clone();
            runtime::spawn_joinable(async move {
                let mut slot = Slot::connect(index, ctx).await?;
                if prefill {
                    slot.prefill(index).await;
                }
                Ok::<_, anyhow::Error>((index, slot))
            })
        })
        .collect();
    let mut slots = Vec::with_capacity(setups.len());
    let mut error = None;
    for setup in setups {
        match setup.join().await {
            Ok(slot) => slots.push(slot),
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
    if error.is_some() {
        failed.store(true, Ordering::SeqCst);
    }
    // Blocking is fine here: nothing else runs on this core until the run starts.
    barrier.wait();
    if let Some(e) = error {
        return Err(e);
    }
    if failed.load(Ordering::SeqCst) {
        return Err(anyhow!(OTHER_CORE_FAILED));
    }
    let start = *start_cell.get_or_init(Instant::now);
    let measure_start = start + plan.warmup;

    let done = Rc::new(Cell::new(false));
    let next_tick = Rc::new(Cell::new(first_tick(plan.warmup)));
    let tx = Rc::new(RefCell::new(Some(tx)));
    let send_tick = {
        let (ctx, tx, dropped) = (ctx.clone(), tx.clone(), dropped.clone());
        move |index: i64, end: Instant| {
            let (latency, counts) = ctx.recorder.borrow_mut().take_interval();
            if let Some(tx) = &*tx.borrow() {
                let tick = Tick {
                    index,
                    end,
                    latency,
                    counts,
                };
                // A full queue means the main thread is far behind: drop the interval (it
                // only feeds the progress line and the interval log) rather than block.
                if let Err(TrySendError::Full(_)) = tx.try_send(tick) {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    {
        let (done, next_tick, send_tick) = (done.clone(), next_tick.clone(), send_tick.clone());
        runtime::spawn(async move {
            loop {
                let index = next_tick.get();
                let at = tick_time(measure_start, index);
                runtime::sleep(at.saturating_duration_since(Instant::now())).await;
                if done.get() {
                    return;
                }
                next_tick.set(index + 1);
                send_tick(index, at);
            }
        });
    }

    let verify = plan.verify_keys;
    let runs: Vec<_> = slots
        .into_iter()
        .map(|(index, mut slot)| {
            let schedule = Schedule::for_run(&plan, index, start);
            runtime::spawn_joinable(async move {
                slot.run(schedule).await;
                if verify {
                    slot.verify().await;
                }
            })
        })
        .collect();
    for run in runs {
        run.join().await;
    }
    done.set(true);
    send_tick(next_tick.get(), Instant::now());
    // Closing the channel tells the main thread this core is done.
    tx.borrow_mut().take();
    let recorder = std::mem::take(&mut *ctx.recorder.borrow_mut());
    Ok(recorder)
}
