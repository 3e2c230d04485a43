//! Pseudonymization and erasure bookkeeping: keyed hashing of user ids, the key's sources,
//! and the tombstone list of forgotten users (which holds only keyed hashes).

use crate::event::{PrehashedSet, UserId};
use crate::spec::InputSpec;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::PathBuf;

/// Why no pseudonymization key could be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No source provided a key.
    #[error("no pseudonymization key: set ${env}, or `input.key_file` or `input.key` in the spec")]
    Missing {
        /// The environment variable that was consulted.
        env: String,
    },
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    File {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The key is empty.
    #[error("the pseudonymization key from {origin} is empty")]
    Empty {
        /// Where the key came from.
        origin: String,
    },
}

/// Where the key was found, for the summary (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    Env(String),
    /// A key file.
    File(PathBuf),
    /// The spec's `input.key`.
    Spec,
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "${name}"),
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Spec => f.write_str("the spec's input.key"),
        }
    }
}

/// Finds the pseudonymization key: the environment variable `input.key_env` (default
/// `BEHAVE_KEY`) first, then `input.key_file`, then `input.key`.
pub fn load_key(input: &InputSpec) -> Result<(Vec<u8>, KeySource), KeyError> {
    let (key, source) = if let Some(value) = std::env::var_os(&input.key_env) {
        (
            value.to_string_lossy().into_owned().into_bytes(),
            KeySource::Env(input.key_env.clone()),
        )
    } else if let Some(path) = &input.key_file {
        let bytes = std::fs::read(path).map_err(|source| KeyError::File {
            path: path.clone(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        (
            text.trim_end_matches(['\n', '\r']).as_bytes().to_vec(),
            KeySource::File(path.clone()),
        )
    } else if let Some(key) = &input.key {
        (key.as_bytes().to_vec(), KeySource::Spec)
    } else {
        return Err(KeyError::Missing {
            env: input.key_env.clone(),
        });
    };
    if key.is_empty() {
        return Err(KeyError::Empty {
            origin: source.to_string(),
        });
    }
    Ok((key, source))
}

/// Replaces raw user ids by keyed hashes: `HMAC-SHA256(key, id)`, first 8 bytes.
///
/// ```
/// use behave::privacy::Pseudonymizer;
/// let p = Pseudonymizer::new(b"secret");
/// assert_eq!(p.pseudonym("alice"), p.pseudonym("alice"));
/// assert_ne!(p.pseudonym("alice"), Pseudonymizer::new(b"other").pseudonym("alice"));
/// ```
#[derive(Clone)]
pub struct Pseudonymizer {
    mac: Hmac<Sha256>,
}

impl Pseudonymizer {
    /// A pseudonymizer under `key`.
    pub fn new(key: &[u8]) -> Pseudonymizer {
        // HMAC accepts keys of any length; this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        Pseudonymizer { mac }
    }

    /// The pseudonym of a raw user id.
    pub fn pseudonym(&self, raw: &str) -> UserId {
        let mut mac = self.mac.clone();
        mac.update(raw.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        UserId(u64::from_be_bytes(first))
    }
}

/// Pseudonymizes user ids with a cache, remembers forgotten users by pseudonym only, and
/// optionally keeps the pseudonym → raw id map needed by `--reveal-ids`.
pub struct Identities {
    pseudonymizer: Pseudonymizer,
    cache: HashMap<Box<str>, UserId>,
    tombstones: PrehashedSet<UserId>,
    reveal: Option<HashMap<UserId, Box<str>>>,
}

impl Identities {
    /// Identities under `key`; `reveal` keeps the map back to raw ids.
    pub fn new(key: &[u8], reveal: bool) -> Identities {
        Identities {
            pseudonymizer: Pseudonymizer::new(key),
            cache: HashMap::new(),
            tombstones: PrehashedSet::default(),
            reveal: reveal.then(HashMap::new),
        }
    }

    /// The pseudonym of `raw` (computed once per distinct id).
    pub fn pseudonym(&mut self, raw: &str) -> UserId {
        if let Some(user) = self.cache.get(raw) {
            return *user;
        }
        let user = self.pseudonymizer.pseudonym(raw);
        if !self.tombstones.contains(&user) {
            self.cache.insert(raw.into(), user);
            if let Some(reveal) = &mut self.reveal {
                reveal.insert(user, raw.into());
            }
        }
        user
    }

    /// Whether `user` has been forgotten.
    pub fn is_forgotten(&self, user: UserId) -> bool {
        self.tombstones.contains(&user)
    }

    /// Forgets `raw`: its pseudonym joins the tombstones and the raw id leaves every map.
    /// Returns the pseudonym.
    pub fn forget(&mut self, raw: &str) -> UserId {
        let user = self.pseudonymizer.pseudonym(raw);
        self.cache.remove(raw);
        if let Some(reveal) = &mut self.reveal {
            reveal.remove(&user);
        }
        self.tombstones.insert(user);
        user
    }

    /// The tombstone list: pseudonyms of forgotten users, sorted.
    pub fn tombstones(&self) -> Vec<UserId> {
        let mut list: Vec<UserId> = self.tombstones.iter().copied().collect();
        list.sort();
        list
    }

    /// The map back to raw ids, when revealing was asked for.
    pub fn reveal_map(&self) -> Option<&HashMap<UserId, Box<str>>> {
        self.reveal.as_ref()
    }
}
