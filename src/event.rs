//! The event model: what one row of input becomes once it has been validated, pseudonymized
//! and interned, and the small integer types every view is keyed by.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Event time in seconds since the Unix epoch (UTC).
pub type Time = i64;

/// A pseudonymous user: the first 8 bytes of `HMAC-SHA256(key, raw user id)`, big-endian.
///
/// Outputs print it as 16 lower-case hex digits, so the textual order equals the numeric order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UserId(pub u64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// An interned name (event type, item id, property name or value): a stable 64-bit hash of the
/// string, identical in every worker and process, so specs and library code can name things
/// without a shared dictionary.
///
/// ```
/// use behave::event::Sym;
/// assert_eq!(Sym::of("purchase"), Sym::of("purchase"));
/// assert_ne!(Sym::of("purchase"), Sym::of("view"));
/// ```
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Sym(pub u64);

impl Sym {
    /// The symbol of `name` (FNV-1a, 64 bit).
    pub fn of(name: &str) -> Sym {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in name.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Sym(hash)
    }
}

/// A numeric event value in fixed point: millionths, so values are exact, ordered and hashable.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Value(pub i64);

impl Value {
    /// Millionths per unit.
    pub const SCALE: i64 = 1_000_000;

    /// The value nearest to `x`, or `None` when `x` is not finite or out of range.
    ///
    /// ```
    /// use behave::event::Value;
    /// assert_eq!(Value::from_f64(4.5), Some(Value(4_500_000)));
    /// ```
    pub fn from_f64(x: f64) -> Option<Value> {
        let scaled = (x * Self::SCALE as f64).round();
        if scaled.is_finite() && scaled.abs() < 9.0e18 {
            Some(Value(scaled as i64))
        } else {
            None
        }
    }

    /// The value as a float.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }
}

/// One accepted event, as it enters the dataflow.
///
/// Only what the views need travels: columns the spec maps, plus the property columns it keeps
/// (sorted by name). PII columns never get here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event time, seconds since the epoch.
    pub time: Time,
    /// Pseudonymous user.
    pub user: UserId,
    /// Event type.
    pub kind: Sym,
    /// Item the event is about, if any.
    pub item: Option<Sym>,
    /// Numeric value (rating, duration, amount), if any.
    pub value: Option<Value>,
    /// Kept string properties `(name, value)`, sorted by name.
    pub props: Vec<(Sym, Sym)>,
}

impl Event {
    /// An event with no item, value or properties.
    ///
    /// ```
    /// use behave::event::{Event, Sym, UserId};
    /// let e = Event::new(UserId(7), 1_700_000_000, "login");
    /// assert_eq!(e.kind, Sym::of("login"));
    /// ```
    pub fn new(user: UserId, time: Time, kind: &str) -> Event {
        Event {
            time,
            user,
            kind: Sym::of(kind),
            item: None,
            value: None,
            props: Vec::new(),
        }
    }

    /// This event with `item` set.
    pub fn with_item(mut self, item: &str) -> Event {
        self.item = Some(Sym::of(item));
        self
    }

    /// The value of property `name`, if the event has it.
    pub fn prop(&self, name: Sym) -> Option<Sym> {
        self.props
            .binary_search_by_key(&name, |(k, _)| *k)
            .ok()
            .map(|i| self.props[i].1)
    }
}

/// A hasher for keys that already are uniform 64-bit hashes ([`UserId`], [`Sym`]): it uses the
/// value as is instead of hashing it again.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by UserId or Sym; a plain mix keeps other keys working.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// A map keyed by [`UserId`] or [`Sym`].
pub type PrehashedMap<K, V> = HashMap<K, V, BuildHasherDefault<PrehashedHasher>>;

/// A set of [`UserId`]s or [`Sym`]s.
pub type PrehashedSet<K> = HashSet<K, BuildHasherDefault<PrehashedHasher>>;
