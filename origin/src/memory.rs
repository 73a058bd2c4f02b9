//! What the origin remembers instead of asking PostgreSQL on every request, and how it stays true.
//!
//! A request with a token costs two database round trips without this: the API key, then whether
//! the token's session is live and its account active. Both answers change rarely and only through
//! the database, so each instance keeps the answers it has read ("this key is good", "this session
//! was live until at least then") and PostgreSQL tells every instance when one may have changed:
//! triggers `NOTIFY gatehouse_changes` from the very transaction that ends a session, deactivates an
//! account, creates or revokes a key or revokes a signing key (see the migration
//! `change_notifications`), and the notification reaches every listening instance when, and only
//! if, that transaction commits. Each instance drops the "yes" a notification names and, for what
//! can never be undone (a session ended, a key revoked), keeps the "no", so it refuses those
//! tokens and keys from memory too.
//!
//! The rules that keep a remembered answer from ever outliving the truth:
//! - Only answers read while subscribed are kept, and only if no notification arrived between the
//!   read and the keeping (an epoch counter), so a read racing an ending cannot keep a stale "live".
//! - The instance that ends a session forgets it before its transaction commits and keeps
//!   reading that session from the database until the notification arrives ([`Memory::ending`]),
//!   so it refuses the session's tokens as soon as the ending commits, not a notification later.
//! - Until the listening connection is up and has heard a probe sent through the application's
//!   own pool (so a `LISTEN` that cannot hear the application's notifications, behind a pooler in
//!   transaction mode or on another database, is never trusted), after it drops, and when its
//!   heartbeat (a notification it sends itself) does not come back, nothing remembered is used:
//!   every check reads the database, and everything remembered is forgotten on resubscribing, so
//!   no notification missed meanwhile can matter.
//! - A session is remembered only until the end its row allowed when read (idle timeout, lifetime).
//! - A "no" is final (ended sessions and revoked signing keys never come back), so it is used
//!   whether or not notifications are heard.
//!
//! `LISTEN_DATABASE_URL` names the connection to listen on (default: `DATABASE_URL`), because
//! `LISTEN` needs a session of its own, which a pooler in transaction mode does not give; `off`
//! turns memory off and every check reads the database.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gatehouse_shared::ExposeSecret as _;
use gatehouse_shared::bounded::BoundedMap;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

/// The channel the triggers notify.
pub const CHANNEL: &str = "gatehouse_changes";

/// Live sessions remembered at most (about 100 bytes each).
pub const SESSION_ENTRIES: usize = 100_000;

/// Ended sessions remembered at most (about 40 bytes each); past it, the oldest are read again.
pub const ENDED_ENTRIES: usize = 100_000;

/// API keys remembered at most, good or unknown.
pub const API_KEY_ENTRIES: usize = 10_000;

/// After this long without a notification the listener sends itself one; if it has not come
/// back within [`HEARTBEAT_TIMEOUT`], the connection counts as lost. A connection that dies
/// without closing is noticed within the sum of the two.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// See [`HEARTBEAT`].
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long after a failed connection the listener tries again.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// How long a session this instance is ending stays read from the database if its notification
/// never arrives (the ending rolled back).
const ENDING_FOR: Duration = Duration::from_secs(30);

/// Where the listener connects.
#[derive(Debug, Clone)]
pub enum ListenOn {
    /// The application's pool (a connection taken out of it for good).
    Pool,
    /// Another URL (`LISTEN_DATABASE_URL`), such as the server itself behind a transaction pooler.
    Url(gatehouse_shared::SecretString),
    /// Memory is off (`LISTEN_DATABASE_URL=off`): every check reads the database.
    Off,
}

/// A session remembered as live.
#[derive(Debug, Clone)]
struct LiveSession {
    user_id: Uuid,
    /// The key that signed the token it was checked for (revoked keys end sessions' tokens).
    kid: String,
    /// The session's end as of the read: its idle timeout or lifetime.
    until: OffsetDateTime,
}

/// The remembered answers; see the module documentation.
pub struct Memory {
    inner: Mutex<Inner>,
}

struct Inner {
    subscribed: bool,
    epoch: u64,
    sessions: BoundedMap<Uuid, LiveSession>,
    ended: BoundedMap<Uuid, ()>,
    revoked_kids: HashSet<String>,
    api_keys: BoundedMap<String, Option<Vec<u8>>>,
    ending: HashMap<Uuid, Instant>,
}

/// What memory says of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    /// Live, for tokens of that key, until its remembered end.
    Live,
    /// Ended, or signed by a revoked key: refuse.
    Ended,
    /// Not known: read the database.
    Unknown,
}

/// A ticket for keeping an answer read from the database: taken before the read, it keeps the
/// answer only if nothing changed meanwhile. `None` inside when memory is not in use.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl Memory {
    /// Remembers nothing until [`follow`] has subscribed.
    pub fn new() -> Self {
        Memory {
            inner: Mutex::new(Inner {
                subscribed: false,
                epoch: 0,
                sessions: BoundedMap::new(SESSION_ENTRIES),
                ended: BoundedMap::new(ENDED_ENTRIES),
                revoked_kids: HashSet::new(),
                api_keys: BoundedMap::new(API_KEY_ENTRIES),
                ending: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("not poisoned")
    }

    /// Whether notifications are being received, so that remembered answers are used.
    pub fn is_subscribed(&self) -> bool {
        self.lock().subscribed
    }

    /// What is remembered of `session_id` of `user_id` at `now`, for a token signed by `kid`.
    pub fn session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        kid: &str,
        now: OffsetDateTime,
    ) -> Remembered {
        let mut inner = self.lock();
        if inner.ended.get(&session_id).is_some() || inner.revoked_kids.contains(kid) {
            return Remembered::Ended;
        }
        let live = inner.subscribed
            && inner.sessions.get(&session_id).is_some_and(|session| {
                session.user_id == user_id && session.kid == kid && now < session.until
            });
        if live {
            Remembered::Live
        } else {
            Remembered::Unknown
        }
    }

    /// The API key `id`'s stored secret hash as remembered: `Some(None)` for a key known not to
    /// exist or to be revoked, `None` when it must be read.
    pub fn api_key(&self, id: &str) -> Option<Option<Vec<u8>>> {
        let mut inner = self.lock();
        if !inner.subscribed {
            return None;
        }
        inner.api_keys.get(&id.to_owned()).cloned()
    }

    /// Take before reading what is to be remembered.
    pub fn ticket(&self) -> Ticket {
        let inner = self.lock();
        Ticket(inner.subscribed.then_some(inner.epoch))
    }

    /// Remembers that `session_id` of `user_id` was read live, for tokens of `kid`, until `until`.
    pub fn remember_session(
        &self,
        ticket: Ticket,
        session_id: Uuid,
        user_id: Uuid,
        kid: &str,
        until: OffsetDateTime,
    ) {
        let mut inner = self.lock();
        if inner.still(ticket) && !inner.ending.contains_key(&session_id) {
            let session = LiveSession {
                user_id,
                kid: kid.to_owned(),
                until,
            };
            inner.sessions.insert(session_id, session);
        }
    }

    /// Remembers the API key `id`'s stored hash (`None`: no such active key).
    pub fn remember_api_key(&self, ticket: Ticket, id: &str, secret_hash: Option<Vec<u8>>) {
        let mut inner = self.lock();
        if inner.still(ticket) {
            inner.api_keys.insert(id.to_owned(), secret_hash);
        }
    }

    /// Called by whatever ends sessions, before its transaction commits: forgets them and reads
    /// them from the database until their notifications arrive.
    pub fn ending(&self, sessions: impl IntoIterator<Item = Uuid>) {
        let mut inner = self.lock();
        inner.epoch += 1;
        let now = Instant::now();
        inner
            .ending
            .retain(|_, since| now.duration_since(*since) < ENDING_FOR);
        for session in sessions {
            inner.sessions.remove(&session);
            inner.ending.insert(session, now);
        }
    }

    /// Applies one notification's payload (see the migration `change_notifications`). Anything
    /// not understood forgets every "yes": the safe reading of a change the code does not know.
    pub fn apply(&self, payload: &str) {
        let mut words = payload.split(' ');
        let words = (words.next(), words.next(), words.next(), words.next());
        if let (Some("probe"), Some(_), None, None) = words {
            // An instance checking that it hears the channel; nothing changed.
            return;
        }
        let mut inner = self.lock();
        inner.epoch += 1;
        match words {
            (Some("session"), Some(id), None, None) if let Ok(id) = id.parse::<Uuid>() => {
                inner.sessions.remove(&id);
                inner.ending.remove(&id);
                inner.ended.insert(id, ());
            }
            (Some("user"), Some(id), None, None) if let Ok(id) = id.parse::<Uuid>() => {
                inner.sessions.retain(|_, session| session.user_id != id);
            }
            (Some("api_key"), Some(id), Some("active"), None) => {
                inner.api_keys.remove(&id.to_owned());
            }
            (Some("api_key"), Some(id), Some("revoked"), None) => {
                inner.api_keys.insert(id.to_owned(), None);
            }
            (Some("signing_key"), Some(kid), None, None) => {
                inner.revoked_kids.insert(kid.to_owned());
            }
            (Some("reset"), None, None, None) => inner.forget(),
            _ => {
                tracing::warn!(
                    payload,
                    "change notification not understood; forgetting everything"
                );
                inner.forget();
            }
        }
    }

    /// Notifications stopped (or never started): use nothing remembered.
    fn unsubscribed(&self) {
        let mut inner = self.lock();
        inner.subscribed = false;
        inner.forget();
    }

    /// Listening again: whatever was missed meanwhile is forgotten with everything else.
    fn subscribed(&self) {
        let mut inner = self.lock();
        inner.forget();
        inner.subscribed = true;
    }
}

impl Inner {
    fn still(&self, ticket: Ticket) -> bool {
        self.subscribed && ticket.0 == Some(self.epoch)
    }

    fn forget(&mut self) {
        self.epoch += 1;
        self.sessions.clear();
        self.api_keys.clear();
    }
}

/// The task that keeps a [`Memory`] subscribed; stops when dropped.
pub struct Follower(tokio::task::JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts listening on `gatehouse_changes` for `memory`, as `on` says, next to the application's
/// `pool`; see [`follow`]. `None` when memory is off.
pub fn spawn(memory: &Arc<Memory>, pool: &PgPool, on: &ListenOn) -> Option<Follower> {
    let options = match on {
        ListenOn::Off => return None,
        ListenOn::Pool => pool.connect_options().as_ref().clone(),
        ListenOn::Url(url) => match url.expose_secret().parse() {
            Ok(options) => options,
            Err(error) => {
                tracing::error!(%error, "LISTEN_DATABASE_URL is not usable; nothing is remembered");
                return None;
            }
        },
    };
    let task = tokio::spawn(follow(Arc::clone(memory), pool.clone(), options));
    Some(Follower(task))
}

/// Keeps `memory` subscribed, listening over connections made with `options`, for as long as the
/// application's `pool` is open, resubscribing after any loss; see the module documentation.
pub async fn follow(memory: Arc<Memory>, pool: PgPool, options: PgConnectOptions) {
    let mut failing = false;
    while !pool.is_closed() {
        // A pool of its own for each subscription: a connection that died silently can hold its
        // slot for as long as TCP takes to give up, and must not hold up the next one.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(HEARTBEAT_TIMEOUT * 5)
            .connect_lazy_with(options.clone());
        let outcome = listen(&memory, &pool, &listen_pool).await;
        memory.unsubscribed();
        let closing = listen_pool.clone();
        tokio::spawn(async move { closing.close().await });
        match outcome {
            Ok(()) => break,
            Err(error) if !failing => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "change notifications not heard; every check reads the database until resubscribed"
                );
                failing = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// One subscription: connects, listens, proves that what the application's pool sends reaches it
/// (a probe sent through `pool`: a `LISTEN` through a pooler in transaction mode, or on another
/// database, would hear nothing), then applies notifications until the connection is lost or
/// stops answering its heartbeat (an error), or the application's pool closes (`Ok`).
async fn listen(memory: &Memory, pool: &PgPool, listen_pool: &PgPool) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(listen_pool).await?;
    // A lost connection ends this subscription; the caller forgets everything and resubscribes.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    let probe = probe_payload();
    tokio::time::timeout(
        HEARTBEAT_TIMEOUT,
        sqlx::query("select pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&probe)
            .execute(pool),
    )
    .await
    .map_err(|_| anyhow::anyhow!("the probe could not be sent within {HEARTBEAT_TIMEOUT:?}"))??;
    hear(memory, &mut listener, &probe).await.map_err(|error| {
        error.context("a notification sent through DATABASE_URL did not arrive where it listens")
    })?;
    memory.subscribed();
    tracing::info!(channel = CHANNEL, "listening for change notifications");
    loop {
        // `try_recv` is cancel-safe: a notification half read when the timeout fires stays
        // buffered for the next call.
        match tokio::time::timeout(HEARTBEAT, listener.try_recv()).await {
            Ok(Ok(Some(notification))) => memory.apply(notification.payload()),
            Ok(Ok(None)) => anyhow::bail!("the connection closed"),
            Ok(Err(error)) => return Err(error.into()),
            Err(_) if pool.is_closed() => return Ok(()),
            Err(_) => {
                // Quiet for a while: a notification of its own must come back over the
                // connection, which proves it still delivers, not only that it answers.
                let probe = probe_payload();
                let notify = sqlx::query("select pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(&probe)
                    .execute(&mut listener);
                tokio::time::timeout(HEARTBEAT_TIMEOUT, notify)
                    .await
                    .map_err(|_| anyhow::anyhow!("no answer within {HEARTBEAT_TIMEOUT:?}"))??;
                hear(memory, &mut listener, &probe).await?;
            }
        }
    }
}

/// A probe payload no other probe will repeat.
fn probe_payload() -> String {
    format!("probe {}", Uuid::new_v4().simple())
}

/// Applies notifications until `probe` arrives; fails after [`HEARTBEAT_TIMEOUT`].
async fn hear(memory: &Memory, listener: &mut PgListener, probe: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + HEARTBEAT_TIMEOUT;
    loop {
        let next = tokio::time::timeout_at(deadline, listener.try_recv())
            .await
            .map_err(|_| {
                anyhow::anyhow!("the probe did not come back within {HEARTBEAT_TIMEOUT:?}")
            })?;
        match next? {
            Some(notification) if notification.payload() == probe => return Ok(()),
            Some(notification) => memory.apply(notification.payload()),
            None => anyhow::bail!("the connection closed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "kid-1";

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).unwrap()
    }

    fn subscribed() -> Memory {
        let memory = Memory::new();
        memory.subscribed();
        memory
    }

    #[test]
    fn a_live_session_is_remembered_until_its_end_and_for_its_own_user_and_key() {
        let memory = subscribed();
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        memory.remember_session(memory.ticket(), session, user, KID, at(100));

        assert_eq!(memory.session(session, user, KID, at(99)), Remembered::Live);
        assert_eq!(
            memory.session(session, user, KID, at(100)),
            Remembered::Unknown
        );
        assert_eq!(
            memory.session(session, Uuid::now_v7(), KID, at(0)),
            Remembered::Unknown
        );
        assert_eq!(
            memory.session(session, user, "kid-2", at(0)),
            Remembered::Unknown
        );
    }

    #[test]
    fn nothing_read_before_a_notification_is_kept_after_it() {
        let memory = subscribed();
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        // A read of "live" that began before the ending's notification arrived.
        let ticket = memory.ticket();
        memory.apply(&format!("session {session}"));
        memory.remember_session(ticket, session, user, KID, at(100));

        assert_eq!(memory.session(session, user, KID, at(0)), Remembered::Ended);
        let other = Uuid::now_v7();
        memory.remember_session(ticket, other, user, KID, at(100));
        assert_eq!(memory.session(other, user, KID, at(0)), Remembered::Unknown);
    }

    #[test]
    fn a_session_this_instance_is_ending_is_read_until_its_notification() {
        let memory = subscribed();
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        memory.remember_session(memory.ticket(), session, user, KID, at(100));

        memory.ending([session]);
        // A read before the ending commits still sees it live; it must not be kept.
        memory.remember_session(memory.ticket(), session, user, KID, at(100));
        assert_eq!(
            memory.session(session, user, KID, at(0)),
            Remembered::Unknown
        );

        memory.apply(&format!("session {session}"));
        assert_eq!(memory.session(session, user, KID, at(0)), Remembered::Ended);
    }

    #[test]
    fn without_notifications_only_the_final_answers_are_used() {
        let memory = subscribed();
        let (live, ended, user) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        memory.remember_session(memory.ticket(), live, user, KID, at(100));
        memory.remember_api_key(memory.ticket(), "key", Some(vec![1]));
        memory.apply(&format!("session {ended}"));
        memory.apply("signing_key revoked-kid");

        memory.unsubscribed();

        assert_eq!(memory.session(live, user, KID, at(0)), Remembered::Unknown);
        assert_eq!(memory.api_key("key"), None);
        assert_eq!(memory.session(ended, user, KID, at(0)), Remembered::Ended);
        assert_eq!(
            memory.session(live, user, "revoked-kid", at(0)),
            Remembered::Ended
        );
        // Nothing is remembered while unsubscribed.
        memory.remember_session(memory.ticket(), live, user, KID, at(100));
        memory.subscribed();
        assert_eq!(memory.session(live, user, KID, at(0)), Remembered::Unknown);
    }

    #[test]
    fn notifications_for_users_and_keys_drop_or_refuse_what_they_name() {
        let memory = subscribed();
        let (session, user) = (Uuid::now_v7(), Uuid::now_v7());
        memory.remember_session(memory.ticket(), session, user, KID, at(100));
        memory.remember_api_key(memory.ticket(), "good", Some(vec![1]));
        memory.remember_api_key(memory.ticket(), "unknown", None);

        memory.apply(&format!("user {user}"));
        memory.apply("api_key good revoked");
        memory.apply("api_key unknown active");

        assert_eq!(
            memory.session(session, user, KID, at(0)),
            Remembered::Unknown
        );
        assert_eq!(memory.api_key("good"), Some(None), "refused from memory");
        assert_eq!(
            memory.api_key("unknown"),
            None,
            "read again: it was just created"
        );

        memory.remember_api_key(memory.ticket(), "other", Some(vec![2]));
        memory.apply("something new");
        assert_eq!(
            memory.api_key("other"),
            None,
            "an unknown notification forgets"
        );
    }

    #[test]
    fn probes_change_nothing_and_a_truncation_or_a_malformed_payload_forgets() {
        let memory = subscribed();
        let ticket = memory.ticket();
        memory.apply("probe 0123abcd");
        memory.remember_api_key(ticket, "key", Some(vec![1]));
        assert_eq!(
            memory.api_key("key"),
            Some(Some(vec![1])),
            "a probe is no change"
        );

        memory.apply("reset");
        assert_eq!(memory.api_key("key"), None);

        memory.remember_api_key(memory.ticket(), "key", Some(vec![1]));
        memory.apply("api_key key revoked but with more words");
        assert_eq!(
            memory.api_key("key"),
            None,
            "not read as a revocation of 'key'"
        );
    }
}
