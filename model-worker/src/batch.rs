//! Dynamic batching: the bounded request queue, the pure batch-formation rule
//! [`next_batch`], and the model thread's loop that runs batches and answers requests.
//!
//! Requests (already tokenised on the HTTP side) enter through a [`Submitter`], bounded
//! by `--max-queue` requests. The loop owns the model on its own OS thread: it keeps a
//! FIFO of requests, asks [`next_batch`] which texts to run next, runs them, and answers
//! each request on its oneshot channel once all its texts are done. A big request can
//! span several batches; taking texts strictly in arrival order means no request starves.
//! The loop ticks the heartbeat counters at least every [`TICK`], idle or not.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use vitals_proto::LoopCounters;

use crate::config::BatchLimits;
use crate::metrics::Metrics;
use crate::model::{BatchCost, Embedder, ModelError};

/// The longest the loop goes without ticking its progress counter.
pub const TICK: Duration = Duration::from_millis(100);

/// Embeddings of one request, in input order, or why they could not be computed.
pub type JobResult = Result<Vec<Vec<f32>>, InferenceError>;

/// The model failed on a batch this request was part of.
#[derive(Debug, Clone, thiserror::Error)]
#[error("inference failed: {0}")]
pub struct InferenceError(#[source] pub Arc<ModelError>);

/// One request's texts in a queue, with how far the loop has got.
#[derive(Debug)]
pub struct Entry<P> {
    /// Token ids of each text.
    pub seqs: Vec<Vec<u32>>,
    /// Texts before this index are done.
    pub next: usize,
    /// When the request was submitted.
    pub enqueued: Instant,
    /// What the loop needs to answer (the reply channel and results so far).
    pub payload: P,
}

/// A slice of one queue entry's texts taken into a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Index of the entry in the queue.
    pub entry: usize,
    /// First text taken.
    pub start: usize,
    /// One past the last text taken.
    pub end: usize,
}

/// What the loop should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing queued.
    Idle,
    /// A batch is forming: wait this long for more work, then ask again.
    Wait(Duration),
    /// Run these texts now, in this order.
    Run(Vec<Take>),
}

/// Decides the next batch. Texts are taken in FIFO order (requests, then texts within a
/// request) until the batch holds `max_batch_size` texts or one more would make it count
/// more than `max_batch_tokens` as `cost` counts a batch (the sum of the texts' lengths
/// where the backend packs them, rows × longest text where it pads); the first text is
/// always taken, so an oversized text still runs, alone. A batch that is not full runs
/// only once its oldest request has waited `linger`, so requests arriving together share
/// a pass while a lone request waits at most `linger`.
pub fn next_batch<P>(
    queue: &VecDeque<Entry<P>>,
    limits: &BatchLimits,
    cost: BatchCost,
    now: Instant,
) -> Decision {
    let mut takes = Vec::new();
    let (mut rows, mut longest, mut total) = (0usize, 0usize, 0usize);
    let mut full = false;
    for (index, entry) in queue.iter().enumerate() {
        let start = entry.next;
        let mut end = start;
        while end < entry.seqs.len() {
            let len = entry.seqs[end].len().max(1);
            let (with_rows, with_longest, with_total) = (rows + 1, longest.max(len), total + len);
            if rows > 0
                && (with_rows > limits.max_batch_size
                    || cost.tokens(with_rows, with_longest, with_total) > limits.max_batch_tokens)
            {
                full = true;
                break;
            }
            (rows, longest, total) = (with_rows, with_longest, with_total);
            end += 1;
        }
        if end > start {
            takes.push(Take {
                entry: index,
                start,
                end,
            });
        }
        if full {
            break;
        }
    }
    if takes.is_empty() {
        return Decision::Idle;
    }
    if !full && rows < limits.max_batch_size {
        let oldest = queue.iter().map(|e| e.enqueued).min().unwrap_or(now);
        let deadline = oldest + limits.linger;
        if now < deadline {
            return Decision::Wait(deadline - now);
        }
    }
    Decision::Run(takes)
}

/// A request for the model thread.
#[derive(Debug)]
pub struct Job {
    /// Token ids of each text (non-empty list; each already truncated).
    pub seqs: Vec<Vec<u32>>,
    /// When it was submitted.
    pub enqueued: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<JobResult>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// `--max-queue` requests are already waiting.
    #[error("the queue is full")]
    Full,
    /// The model thread has stopped.
    #[error("the model loop has stopped")]
    Closed,
}

/// The sending side of the queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Queued>,
    depth: QueueDepth,
    max_queue: usize,
}

impl Submitter {
    /// Queues a job unless `max_queue` requests are already queued or running.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let slot = self.depth.enter(self.max_queue).ok_or(SubmitError::Full)?;
        // A refused send drops the job, and its slot with it.
        self.tx
            .send(Queued { job, _slot: slot })
            .map_err(|_| SubmitError::Closed)
    }

    /// Requests queued or being computed (0 means drained).
    pub fn depth(&self) -> usize {
        self.depth.get()
    }

    /// The queue's depth, which, unlike a clone of the submitter, does not keep the queue
    /// open: the model loop still ends once every submitter is gone.
    pub fn depth_gauge(&self) -> QueueDepth {
        self.depth.clone()
    }
}

/// Requests queued or being computed. A request counts from the moment it is queued until
/// its queue slot is dropped, wherever that happens (answered, failed, abandoned by its
/// client, or discarded with the queue), so no code path adjusts the count by hand.
#[derive(Debug, Clone)]
pub struct QueueDepth(Arc<watch::Sender<usize>>);

impl QueueDepth {
    fn new() -> Self {
        Self(Arc::new(watch::Sender::new(0)))
    }

    /// Requests queued or being computed now (0 means drained).
    pub fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Returns once nothing is queued or being computed; woken by the last request's
    /// slot being dropped, not by polling.
    pub async fn drained(&self) {
        let mut depth = self.0.subscribe();
        // The sender lives as long as `self`, so the wait cannot fail.
        let _ = depth.wait_for(|&n| n == 0).await;
    }

    /// Counts one more request in, unless `max` are already counted.
    fn enter(&self, max: usize) -> Option<QueueSlot> {
        self.0
            .send_if_modified(|n| {
                let room = *n < max;
                if room {
                    *n += 1;
                }
                room
            })
            .then(|| QueueSlot(self.clone()))
    }
}

/// One request's place in [`QueueDepth`]: counted out when dropped.
#[derive(Debug)]
struct QueueSlot(QueueDepth);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        (self.0).0.send_modify(|n| *n -= 1);
    }
}

/// A job on its way to the loop, carrying its place in the depth count.
#[derive(Debug)]
struct Queued {
    job: Job,
    _slot: QueueSlot,
}

/// Faults the loop obeys (set through `/debug/fault`).
#[derive(Debug, Default)]
pub struct LoopFaults {
    /// Block the loop forever at its next iteration: no ticks, no answers.
    pub hang: AtomicBool,
}

/// The receiving side of the queue, consumed by [`ModelLoop::run`].
#[derive(Debug)]
pub struct ModelLoop {
    rx: Receiver<Queued>,
    depth: QueueDepth,
    /// Batch limits.
    pub limits: BatchLimits,
    /// Heartbeat counters to tick and keep current.
    pub counters: Arc<LoopCounters>,
    /// Batch metrics.
    pub metrics: Metrics,
    /// Faults to obey.
    pub faults: Arc<LoopFaults>,
}

/// A bounded queue: the submitter for the HTTP side and the loop for the model thread.
pub fn queue(
    max_queue: usize,
    limits: BatchLimits,
    counters: Arc<LoopCounters>,
    metrics: Metrics,
) -> (Submitter, ModelLoop) {
    let (tx, rx) = mpsc::channel();
    let depth = QueueDepth::new();
    (
        Submitter {
            tx,
            depth: depth.clone(),
            max_queue,
        },
        ModelLoop {
            rx,
            depth,
            limits,
            counters,
            metrics,
            faults: Arc::default(),
        },
    )
}

/// What the loop keeps per request besides the texts.
#[derive(Debug)]
struct Pending {
    reply: Option<oneshot::Sender<JobResult>>,
    results: Vec<Vec<f32>>,
    /// Dropped with the entry, after its answer is sent: the drain sees 0 only then.
    _slot: QueueSlot,
}

impl ModelLoop {
    /// Runs batches until every [`Submitter`] is gone (the HTTP server has closed) and the
    /// queue is empty: a drain finishes what was accepted, then the loop ends by itself.
    /// Returns an error after a model failure when `errors_are_fatal` (a CUDA device:
    /// its context is unusable afterwards); every request then still queued is answered
    /// with that error. Otherwise a failed batch fails only its own requests.
    pub fn run(
        self,
        model: &mut dyn Embedder,
        errors_are_fatal: bool,
    ) -> Result<(), Arc<ModelError>> {
        let mut queue: VecDeque<Entry<Pending>> = VecDeque::new();
        let mut disconnected = false;
        let cost = model.batch_cost();
        loop {
            self.counters.tick();
            if self.faults.hang.load(Ordering::SeqCst) {
                tracing::warn!("fault injection: model loop hangs");
                loop {
                    std::thread::park();
                }
            }
            while let Ok(job) = self.rx.try_recv() {
                queue.push_back(entry(job));
            }
            self.retire(&mut queue);
            if queue.is_empty() && disconnected {
                return Ok(());
            }
            let wait = match next_batch(&queue, &self.limits, cost, Instant::now()) {
                Decision::Run(takes) => {
                    if let Err(e) = self.run_batch(model, &mut queue, &takes) {
                        if errors_are_fatal {
                            self.fail_all(&mut queue, &e);
                            return Err(e);
                        }
                    }
                    continue;
                }
                Decision::Wait(d) => d.min(TICK),
                Decision::Idle => TICK,
            };
            match self.rx.recv_timeout(wait) {
                Ok(job) => queue.push_back(entry(job)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
        }
    }

    /// Answers finished requests at the head, drops those whose client went away, and
    /// publishes the queue's size.
    fn retire(&self, queue: &mut VecDeque<Entry<Pending>>) {
        while let Some(front) = queue.front() {
            if front.next < front.seqs.len() {
                break;
            }
            if let Some(mut done) = queue.pop_front() {
                if let Some(reply) = done.payload.reply.take() {
                    // The client may have gone; nothing to do then.
                    let _ = reply.send(Ok(std::mem::take(&mut done.payload.results)));
                }
            }
        }
        queue.retain(|e| e.payload.reply.as_ref().is_some_and(|r| !r.is_closed()));
        let pending: usize = queue.iter().map(|e| e.seqs.len() - e.next).sum();
        self.counters.set_pending(pending as u64);
        self.counters.set_in_flight(0);
        self.metrics.set_queue_depth(self.depth.get());
    }

    /// Runs one batch; on error answers the requests it touched with the error.
    fn run_batch(
        &self,
        model: &mut dyn Embedder,
        queue: &mut VecDeque<Entry<Pending>>,
        takes: &[Take],
    ) -> Result<(), Arc<ModelError>> {
        let seqs: Vec<&[u32]> = takes
            .iter()
            .flat_map(|t| {
                queue[t.entry].seqs[t.start..t.end]
                    .iter()
                    .map(Vec::as_slice)
            })
            .collect();
        let tokens = seqs.iter().map(|s| s.len()).sum();
        let pending: usize = queue.iter().map(|e| e.seqs.len() - e.next).sum();
        self.counters.set_in_flight(seqs.len() as u64);
        self.counters.set_pending((pending - seqs.len()) as u64);
        let started = Instant::now();
        let result = model.embed(&seqs);
        self.metrics.batch(seqs.len(), tokens, started.elapsed());
        match result {
            Ok(vectors) => {
                let mut vectors = vectors.into_iter();
                for t in takes {
                    let e = &mut queue[t.entry];
                    e.payload
                        .results
                        .extend(vectors.by_ref().take(t.end - t.start));
                    e.next = t.end;
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, texts = seqs.len(), "inference failed");
                let e = Arc::new(e);
                // The touched entries are a prefix of the queue (FIFO batches).
                let touched = takes.last().map_or(0, |t| t.entry + 1);
                for mut failed in queue.drain(..touched) {
                    if let Some(reply) = failed.payload.reply.take() {
                        let _ = reply.send(Err(InferenceError(Arc::clone(&e))));
                    }
                }
                Err(e)
            }
        }
    }

    fn fail_all(&self, queue: &mut VecDeque<Entry<Pending>>, e: &Arc<ModelError>) {
        while let Ok(job) = self.rx.try_recv() {
            queue.push_back(entry(job));
        }
        for mut failed in queue.drain(..) {
            if let Some(reply) = failed.payload.reply.take() {
                let _ = reply.send(Err(InferenceError(Arc::clone(e))));
            }
        }
        self.counters.set_pending(0);
        self.counters.set_in_flight(0);
    }
}

fn entry(Queued { job, _slot }: Queued) -> Entry<Pending> {
    Entry {
        payload: Pending {
            reply: Some(job.reply),
            results: Vec::with_capacity(job.seqs.len()),
            _slot,
        },
        seqs: job.seqs,
        next: 0,
        enqueued: job.enqueued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits {
        max_batch_size: 4,
        max_batch_tokens: 100,
        linger: Duration::from_millis(5),
    };

    fn queue_of(lens: &[&[usize]], enqueued: Instant) -> VecDeque<Entry<()>> {
        lens.iter()
            .map(|l| Entry {
                seqs: l.iter().map(|&n| vec![0u32; n]).collect(),
                next: 0,
                enqueued,
                payload: (),
            })
            .collect()
    }

    fn take(entry: usize, start: usize, end: usize) -> Take {
        Take { entry, start, end }
    }

    #[test]
    fn empty_queue_is_idle() {
        let q = queue_of(&[], Instant::now());
        assert_eq!(
            next_batch(&q, &LIMITS, BatchCost::Padded, Instant::now()),
            Decision::Idle
        );
    }

    #[test]
    fn a_partial_batch_lingers_then_runs() {
        let t0 = Instant::now();
        let q = queue_of(&[&[3], &[4]], t0);
        assert_eq!(
            next_batch(
                &q,
                &LIMITS,
                BatchCost::Padded,
                t0 + Duration::from_millis(2)
            ),
            Decision::Wait(Duration::from_millis(3))
        );
        assert_eq!(
            next_batch(
                &q,
                &LIMITS,
                BatchCost::Padded,
                t0 + Duration::from_millis(5)
            ),
            Decision::Run(vec![take(0, 0, 1), take(1, 0, 1)])
        );
    }

    #[test]
    fn a_full_batch_runs_at_once_and_splits_a_request() {
        let t0 = Instant::now();
        let q = queue_of(&[&[2, 2, 2], &[2, 2, 2]], t0);
        assert_eq!(
            next_batch(&q, &LIMITS, BatchCost::Padded, t0),
            Decision::Run(vec![take(0, 0, 3), take(1, 0, 1)])
        );
    }

    /// Which texts share a pass under each cost rule: the same queues and limits (4 texts,
    /// 100 tokens), counted as the sum of lengths where the backend packs and as rows ×
    /// longest where it pads.
    #[test]
    fn the_token_limit_counts_as_the_backend_computes() {
        use BatchCost::{Packed, Padded};
        let t0 = Instant::now();
        #[allow(clippy::type_complexity)]
        let table: &[(&str, &[&[usize]], BatchCost, &[Take])] = &[
            // 10 + 40 + 5 = 55 fits; padded, a third row of width 40 counts 120 > 100.
            (
                "short texts beside a long one",
                &[&[10, 40], &[5]],
                Packed,
                &[take(0, 0, 2), take(1, 0, 1)],
            ),
            (
                "short texts beside a long one",
                &[&[10, 40], &[5]],
                Padded,
                &[take(0, 0, 2)],
            ),
            // 60 + 5 + 5 = 70 fits; padded, 2 × 60 = 120 already does not.
            (
                "a long text first",
                &[&[60, 5, 5]],
                Packed,
                &[take(0, 0, 3)],
            ),
            (
                "a long text first",
                &[&[60, 5, 5]],
                Padded,
                &[take(0, 0, 1)],
            ),
            // 5 + 5 + 5 + 60 = 75 fits; padded, 4 × 60 = 240 does not.
            (
                "a long text last",
                &[&[5, 5, 5, 60]],
                Packed,
                &[take(0, 0, 4)],
            ),
            (
                "a long text last",
                &[&[5, 5, 5, 60]],
                Padded,
                &[take(0, 0, 3)],
            ),
            // 40 + 40 = 80 fits, a third makes 120 either way.
            (
                "the sum past the limit",
                &[&[40, 40, 40]],
                Packed,
                &[take(0, 0, 2)],
            ),
            (
                "the sum past the limit",
                &[&[40, 40, 40]],
                Padded,
                &[take(0, 0, 2)],
            ),
            // The first text is always taken, however long.
            (
                "an oversized text alone",
                &[&[500, 3]],
                Packed,
                &[take(0, 0, 1)],
            ),
            (
                "an oversized text alone",
                &[&[500, 3]],
                Padded,
                &[take(0, 0, 1)],
            ),
            // The size limit holds whatever the tokens.
            (
                "five tiny texts",
                &[&[1, 1, 1, 1, 1]],
                Packed,
                &[take(0, 0, 4)],
            ),
            (
                "five tiny texts",
                &[&[1, 1, 1, 1, 1]],
                Padded,
                &[take(0, 0, 4)],
            ),
        ];
        for (case, lens, cost, expected) in table {
            let q = queue_of(lens, t0);
            assert_eq!(
                next_batch(&q, &LIMITS, *cost, t0 + LIMITS.linger),
                Decision::Run(expected.to_vec()),
                "{case}, {cost:?}"
            );
        }
    }

    #[test]
    fn an_oversized_text_still_runs_alone() {
        let t0 = Instant::now();
        let q = queue_of(&[&[500, 3]], t0);
        assert_eq!(
            next_batch(&q, &LIMITS, BatchCost::Padded, t0),
            Decision::Run(vec![take(0, 0, 1)])
        );
    }

    #[test]
    fn continues_a_partly_done_request_first() {
        let t0 = Instant::now();
        let mut q = queue_of(&[&[1, 1, 1, 1, 1, 1], &[1]], t0);
        q[0].next = 4;
        assert_eq!(
            next_batch(&q, &LIMITS, BatchCost::Padded, t0 + LIMITS.linger),
            Decision::Run(vec![take(0, 4, 6), take(1, 0, 1)])
        );
    }

    /// Embeds each sequence as [its length, its first id].
    struct Fake {
        batches: Vec<usize>,
        fail: bool,
        cost: BatchCost,
    }

    impl Fake {
        fn new(fail: bool) -> Self {
            Self {
                batches: Vec::new(),
                fail,
                cost: BatchCost::Packed,
            }
        }
    }

    impl Embedder for Fake {
        fn dimension(&self) -> usize {
            2
        }

        fn batch_cost(&self) -> BatchCost {
            self.cost
        }

        fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
            self.batches.push(batch.len());
            if self.fail {
                return Err(ModelError::Unsupported("boom".into()));
            }
            Ok(batch
                .iter()
                .map(|s| vec![s.len() as f32, s.first().copied().unwrap_or(0) as f32])
                .collect())
        }
    }

    fn job(seqs: Vec<Vec<u32>>) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, rx) = oneshot::channel();
        (
            Job {
                seqs,
                enqueued: Instant::now(),
                reply,
            },
            rx,
        )
    }

    fn setup(max_queue: usize) -> (Submitter, ModelLoop) {
        queue(
            max_queue,
            BatchLimits {
                max_batch_size: 4,
                max_batch_tokens: 1000,
                linger: Duration::ZERO,
            },
            Arc::default(),
            Metrics::new(),
        )
    }

    /// The measured case: one 256-token text and 31 short ones under the server's
    /// 32 texts and `--max-batch-tokens 1024` take one pass where the backend packs
    /// (256 + 31 × 12 = 628 tokens), and two where it pads (4 × 256 already counts 1024).
    #[test]
    fn a_long_text_and_short_ones_share_one_pass_when_packed() {
        for (cost, passes) in [
            (BatchCost::Packed, vec![32]),
            (BatchCost::Padded, vec![4, 28]),
        ] {
            let (submitter, model_loop) = queue(
                8,
                BatchLimits {
                    max_batch_size: 32,
                    max_batch_tokens: 1024,
                    linger: Duration::ZERO,
                },
                Arc::default(),
                Metrics::new(),
            );
            let mut seqs = vec![vec![7; 256]];
            seqs.extend((0..31).map(|_| vec![7; 12]));
            let (request, rx) = job(seqs);
            submitter.submit(request).expect("queued");
            drop(submitter);
            let mut fake = Fake {
                cost,
                ..Fake::new(false)
            };
            model_loop.run(&mut fake, false).expect("clean exit");
            assert_eq!(rx.blocking_recv().expect("answered").expect("ok").len(), 32);
            assert_eq!(fake.batches, passes, "{cost:?}");
        }
    }

    #[test]
    fn the_loop_answers_every_request_in_order_across_batches() {
        let (submitter, model_loop) = setup(8);
        let counters = Arc::clone(&model_loop.counters);
        let (big, big_rx) = job((1..=6).map(|i| vec![i; i as usize]).collect());
        let (small, small_rx) = job(vec![vec![9, 9]]);
        submitter.submit(big).expect("queued");
        submitter.submit(small).expect("queued");
        assert_eq!(submitter.depth(), 2);
        drop(submitter);
        let mut fake = Fake::new(false);
        model_loop.run(&mut fake, false).expect("clean exit");
        let big = big_rx.blocking_recv().expect("answered").expect("ok");
        assert_eq!(big.len(), 6);
        for (i, v) in big.iter().enumerate() {
            assert_eq!(v, &vec![(i + 1) as f32, (i + 1) as f32]);
        }
        let small = small_rx.blocking_recv().expect("answered").expect("ok");
        assert_eq!(small, vec![vec![2.0, 9.0]]);
        assert_eq!(
            fake.batches,
            vec![4, 3],
            "6 + 1 texts in batches of at most 4"
        );
        assert!(counters.progress() >= 2);
    }

    #[test]
    fn a_full_queue_refuses() {
        let (submitter, _model_loop) = setup(1);
        let (a, _a_rx) = job(vec![vec![1]]);
        let (b, _b_rx) = job(vec![vec![1]]);
        submitter.submit(a).expect("queued");
        assert_eq!(submitter.submit(b).expect_err("full"), SubmitError::Full);
    }

    #[test]
    fn the_drain_wakes_when_the_last_answer_is_sent() {
        let (submitter, model_loop) = setup(8);
        let depth = submitter.depth_gauge();
        let (a, mut a_rx) = job(vec![vec![1]; 3]);
        let (b, mut b_rx) = job(vec![vec![2]]);
        submitter.submit(a).expect("queued");
        submitter.submit(b).expect("queued");
        assert_eq!(depth.get(), 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds");
        rt.block_on(async {
            let drained = depth.drained();
            tokio::pin!(drained);
            assert!(
                tokio::time::timeout(Duration::ZERO, &mut drained)
                    .await
                    .is_err(),
                "two requests are queued: not drained"
            );
            drop(submitter);
            let model = std::thread::spawn(move || {
                let mut fake = Fake::new(false);
                model_loop.run(&mut fake, false)
            });
            // Generous: the loop needs two batches of a fake model, microseconds each.
            tokio::time::timeout(Duration::from_secs(10), drained)
                .await
                .expect("woken once both requests are answered");
            // The count drops after the answer is sent, never before.
            assert!(a_rx.try_recv().expect("answered first").is_ok());
            assert!(b_rx.try_recv().expect("answered first").is_ok());
            model.join().expect("no panic").expect("clean exit");
        });
        assert_eq!(depth.get(), 0);
    }

    #[test]
    fn a_request_abandoned_or_refused_leaves_the_depth() {
        let (submitter, model_loop) = setup(8);
        let (a, a_rx) = job(vec![vec![1]]);
        let (b, b_rx) = job(vec![vec![2]]);
        submitter.submit(a).expect("queued");
        submitter.submit(b).expect("queued");
        drop(a_rx); // its client went away before the loop took it
        let depth = submitter.depth_gauge();
        drop(submitter);
        let mut fake = Fake::new(false);
        model_loop.run(&mut fake, false).expect("clean exit");
        assert_eq!(
            fake.batches,
            vec![1],
            "the abandoned request is not computed"
        );
        assert!(b_rx.blocking_recv().expect("answered").is_ok());
        assert_eq!(depth.get(), 0);

        let (submitter, model_loop) = setup(8);
        drop(model_loop);
        let (c, _c_rx) = job(vec![vec![1]]);
        assert_eq!(
            submitter.submit(c).expect_err("no loop"),
            SubmitError::Closed
        );
        assert_eq!(submitter.depth(), 0, "a refused request is not counted");
    }

    #[test]
    fn a_fatal_error_fails_every_queued_request() {
        let (submitter, model_loop) = setup(8);
        let (a, a_rx) = job(vec![vec![1]; 4]);
        let (b, b_rx) = job(vec![vec![1]; 4]);
        submitter.submit(a).expect("queued");
        submitter.submit(b).expect("queued");
        let mut fake = Fake::new(true);
        let err = model_loop.run(&mut fake, true).expect_err("fatal");
        assert!(err.to_string().contains("boom"));
        assert!(a_rx.blocking_recv().expect("answered").is_err());
        assert!(b_rx.blocking_recv().expect("answered").is_err());
        assert_eq!(submitter.depth(), 0);
    }

    #[test]
    fn a_non_fatal_error_fails_only_its_batch() {
        let (submitter, model_loop) = setup(8);
        let (a, a_rx) = job(vec![vec![1]; 2]);
        submitter.submit(a).expect("queued");
        drop(submitter);
        let mut fake = Fake::new(true);
        model_loop.run(&mut fake, false).expect("keeps serving");
        assert!(a_rx.blocking_recv().expect("answered").is_err());
    }

    #[test]
    fn the_idle_loop_keeps_ticking_and_ends_when_the_server_is_gone() {
        let (submitter, model_loop) = setup(8);
        let counters = Arc::clone(&model_loop.counters);
        let thread = std::thread::spawn(move || {
            let mut fake = Fake::new(false);
            model_loop.run(&mut fake, false)
        });
        let deadline = Instant::now() + TICK * 50;
        while counters.progress() < 3 {
            assert!(Instant::now() < deadline, "the idle loop stopped ticking");
            std::thread::park_timeout(TICK / 4);
        }
        drop(submitter);
        thread.join().expect("no panic").expect("clean exit");
    }
}
