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
    /// Column holding the event type (leave out when `event_type` is set).
    #[serde(default)]
    pub event: String,
    /// The event type of every row, for files without an event column (e.g. ratings).
    #[serde(default)]
    pub event_type: Option<String>,
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

/// One `[[segment]]` table: a named set of users, by kind.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SegmentSpec {
    /// Users who performed `event` (with property equalities `where`) at least `at_least`
    /// times within the last `within`, and (with `without`) no event of that type within it.
    Rule {
        /// Segment name.
        name: String,
        /// The event type counted.
        event: String,
        /// Property equality filters, e.g. `where = { course = "math" }`.
        #[serde(default, rename = "where")]
        filters: std::collections::BTreeMap<String, String>,
        /// Minimum number of matching events.
        #[serde(default = "one")]
        at_least: u64,
        /// The window.
        within: Seconds,
        /// An event type excluding members: users with any such event within the window are
        /// not members (e.g. `without = "purchase"` for cart abandoners).
        #[serde(default)]
        without: Option<String>,
    },
    /// Users whose metric (event count, or sum of values) over their counted events within
    /// the last `within` is at or above the `percentile`-th percentile (nearest rank) over all
    /// users with a counted event within it.
    Percentile {
        /// Segment name.
        name: String,
        /// The percentile, 1 to 100.
        percentile: u32,
        /// The window.
        within: Seconds,
        /// Only events of this type count (default: every event).
        #[serde(default)]
        event: Option<String>,
        /// `"count"` (default) or `"value"` (sum of the events' values).
        #[serde(default)]
        metric: crate::views::segments::Metric,
    },
    /// Users seen before but without any event within the last `within`.
    Dormant {
        /// Segment name.
        name: String,
        /// The window.
        within: Seconds,
    },
}

impl SegmentSpec {
    /// The segment as the views define it (names interned).
    pub fn to_view(&self) -> crate::views::Segment {
        use crate::event::Sym;
        use crate::views::segments::{Dormant, Percentile, Rule, Segment};
        match self {
            SegmentSpec::Rule {
                name,
                event,
                filters,
                at_least,
                within,
                without,
            } => {
                let mut filters: Vec<(Sym, Sym)> = filters
                    .iter()
                    .map(|(property, value)| (Sym::of(property), Sym::of(value)))
                    .collect();
                filters.sort();
                Segment::Rule(Rule {
                    name: name.clone(),
                    event: Sym::of(event),
                    filters,
                    at_least: *at_least,
                    within: within.0,
                    without: without.as_deref().map(Sym::of),
                })
            }
            SegmentSpec::Percentile {
                name,
                percentile,
                within,
                event,
                metric,
            } => Segment::Percentile(Percentile {
                name: name.clone(),
                percentile: *percentile,
                within: within.0,
                event: event.as_deref().map(Sym::of),
                metric: *metric,
            }),
            SegmentSpec::Dormant { name, within } => Segment::Dormant(Dormant {
                name: name.clone(),
                within: within.0,
            }),
        }
    }

    /// The segment's name.
    pub fn name(&self) -> &str {
        match self {
            SegmentSpec::Rule { name, .. }
            | SegmentSpec::Percentile { name, .. }
            | SegmentSpec::Dormant { name, .. } => name,
        }
    }
}

/// One `[[retention]]` table: a cohort retention matrix.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    /// Table name; written to `retention_<name>.csv`.
    pub name: String,
    /// Cohort and offset period.
    pub period: crate::views::Period,
    /// The fixed UTC offset whose calendar defines periods.
    #[serde(default)]
    pub utc_offset: UtcOffset,
    /// The event whose first occurrence puts a user in a cohort (default: any event).
    #[serde(default)]
    pub start_event: Option<String>,
    /// The event that counts as a return (default: any event).
    #[serde(default)]
    pub return_event: Option<String>,
    /// Count users active in period `c+k` or later instead of exactly in `c+k`.
    #[serde(default)]
    pub unbounded: bool,
}

impl RetentionSpec {
    /// The retention matrix as the views define it (event names interned).
    pub fn to_view(&self) -> crate::views::RetentionSpec {
        crate::views::RetentionSpec {
            period: self.period,
            utc_offset: self.utc_offset.0,
            start_event: self.start_event.as_deref().map(crate::event::Sym::of),
            return_event: self.return_event.as_deref().map(crate::event::Sym::of),
            unbounded: self.unbounded,
        }
    }
}

/// The `[similarity]` table: user-user cosine over item sets (`similarity.csv`), and the
/// interactions every personalization view reads.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimilaritySpec {
    /// Event types that are interactions (they must name an item).
    pub events: Vec<String>,
    /// Only events with a value at least this count (e.g. ratings of 4 or more).
    #[serde(default)]
    pub min_value: Option<f64>,
    /// Neighbours kept per user.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Items with more users than this generate no pairs.
    #[serde(default = "default_cap")]
    pub max_item_users: u64,
    /// The event type opting a user out of personalization.
    #[serde(default)]
    pub opt_out_event: Option<String>,
    /// The event type opting them back in.
    #[serde(default)]
    pub opt_in_event: Option<String>,
}

impl SimilaritySpec {
    /// The view parameters (names interned).
    pub fn to_view(&self) -> crate::views::similarity::SimilarityParams {
        use crate::event::{Sym, Value};
        use crate::views::similarity::{Consent, Interactions, SimilarityParams};
        SimilarityParams {
            interactions: Interactions {
                events: self.events.iter().map(|e| Sym::of(e)).collect(),
                min_value: self.min_value.and_then(Value::from_f64),
            },
            k: self.k,
            max_item_users: self.max_item_users,
            consent: self.opt_out_event.as_deref().map(|out| Consent {
                opt_out: Sym::of(out),
                opt_in: self.opt_in_event.as_deref().map(Sym::of),
            }),
        }
    }
}

/// The `[item_similarity]` table: item-item cosine over user sets (`item_similarity.csv`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ItemSimilaritySpec {
    /// Neighbours kept per item.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Users with more items than this generate no pairs.
    #[serde(default = "default_cap")]
    pub max_user_items: u64,
}

/// The `[recommendations]` table: top-`n` items per user (`recommendations.csv`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RecommendationsSpec {
    /// Items per user.
    #[serde(default = "default_n")]
    pub n: usize,
    /// The event type with which a user dismisses an item.
    #[serde(default)]
    pub dismiss_event: Option<String>,
    /// The popularity window of the cold-start fallback (default: all time).
    #[serde(default)]
    pub popular_within: Option<Seconds>,
    /// Item catalog (`item,tags` CSV, tags separated by `|`) for the content term.
    #[serde(default)]
    pub catalog: Option<PathBuf>,
    /// Weight of the content term (needs `catalog`).
    #[serde(default)]
    pub content_weight: f64,
}

/// A loaded item catalog with its item names.
#[derive(Clone, Debug, Default)]
pub struct LoadedCatalog {
    /// The tags.
    pub catalog: std::sync::Arc<crate::views::recommend::Catalog>,
    /// `(item, name)` of every catalog item.
    pub names: Vec<(crate::event::Sym, String)>,
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
    /// Segments, written to `segments.csv` and `segment_sizes.csv`.
    #[serde(default)]
    pub segment: Vec<SegmentSpec>,
    /// Retention tables, written to `retention_<name>.csv`.
    #[serde(default)]
    pub retention: Vec<RetentionSpec>,
    /// User-user similarity, written to `similarity.csv`.
    #[serde(default)]
    pub similarity: Option<SimilaritySpec>,
    /// Item-item similarity, written to `item_similarity.csv` (needs `[similarity]`).
    #[serde(default)]
    pub item_similarity: Option<ItemSimilaritySpec>,
    /// Recommendations, written to `recommendations.csv` (needs `[similarity]`).
    #[serde(default)]
    pub recommendations: Option<RecommendationsSpec>,
    /// The catalog of `recommendations.catalog`, loaded with the spec.
    #[serde(skip)]
    pub catalog: Option<LoadedCatalog>,
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
pub const DEFAULT_TICK: i64 = 86_400;
fn default_tick() -> Seconds {
    Seconds(DEFAULT_TICK)
}
fn one() -> u64 {
    1
}
fn default_k() -> usize {
    20
}
fn default_cap() -> u64 {
    500
}
fn default_n() -> usize {
    10
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
        let mut spec = spec;
        spec.validate(path)?;
        spec.load_catalog(path)?;
        Ok(spec)
    }

    /// Loads `recommendations.catalog`, if any.
    fn load_catalog(&mut self, path: &Path) -> Result<(), SpecError> {
        let Some(file) = self
            .recommendations
            .as_ref()
            .and_then(|r| r.catalog.clone())
        else {
            return Ok(());
        };
        let (catalog, names) =
            crate::views::recommend::Catalog::load(&file).map_err(|e| SpecError::Invalid {
                path: path.to_owned(),
                key: "recommendations.catalog".into(),
                message: e.to_string(),
            })?;
        self.catalog = Some(LoadedCatalog {
            catalog: std::sync::Arc::new(catalog),
            names,
        });
        Ok(())
    }

    fn validate_personalization(
        &self,
        invalid: &dyn Fn(&str, String) -> SpecError,
    ) -> Result<(), SpecError> {
        let Some(similarity) = &self.similarity else {
            for (present, key) in [
                (self.item_similarity.is_some(), "item_similarity"),
                (self.recommendations.is_some(), "recommendations"),
            ] {
                if present {
                    return Err(invalid(
                        key,
                        "needs a [similarity] table (it names the interaction events)".into(),
                    ));
                }
            }
            return Ok(());
        };
        if similarity.events.is_empty() || similarity.events.iter().any(|e| e.is_empty()) {
            return Err(invalid(
                "similarity.events",
                "expected a non-empty list of event types".into(),
            ));
        }
        if self.input.item.is_none() {
            return Err(invalid(
                "similarity.events",
                "interactions need items: set input.item".into(),
            ));
        }
        if let Some(min) = similarity.min_value {
            if crate::event::Value::from_f64(min).is_none() {
                return Err(invalid(
                    "similarity.min_value",
                    format!("{min} is out of range"),
                ));
            }
            if self.input.value.is_none() {
                return Err(invalid(
                    "similarity.min_value",
                    "filters on values: set input.value".into(),
                ));
            }
        }
        if similarity.k == 0 {
            return Err(invalid("similarity.k", "expected at least 1".into()));
        }
        if similarity.max_item_users < 2 {
            return Err(invalid(
                "similarity.max_item_users",
                "expected at least 2".into(),
            ));
        }
        if similarity.opt_in_event.is_some() && similarity.opt_out_event.is_none() {
            return Err(invalid(
                "similarity.opt_in_event",
                "needs similarity.opt_out_event".into(),
            ));
        }
        for (key, name) in [
            ("similarity.opt_out_event", &similarity.opt_out_event),
            ("similarity.opt_in_event", &similarity.opt_in_event),
        ] {
            if name.as_deref() == Some("") {
                return Err(invalid(key, "expected an event type, found \"\"".into()));
            }
        }
        if let Some(items) = &self.item_similarity {
            if items.k == 0 {
                return Err(invalid("item_similarity.k", "expected at least 1".into()));
            }
            if items.max_user_items < 2 {
                return Err(invalid(
                    "item_similarity.max_user_items",
                    "expected at least 2".into(),
                ));
            }
        }
        if let Some(recommendations) = &self.recommendations {
            if recommendations.n == 0 {
                return Err(invalid("recommendations.n", "expected at least 1".into()));
            }
            if recommendations.dismiss_event.as_deref() == Some("") {
                return Err(invalid(
                    "recommendations.dismiss_event",
                    "expected an event type, found \"\"".into(),
                ));
            }
            if recommendations.popular_within.is_some_and(|w| w.0 < 1) {
                return Err(invalid(
                    "recommendations.popular_within",
                    "expected at least 1 second".into(),
                ));
            }
            let weight = recommendations.content_weight;
            if !weight.is_finite() || !(0.0..=1_000.0).contains(&weight) {
                return Err(invalid(
                    "recommendations.content_weight",
                    format!("expected a number from 0 to 1000, found {weight}"),
                ));
            }
            if weight > 0.0 && recommendations.catalog.is_none() {
                return Err(invalid(
                    "recommendations.content_weight",
                    "needs recommendations.catalog".into(),
                ));
            }
        }
        Ok(())
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
        match (&input.event_type, input.event.is_empty()) {
            (Some(kind), true) if !kind.trim().is_empty() => {}
            (Some(_), true) => {
                return Err(invalid(
                    "input.event_type",
                    "expected an event type, found \"\"".into(),
                ))
            }
            (Some(_), false) => {
                return Err(invalid(
                    "input.event_type",
                    "set either input.event (a column) or input.event_type, not both".into(),
                ))
            }
            (None, _) => {}
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
        self.validate_segments(&invalid)?;
        self.validate_personalization(&invalid)?;
        let mut seen = std::collections::BTreeSet::new();
        for retention in &self.retention {
            if !valid_name(&retention.name) {
                return Err(invalid(
                    "retention.name",
                    format!("\"{}\" must be letters, digits, '_' or '-'", retention.name),
                ));
            }
            if !seen.insert(retention.name.as_str()) {
                return Err(invalid(
                    "retention.name",
                    format!("\"{}\" is used twice", retention.name),
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

    fn validate_segments(
        &self,
        invalid: &dyn Fn(&str, String) -> SpecError,
    ) -> Result<(), SpecError> {
        let mut seen = std::collections::BTreeSet::new();
        for segment in &self.segment {
            let name = segment.name();
            if name.is_empty() {
                return Err(invalid("segment.name", "expected a non-empty name".into()));
            }
            if !seen.insert(name) {
                return Err(invalid("segment.name", format!("\"{name}\" is used twice")));
            }
            let within = match segment {
                SegmentSpec::Rule {
                    filters,
                    within,
                    without,
                    ..
                } => {
                    if without.as_deref() == Some("") {
                        return Err(invalid(
                            "segment.without",
                            format!("segment \"{name}\": expected an event type, found \"\""),
                        ));
                    }
                    if let Some(property) =
                        filters.keys().find(|p| !self.input.properties.contains(p))
                    {
                        return Err(invalid(
                            "segment.where",
                            format!(
                                "segment \"{name}\" filters on \"{property}\", which is not \
                                 listed in input.properties"
                            ),
                        ));
                    }
                    within
                }
                SegmentSpec::Percentile {
                    percentile, within, ..
                } => {
                    if !(1..=100).contains(percentile) {
                        return Err(invalid(
                            "segment.percentile",
                            format!("segment \"{name}\": expected 1 to 100, found {percentile}"),
                        ));
                    }
                    within
                }
                SegmentSpec::Dormant { within, .. } => within,
            };
            if within.0 < 1 {
                return Err(invalid(
                    "segment.within",
                    format!("segment \"{name}\": expected at least 1 second"),
                ));
            }
        }
        Ok(())
    }

    /// The run's name (the spec file's stem unless set).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("behave")
    }

    /// The recommendation parameters, when `[recommendations]` is present (with the loaded
    /// catalog).
    pub fn recommend_params(&self) -> Option<crate::views::recommend::RecommendParams> {
        let r = self.recommendations.as_ref()?;
        Some(crate::views::recommend::RecommendParams {
            n: r.n,
            dismiss: r.dismiss_event.as_deref().map(crate::event::Sym::of),
            popular_within: r.popular_within.map(|w| w.0),
            catalog: self.catalog.as_ref().map(|c| c.catalog.clone()),
            content_weight: (r.content_weight * 1e6).round() as i64,
        })
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
        ];
        if self.event_type.is_none() {
            columns.push(("input.event".to_string(), self.event.clone()));
        }
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[input]\nevents = \"x.csv\"\nuser = \"u\"\ntime = \"t\"\nevent = \"e\"\nproperties = [\"course\"]\n";

    fn parse(extra: &str) -> Result<Spec, SpecError> {
        Spec::parse(&format!("{BASE}{extra}"), Path::new("s.toml"))
    }

    #[test]
    fn segments_and_retention_tables_parse() {
        let spec = parse(
            "[[segment]]\nname = \"struggling\"\nkind = \"rule\"\nevent = \"quiz_fail\"\n\
             where = { course = \"math\" }\nat_least = 3\nwithin = \"14d\"\n\
             [[segment]]\nname = \"top\"\nkind = \"percentile\"\npercentile = 90\nwithin = \"7d\"\n\
             [[segment]]\nname = \"asleep\"\nkind = \"dormant\"\nwithin = \"2w\"\n\
             [[retention]]\nname = \"weekly\"\nperiod = \"week\"\nutc_offset = \"+05:30\"\n",
        )
        .unwrap();
        assert_eq!(spec.segment.len(), 3);
        assert_eq!(
            spec.segment[0],
            SegmentSpec::Rule {
                name: "struggling".into(),
                event: "quiz_fail".into(),
                filters: [("course".to_string(), "math".to_string())].into(),
                at_least: 3,
                within: Seconds(14 * 86_400),
                without: None,
            }
        );
        assert_eq!(spec.segment[2].name(), "asleep");
        let abandoners = parse(
            "[[segment]]\nname = \"abandoners\"\nkind = \"rule\"\nevent = \"add_to_cart\"\n\
             without = \"purchase\"\nwithin = \"7d\"\n",
        )
        .unwrap();
        let crate::views::Segment::Rule(rule) = abandoners.segment[0].to_view() else {
            panic!("not a rule");
        };
        assert_eq!(rule.without, Some(crate::event::Sym::of("purchase")));
        assert_eq!(rule.at_least, 1);
        let empty = parse(
            "[[segment]]\nname = \"a\"\nkind = \"rule\"\nevent = \"x\"\nwithin = \"1d\"\nwithout = \"\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(empty.contains("segment.without"), "{empty}");
        let spenders = parse(
            "[[segment]]\nname = \"top\"\nkind = \"percentile\"\npercentile = 90\n\
             event = \"purchase\"\nmetric = \"value\"\nwithin = \"8w\"\n",
        )
        .unwrap();
        let crate::views::Segment::Percentile(top) = spenders.segment[0].to_view() else {
            panic!("not a percentile");
        };
        assert_eq!(top.event, Some(crate::event::Sym::of("purchase")));
        assert_eq!(top.metric, crate::views::segments::Metric::Value);
        assert_eq!(top.within, 8 * 7 * 86_400);
        assert_eq!(spec.retention[0].period, crate::views::Period::Week);
        assert_eq!(spec.retention[0].utc_offset, UtcOffset(19_800));
        assert_eq!(spec.k_anonymity, 5);
    }

    #[test]
    fn segment_mistakes_are_named() {
        let error = |extra: &str| parse(extra).unwrap_err().to_string();
        let unknown =
            error("[[segment]]\nname = \"a\"\nkind = \"dormant\"\nwithin = \"1d\"\ncolour = 1\n");
        assert!(unknown.contains("colour"), "{unknown}");
        let kind = error("[[segment]]\nname = \"a\"\nkind = \"magic\"\nwithin = \"1d\"\n");
        assert!(kind.contains("magic"), "{kind}");
        let filter = error(
            "[[segment]]\nname = \"a\"\nkind = \"rule\"\nevent = \"x\"\nwhere = { plan = \"pro\" }\nwithin = \"1d\"\n",
        );
        assert!(
            filter.contains("plan") && filter.contains("input.properties"),
            "{filter}"
        );
        let percentile = error(
            "[[segment]]\nname = \"a\"\nkind = \"percentile\"\npercentile = 0\nwithin = \"1d\"\n",
        );
        assert!(percentile.contains("segment.percentile"), "{percentile}");
        let metric = error(
            "[[segment]]\nname = \"a\"\nkind = \"percentile\"\npercentile = 90\nmetric = \"revenue\"\nwithin = \"1d\"\n",
        );
        assert!(
            metric.contains("revenue") && metric.contains("count") && metric.contains("value"),
            "{metric}"
        );
        let twice = error(
            "[[retention]]\nname = \"w\"\nperiod = \"week\"\n[[retention]]\nname = \"w\"\nperiod = \"day\"\n",
        );
        assert!(twice.contains("used twice"), "{twice}");
        let period = error("[[retention]]\nname = \"w\"\nperiod = \"year\"\n");
        assert!(period.contains("year"), "{period}");
    }
}
