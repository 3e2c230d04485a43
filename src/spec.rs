//! The dataflow spec: a TOML file naming the input, how its columns map onto the event model,
//! the privacy settings, and which views to maintain with which parameters.
//!
//! Every key is documented in the README ("Spec reference"). Unknown keys and wrong types are
//! rejected before any data is read, with the file, line, column and key in the message.

use crate::time::{format_duration, parse_duration, parse_offset};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a spec could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The spec file could not be read.
    #[error("cannot read spec {path}: {source}")]
    Read {
        /// The spec file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The spec is not valid TOML or does not match the schema.
    #[error("invalid spec {path}: {message}")]
    Parse {
        /// The spec file.
        path: PathBuf,
        /// What is wrong, with line and column and the offending key.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("invalid spec {path}: key `{key}`: {message}")]
    Invalid {
        /// The spec file.
        path: PathBuf,
        /// The offending key, dotted (`input.delimiter`).
        key: String,
        /// What is expected.
        message: String,
    },
}

/// A duration in seconds, written in a spec as `"30m"`, `"14d"`, `"8w"` or a number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seconds(pub i64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30m\", \"14d\", \"8w\" or a number of seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seconds, E> {
                if v < 0 {
                    return Err(E::custom(format!("negative duration {v}")));
                }
                Ok(Seconds(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seconds, E> {
                i64::try_from(v)
                    .map(Seconds)
                    .map_err(|_| E::custom("duration too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Seconds, E> {
                parse_duration(v).map(Seconds).ok_or_else(|| {
                    E::custom(format!(
                        "invalid duration \"{v}\": expected e.g. \"30m\", \"14d\", \"8w\""
                    ))
                })
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// A fixed UTC offset in seconds east, written `"+05:30"`, `"-01:00"` or `"Z"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcOffset(pub i64);

impl<'de> Deserialize<'de> for UtcOffset {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_offset(&text).map(UtcOffset).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid UTC offset \"{text}\": expected \"+HH:MM\", \"-HH:MM\" or \"Z\""
            ))
        })
    }
}

/// Input file formats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma (or `delimiter`) separated values with a header row.
    #[default]
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// The `[input]` table: where events come from and how their columns map onto the event model.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Event file, relative to the current directory (the repository root for shipped specs).
    pub events: PathBuf,
    /// Forget-request file (`user,time` CSV), if any.
    #[serde(default)]
    pub forget: Option<PathBuf>,
    /// File format.
    #[serde(default)]
    pub format: Format,
    /// CSV field delimiter, one ASCII character (`"\t"` for tab-separated files).
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Column holding the user id.
    pub user: String,
    /// Column holding the event time.
    pub time: String,
    /// Column holding the event type.
    pub event: String,
    /// Column holding the item id, if any.
    #[serde(default)]
    pub item: Option<String>,
    /// Column holding a unique event id, used to drop duplicates.
    #[serde(default)]
    pub id: Option<String>,
    /// Column holding a numeric value.
    #[serde(default)]
    pub value: Option<String>,
    /// Columns kept as string properties (all other unmapped columns are dropped).
    #[serde(default)]
    pub properties: Vec<String>,
    /// Columns holding personal data: never read into the dataflow, never written anywhere.
    #[serde(default)]
    pub pii: Vec<String>,
    /// How far behind the newest event time a row may arrive and still be accepted.
    #[serde(default = "zero_seconds")]
    pub allowed_lateness: Seconds,
    /// Rows longer than this many bytes are rejected as `too_long`.
    #[serde(default = "default_max_row_bytes")]
    pub max_row_bytes: usize,
    /// Name of the environment variable holding the pseudonymization key.
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// File holding the pseudonymization key (used when the variable is unset).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The key itself (for demos and fixtures only; used when neither of the above is set).
    #[serde(default)]
    pub key: Option<String>,
}

/// The `[sessions]` table: sessionization of each user's events.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSpec {
    /// A gap longer than this starts a new session.
    #[serde(default = "default_gap")]
    pub gap: Seconds,
}

impl Default for SessionsSpec {
    fn default() -> Self {
        SessionsSpec { gap: default_gap() }
    }
}

/// The `[engagement]` table: per-user churn features.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngagementSpec {
    /// The UTC offset whose calendar days count as active days.
    #[serde(default)]
    pub utc_offset: UtcOffset,
}

/// A whole spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// A name for the run (default: the spec file's stem); the default out dir is `out/<name>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Epoch length: input is batched into epochs of this many seconds of event time; views are
    /// exact at every epoch boundary and at the final as-of time.
    #[serde(default = "default_tick")]
    pub tick: Seconds,
    /// Segment sizes below this are reported as suppressed.
    #[serde(default = "default_k_anonymity")]
    pub k_anonymity: u64,
    /// The input.
    pub input: InputSpec,
    /// Sessionization, written to `sessions.csv` when present.
    #[serde(default)]
    pub sessions: Option<SessionsSpec>,
    /// Engagement features, written to `engagement.csv` when present.
    #[serde(default)]
    pub engagement: Option<EngagementSpec>,
}

fn default_delimiter() -> String {
    ",".into()
}
fn zero_seconds() -> Seconds {
    Seconds(0)
}
fn default_max_row_bytes() -> usize {
    64 * 1024
}
fn default_key_env() -> String {
    "BEHAVE_KEY".into()
}
fn default_gap() -> Seconds {
    Seconds(30 * 60)
}
/// The default epoch length (see BENCHMARKS.md for how throughput depends on it).
pub const DEFAULT_TICK: i64 = 3_600;
fn default_tick() -> Seconds {
    Seconds(DEFAULT_TICK)
}
fn default_k_anonymity() -> u64 {
    5
}

impl Spec {
    /// Reads and validates a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut spec = Spec::parse(&text, path)?;
        if spec.name.is_none() {
            spec.name = path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned());
        }
        Ok(spec)
    }

    /// Parses and validates spec text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Spec, SpecError> {
        let spec: Spec = toml::from_str(text).map_err(|e| SpecError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(text, &e),
        })?;
        spec.validate(path)?;
        Ok(spec)
    }

    fn validate(&self, path: &Path) -> Result<(), SpecError> {
        let invalid = |key: &str, message: String| SpecError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
        let input = &self.input;
        if input.delimiter.len() != 1 || !input.delimiter.is_ascii() {
            return Err(invalid(
                "input.delimiter",
                format!("expected one ASCII character, found {:?}", input.delimiter),
            ));
        }
        if self.tick.0 < 1 {
            return Err(invalid("tick", "expected at least 1 second".into()));
        }
        if input.max_row_bytes == 0 {
            return Err(invalid("input.max_row_bytes", "expected at least 1".into()));
        }
        let mapped = input.mapped_columns();
        for (key, column) in &mapped {
            if column.is_empty() {
                return Err(invalid(key, "expected a column name, found \"\"".into()));
            }
            if input.pii.iter().any(|p| p == column) {
                return Err(invalid(
                    "input.pii",
                    format!("column \"{column}\" is mapped by `{key}` and cannot also be PII"),
                ));
            }
        }
        for (i, (key, column)) in mapped.iter().enumerate() {
            if let Some((other, _)) = mapped[..i].iter().find(|(_, c)| c == column) {
                return Err(invalid(
                    key,
                    format!("column \"{column}\" is already mapped by `{other}`"),
                ));
            }
        }
        if let Some(sessions) = &self.sessions {
            if sessions.gap.0 < 1 {
                return Err(invalid("sessions.gap", "expected at least 1 second".into()));
            }
        }
        Ok(())
    }

    /// The run's name (the spec file's stem unless set).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("behave")
    }

    /// The session gap used by sessions and engagement.
    pub fn session_gap(&self) -> i64 {
        self.sessions.clone().unwrap_or_default().gap.0
    }
}

impl InputSpec {
    /// `(spec key, column)` for every column the spec maps onto the event model, properties included.
    pub fn mapped_columns(&self) -> Vec<(String, String)> {
        let mut columns = vec![
            ("input.user".to_string(), self.user.clone()),
            ("input.time".to_string(), self.time.clone()),
            ("input.event".to_string(), self.event.clone()),
        ];
        for (key, column) in [
            ("item", &self.item),
            ("id", &self.id),
            ("value", &self.value),
        ] {
            if let Some(column) = column {
                columns.push((format!("input.{key}"), column.clone()));
            }
        }
        for column in &self.properties {
            columns.push(("input.properties".to_string(), column.clone()));
        }
        columns
    }

    /// The delimiter as a byte.
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter.as_bytes()[0]
    }
}

/// Renders a TOML error as `line L, column C: message`.
fn describe_toml_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let column = before.len() - line_start + 1;
            let line_text = text[line_start..].lines().next().unwrap_or("");
            match line_text.split_once('=').map(|(key, _)| key.trim()) {
                Some(key) if !key.is_empty() && !message.contains(&format!("`{key}`")) => {
                    format!("line {line}, column {column}: key `{key}`: {message}")
                }
                _ => format!("line {line}, column {column}: {message}"),
            }
        }
        None => message.to_string(),
    }
}
