//! The runtime boundary: the only module that touches glommio.
//!
//! glommio is lightly maintained, so everything that depends on its executor, sockets and
//! channels lives here behind a few small types: [`Executor`] (one pinned thread per core),
//! [`net`] (listeners made with socket2 and the connection type), [`poller`] (socket readiness
//! through one epoll set while the core is busy), [`mesh`] (bounded cross-core
//! request/reply channels that cannot deadlock), and a handful of task helpers. The rest of the
//! crate is plain async Rust and `Rc`/`RefCell` state owned by one core.

pub mod mesh;
pub mod net;
mod poller;

pub use poller::DEFAULT_IDLE_POLL;

use std::future::Future;
use std::time::Duration;

use glommio::{GlommioError, Latency, LocalExecutorBuilder, Placement, ReactorErrorKind, Shares};

/// Why an executor could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "the memlock limit is too low for io_uring: raise it to at least 512 KiB with \
         `ulimit -l 512` (or LimitMEMLOCK= in a systemd unit)"
    )]
    MemlockTooLow { source: std::io::Error },
    #[error(
        "could not start an io_uring executor on CPU {cpu} (percore needs Linux 5.8 or later \
         with io_uring enabled: sysctl kernel.io_uring_disabled=0, and containers may block \
         io_uring in their seccomp profile)"
    )]
    Start { cpu: usize, source: std::io::Error },
    #[error("cannot start a thread for CPU {cpu}")]
    Thread { cpu: usize, source: std::io::Error },
    #[error("the executor on CPU {cpu} panicked: {message}")]
    Panicked { cpu: usize, message: String },
}

/// The text a panic was raised with, when it was raised with text.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => (*s).to_owned(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_owned(),
    }
}

fn runtime_error<T>(cpu: usize, err: GlommioError<T>) -> RuntimeError {
    let text = err.to_string();
    let source = std::io::Error::other(text.clone());
    // glommio reports the memlock limit inside an I/O error, so it is recognised by its text.
    if matches!(
        err,
        GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(..))
    ) || text.contains("MemLockLimit")
    {
        RuntimeError::MemlockTooLow { source }
    } else {
        RuntimeError::Start { cpu, source }
    }
}

/// A thread running one glommio executor pinned to one CPU.
pub struct Executor<T: Send + 'static> {
    cpu: usize,
    handle: std::thread::JoinHandle<Result<T, RuntimeError>>,
}

/// Memory glommio registers with io_uring per executor. percore does no file I/O, so the
/// default 10 MiB of registered buffers would only count against RLIMIT_MEMLOCK and RSS.
const IO_MEMORY: usize = 512 << 10;

/// glommio 0.9 can park an executor that still has runnable tasks when its preemption timer
/// fires before the scheduler ran anything (fixed upstream in glommio/glommio#53, not in any
/// crates.io release). The park then lasts until the next timer or I/O completion, forever if
/// there is none: we saw servers hang at start-up on a loaded machine. A timer that is always
/// pending bounds such a stall to this period; its cost is this many wake-ups per second of an
/// idle core, which is nothing.
const HEARTBEAT: Duration = Duration::from_millis(10);

async fn heartbeat() {
    loop {
        glommio::timer::sleep(HEARTBEAT).await;
    }
}

/// How often CPU-bound work in a [`BackgroundQueue`] gives glommio the core back: while such a
/// queue has work, glommio polls its rings (accepts, timers, waits it does) at least this often.
/// Sockets and channels that wait on the poller are looked at sooner, by the work itself
/// ([`yield_if_needed`]).
const BACKGROUND_LATENCY: Duration = Duration::from_millis(1);

impl<T: Send + 'static> Executor<T> {
    /// Starts an executor pinned to `cpu` that runs the future `make()` returns.
    pub fn start<F, Fut>(
        cpu: usize,
        name: &str,
        idle_poll: Option<Duration>,
        make: F,
    ) -> Result<Executor<T>, RuntimeError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        Self::start_watched(cpu, name, idle_poll, || {}, make)
    }

    /// [`Self::start`], and the thread calls `on_exit` as it ends, however it ends (its future
    /// returned, the executor could not start, a task panicked): so whoever waits for several
    /// executors learns at once that any one of them stopped, not when it gets to joining it.
    pub fn start_watched<F, Fut>(
        cpu: usize,
        name: &str,
        idle_poll: Option<Duration>,
        on_exit: impl FnOnce() + Send + 'static,
        make: F,
    ) -> Result<Executor<T>, RuntimeError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        // The thread is ours rather than glommio's (`LocalExecutorBuilder::make` on it is what
        // glommio's `spawn` does) so that the panic is caught where the notice can follow it.
        let builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(name)
            .io_memory(IO_MEMORY);
        let handle = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // A panic in any task of the executor unwinds out of `run`.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    let executor = builder.make().map_err(|e| runtime_error(cpu, e))?;
                    Ok(executor.run(async move {
                        // The poller exists before anything that could wait through it.
                        if let Some(window) = idle_poll {
                            if let Err(e) = poller::start(window) {
                                // Sockets and channels then wait through glommio alone.
                                tracing::error!("CPU {cpu}: cannot make its epoll set: {e}");
                            }
                        }
                        glommio::spawn_local(heartbeat()).detach();
                        make().await
                    }))
                }));
                on_exit();
                outcome.unwrap_or_else(|payload| {
                    Err(RuntimeError::Panicked {
                        cpu,
                        message: panic_message(&*payload),
                    })
                })
            })
            .map_err(|source| RuntimeError::Thread { cpu, source })?;
        Ok(Executor { cpu, handle })
    }

    /// The CPU the executor is pinned to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Waits for the executor's future to finish and returns its output.
    pub fn join(self) -> Result<T, RuntimeError> {
        let cpu = self.cpu;
        match self.handle.join() {
            Ok(result) => result,
            // Only a panic outside the executor's run, which catches its own, gets here.
            Err(payload) => Err(RuntimeError::Panicked {
                cpu,
                message: panic_message(&*payload),
            }),
        }
    }
}

/// Runs `fut` to completion on an unpinned executor on the calling thread (tests, tools).
///
/// Panics if no io_uring executor can be made here: it is for tests and tools, which cannot do
/// anything useful without one.
pub fn block_on<T>(fut: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(IO_MEMORY)
        .make()
        .unwrap_or_else(|e| panic!("cannot start an io_uring executor: {e}"))
        .run(async move {
            glommio::spawn_local(heartbeat()).detach();
            fut.await
        })
}

/// Runs a task on the current core in the background, until it finishes.
pub fn spawn<T: 'static>(fut: impl Future<Output = T> + 'static) {
    glommio::spawn_local(fut).detach();
}

/// A handle to a running background task; dropping it does not cancel the task.
pub struct JoinHandle<T>(glommio::Task<T>);

impl<T: 'static> JoinHandle<T> {
    pub async fn join(self) -> T {
        self.0.await
    }
}

/// Runs a task on the current core and returns a handle to wait for its output.
pub fn spawn_joinable<T: 'static>(fut: impl Future<Output = T> + 'static) -> JoinHandle<T> {
    JoinHandle(glommio::spawn_local(fut))
}

/// A low-priority task queue for CPU-bound work, so it cannot starve network tasks.
#[derive(Clone, Copy)]
pub struct BackgroundQueue(glommio::TaskQueueHandle);

impl BackgroundQueue {
    /// Network tasks run in the default queue with 1000 shares; this one gets `shares`.
    pub fn new(name: &str, shares: usize) -> Self {
        BackgroundQueue(glommio::executor().create_task_queue(
            Shares::Static(shares),
            Latency::Matters(BACKGROUND_LATENCY),
            name,
        ))
    }

    /// Runs a task in this queue in the background. While it runs or is runnable, the core's
    /// poller leaves the core to it, and the task's [`yield_if_needed`] calls look for network
    /// work instead.
    pub fn spawn<T: 'static>(&self, fut: impl Future<Output = T> + 'static) {
        match glommio::spawn_local_into(poller::Background::new(fut), self.0) {
            Ok(task) => {
                task.detach();
            }
            // The queue was created on this executor and is never removed.
            Err(e) => tracing::error!("cannot spawn into the background queue: {e}"),
        }
    }
}

/// Sleeps for `duration` on the current executor.
pub async fn sleep(duration: Duration) {
    poller::expect_timer(duration);
    glommio::timer::sleep(duration).await
}

/// For CPU-bound work in a [`BackgroundQueue`], every few microseconds of it: yields its task
/// queue if glommio wants the core back, or if the network has work (looked for at most every
/// [`poller::BACKGROUND_SLICE`]), so that a request arriving meanwhile waits about that long
/// rather than the queue's whole time slice.
pub async fn yield_if_needed() {
    match poller::background_should_yield() {
        Some(true) => glommio::executor().yield_task_queue_now().await,
        Some(false) => {}
        // No poller: glommio's own check, which also works off an executor.
        None => glommio::yield_if_needed().await,
    }
}
