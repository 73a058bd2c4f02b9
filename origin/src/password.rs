//! Password hashing on a bounded pool of dedicated threads.
//!
//! bcrypt at cost 12 burns about a quarter second of CPU per call. Run on the async executor it
//! stalls every request behind it, which is how the Python service this replaces collapsed. Here
//! each hash is a job for one of `HASH_WORKERS` threads (default: one per core); at most
//! `HASH_QUEUE_LIMIT` jobs wait, and beyond that a request is refused at once with 503 rather than
//! queued until its client gives up. The threads run at a lower scheduling priority so that the
//! async workers, which answer token checks and health probes, are never starved of CPU.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use std::time::Instant;

use gatehouse_shared::{ExposeSecret, SecretString};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::oneshot;

/// Niceness of hashing threads (Linux `setpriority`, 0 is normal, 19 lowest). Ten steps gives
/// normal threads roughly nine times the CPU share of a hashing thread when both want a core.
const HASHING_NICENESS: libc::c_int = 10;

/// Why a hash or verification did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The queue was full; nothing was computed.
    #[error("hashing queue is full")]
    Overloaded,
    /// bcrypt refused its input (a malformed stored hash).
    #[error("bcrypt failed")]
    Failed(#[from] bcrypt::BcryptError),
    /// The worker thread went away before answering.
    #[error("hashing worker stopped")]
    WorkerGone,
}

type Job = Box<dyn FnOnce() + Send>;

/// A handle to the hashing pool; cheap to clone.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: SyncSender<Job>,
    /// Seconds each job waited for a worker.
    wait: Histogram,
    /// Jobs refused because the queue was full.
    shed: Counter,
    queued: Arc<AtomicUsize>,
    verifications: Arc<AtomicUsize>,
    cost: u32,
    /// A hash of a random password at the configured cost: unknown accounts are verified against
    /// it so that a login's duration does not reveal whether the email exists (OWASP
    /// Authentication Cheat Sheet, "Authentication and Error Messages").
    dummy_hash: String,
}

impl PasswordHasher {
    /// Starts `workers` threads hashing at `cost`, with room for `queue_limit` waiting jobs.
    pub fn new(workers: usize, queue_limit: usize, cost: u32) -> Self {
        let (jobs, receiver) = sync_channel::<Job>(queue_limit);
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..workers.max(1) {
            let receiver = Arc::clone(&receiver);
            std::thread::Builder::new()
                .name(format!("bcrypt-{index}"))
                .spawn(move || run_worker(&receiver))
                .expect("the OS can start a hashing thread");
        }
        let mut secret = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let dummy_hash = bcrypt::hash(secret, cost).expect("cost was validated");
        PasswordHasher {
            inner: Arc::new(Inner {
                jobs,
                wait: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
                shed: Counter::default(),
                queued: Arc::new(AtomicUsize::new(0)),
                verifications: Arc::new(AtomicUsize::new(0)),
                cost,
                dummy_hash,
            }),
        }
    }

    /// The configured bcrypt cost.
    pub fn cost(&self) -> u32 {
        self.inner.cost
    }

    /// Jobs waiting for a worker right now.
    pub fn queue_depth(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// How long jobs waited for a worker, in seconds (shared handle, for `/metrics`).
    pub fn wait_histogram(&self) -> Histogram {
        self.inner.wait.clone()
    }

    /// Jobs refused with `Overloaded` since start (shared handle, for `/metrics`).
    pub fn shed_counter(&self) -> Counter {
        self.inner.shed.clone()
    }

    /// bcrypt verifications completed since start, real and dummy alike.
    pub fn verifications(&self) -> usize {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Hashes a new password. The caller has already refused passwords over 72 bytes, so
    /// bcrypt's silent truncation cannot apply (a 72-byte password uses every byte: bcrypt
    /// drops only the terminating NUL it appends).
    pub async fn hash(&self, password: SecretString) -> Result<String, HashError> {
        let cost = self.inner.cost;
        self.run(move || bcrypt::hash(password.expose_secret(), cost).map_err(HashError::from))
            .await
    }

    /// Checks `password` against `stored`, or against a dummy hash when there is no account, so
    /// both cases cost one bcrypt verification. Only `Ok(true)` means the password is right.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<bool, HashError> {
        let exists = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.inner.dummy_hash.clone());
        let counter = Arc::clone(&self.inner.verifications);
        let matches = self
            .run(move || {
                let outcome = bcrypt::verify(password.expose_secret(), &hash);
                counter.fetch_add(1, Ordering::Relaxed);
                outcome.map_err(HashError::from)
            })
            .await?;
        Ok(exists && matches)
    }

    /// Whether a stored hash was made at another cost than the configured one and should be
    /// replaced at the next successful login.
    pub fn needs_rehash(&self, stored: &str) -> bool {
        stored
            .parse::<bcrypt::HashParts>()
            .map_or(true, |parts| parts.get_cost() != self.inner.cost)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, HashError> {
        let (reply, answer) = oneshot::channel();
        let queued = Arc::clone(&self.inner.queued);
        let wait = self.inner.wait.clone();
        let enqueued = Instant::now();
        let job: Job = Box::new(move || {
            queued.fetch_sub(1, Ordering::Relaxed);
            wait.observe(enqueued.elapsed().as_secs_f64());
            // A requester that went away (its client disconnected) needs no answer: skip the
            // hash rather than spend a quarter second of CPU on it.
            if reply.is_closed() {
                return;
            }
            let _ = reply.send(work());
        });
        self.inner.queued.fetch_add(1, Ordering::Relaxed);
        match self.inner.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::Relaxed);
                self.inner.shed.inc();
                return Err(HashError::Overloaded);
            }
            Err(TrySendError::Disconnected(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::Relaxed);
                return Err(HashError::WorkerGone);
            }
        }
        answer.await.map_err(|_| HashError::WorkerGone)?
    }
}

fn run_worker(receiver: &Mutex<Receiver<Job>>) {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions. On Linux, PRIO_PROCESS with who = 0
    // applies to the calling thread only. Failure leaves normal priority, which is still correct.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICENESS);
    }
    loop {
        // The lock is held only while waiting for the next job, never while hashing.
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            // Every PasswordHasher handle is gone: the pool shuts down.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_COST: u32 = 4;

    #[tokio::test]
    async fn hash_then_verify_accepts_only_the_right_password() {
        let hasher = PasswordHasher::new(2, 8, TEST_COST);

        let hash = hasher.hash("correct horse".into()).await.unwrap();

        assert!(
            hasher
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(hash))
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn unknown_account_is_never_verified_but_still_costs_a_verification() {
        let hasher = PasswordHasher::new(1, 8, TEST_COST);

        let verified = hasher.verify("anything at all".into(), None).await.unwrap();

        assert!(!verified);
        assert_eq!(hasher.verifications(), 1);
    }

    #[tokio::test]
    async fn seventy_two_byte_password_uses_every_byte() {
        let hasher = PasswordHasher::new(1, 8, TEST_COST);
        let password = "a".repeat(71) + "b";

        let hash = hasher.hash(password.clone().into()).await.unwrap();

        assert!(
            hasher
                .verify(password.into(), Some(hash.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("a".repeat(72).into(), Some(hash))
                .await
                .unwrap(),
            "the 72nd byte counts"
        );
    }

    #[tokio::test]
    async fn hash_at_another_cost_needs_rehash() {
        let hasher = PasswordHasher::new(1, 8, TEST_COST);
        let same = hasher.hash("password1".into()).await.unwrap();
        let cheaper = bcrypt::hash("password1", TEST_COST + 1).unwrap();

        assert!(!hasher.needs_rehash(&same));
        assert!(hasher.needs_rehash(&cheaper));
        assert!(hasher.needs_rehash("not a bcrypt hash"));
    }

    #[tokio::test]
    async fn full_queue_sheds_instead_of_waiting() {
        // One worker, room for one waiting job: the third concurrent request is refused at once.
        let hasher = PasswordHasher::new(1, 1, 10);
        let (a, b, c) = tokio::join!(
            hasher.hash("password-a".into()),
            hasher.hash("password-b".into()),
            hasher.hash("password-c".into()),
        );

        let outcomes = [a, b, c];
        let shed = outcomes
            .iter()
            .filter(|r| matches!(r, Err(HashError::Overloaded)))
            .count();
        let done = outcomes.iter().filter(|r| r.is_ok()).count();
        assert!(shed >= 1, "at least one request is shed");
        assert_eq!(shed + done, 3);
        assert_eq!(hasher.queue_depth(), 0);
    }
}
