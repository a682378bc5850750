//! Layered configuration: defaults < optional TOML file < `TOLLGATE_*` environment variables.
//!
//! Binaries describe their config as a plain struct and read it through a [`Reader`], which
//! collects *every* bad or missing value before failing, so an operator fixes all of them in
//! one go. Sources sit behind the [`Source`] trait: tests pass a map and never touch the
//! process environment.
//!
//! Key names: the environment variable `TOLLGATE_CF_DATABASE_URL` is the file key
//! `cf_database_url` (a top-level TOML key).

use std::collections::HashMap;
use std::fmt::Display;
use std::str::FromStr;

use secrecy::SecretString;

pub mod redis;

pub const ENV_PREFIX: &str = "TOLLGATE_";
/// Environment variable naming the optional TOML file.
pub const CONFIG_FILE_ENV: &str = "TOLLGATE_CONFIG";

/// Somewhere configuration values come from. Keys are lower-case without the prefix.
pub trait Source {
    fn get(&self, key: &str) -> Option<String>;

    /// Keys this source holds that must each be known to the reader (a config file's keys, so
    /// a typo is an error). Open-ended sources such as the environment list none.
    fn declared_keys(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The process environment (`TOLLGATE_<KEY>`).
pub struct EnvSource;

impl Source for EnvSource {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())).ok()
    }
}

/// A fixed map, for tests and for parsed files. Every key in it must be read: an unknown key
/// (a typo in a config file) is an error.
#[derive(Debug, Default, Clone)]
pub struct MapSource(pub HashMap<String, String>);

impl MapSource {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Parses a TOML document of top-level scalar keys.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("config file: {e}"))?;
        let mut map = HashMap::new();
        for (k, v) in table {
            let value = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(format!(
                        "config file: key `{k}` must be a scalar, got {}",
                        other.type_str()
                    ));
                }
            };
            map.insert(k, value);
        }
        Ok(Self(map))
    }
}

impl Source for MapSource {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }

    fn declared_keys(&self) -> Vec<String> {
        self.0.keys().cloned().collect()
    }
}

/// Sources in increasing precedence.
pub struct Layered(pub Vec<Box<dyn Source>>);

impl Layered {
    /// The production stack: the file named by `TOLLGATE_CONFIG` (if any) < environment.
    pub fn from_process() -> Result<Self, String> {
        let mut layers: Vec<Box<dyn Source>> = Vec::new();
        if let Ok(path) = std::env::var(CONFIG_FILE_ENV) {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("config file {path}: {e}"))?;
            layers.push(Box::new(MapSource::from_toml(&text)?));
        }
        layers.push(Box::new(EnvSource));
        Ok(Self(layers))
    }
}

impl Source for Layered {
    fn get(&self, key: &str) -> Option<String> {
        self.0.iter().rev().find_map(|s| s.get(key))
    }

    fn declared_keys(&self) -> Vec<String> {
        self.0.iter().flat_map(|s| s.declared_keys()).collect()
    }
}

/// Start-up of a binary: reads its config from the process (file named by `TOLLGATE_CONFIG`,
/// then the environment) with `parse`; on any problem prints them all and exits with status 2.
pub fn load_or_exit<T>(parse: impl FnOnce(&dyn Source) -> Result<T, ConfigErrors>) -> T {
    let result = Layered::from_process()
        .map_err(|e| ConfigErrors(vec![e]))
        .and_then(|s| parse(&s));
    match result {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            std::process::exit(2);
        }
    }
}

/// Reads typed values and remembers every error.
pub struct Reader<'a> {
    source: &'a dyn Source,
    errors: Vec<String>,
    read: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(source: &'a dyn Source) -> Self {
        Self {
            source,
            errors: Vec::new(),
            read: Vec::new(),
        }
    }

    fn get(&mut self, key: &str) -> Option<String> {
        self.read.push(key.to_owned());
        self.source.get(key)
    }

    /// A value parsed with `FromStr`, or `default` when absent.
    pub fn parse<T>(&mut self, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => default,
            Some(raw) => match raw.trim().parse() {
                Ok(v) => v,
                Err(e) => {
                    self.errors.push(format!(
                        "{}{}: {e} (got {raw:?})",
                        ENV_PREFIX,
                        key.to_ascii_uppercase()
                    ));
                    default
                }
            },
        }
    }

    /// A string, or `default` when absent.
    pub fn string(&mut self, key: &str, default: &str) -> String {
        self.get(key).unwrap_or_else(|| default.to_owned())
    }

    /// An optional string; empty counts as absent.
    pub fn optional(&mut self, key: &str) -> Option<String> {
        self.get(key).filter(|s| !s.trim().is_empty())
    }

    /// A secret that must be present and non-empty.
    pub fn required_secret(&mut self, key: &str) -> SecretString {
        match self.optional(key) {
            Some(v) => SecretString::from(v),
            None => {
                self.errors.push(format!(
                    "{}{} is required",
                    ENV_PREFIX,
                    key.to_ascii_uppercase()
                ));
                SecretString::from(String::new())
            }
        }
    }

    pub fn optional_secret(&mut self, key: &str) -> Option<SecretString> {
        self.optional(key).map(SecretString::from)
    }

    /// Records a cross-field problem.
    pub fn error(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    /// All problems at once, or nothing.
    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        let mut unknown: Vec<String> = self
            .source
            .declared_keys()
            .into_iter()
            .filter(|k| !self.read.contains(k))
            .collect();
        unknown.sort();
        for k in unknown {
            self.errors.push(format!("config file: unknown key `{k}`"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(self.errors))
        }
    }
}

/// Every configuration problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn later_layers_win_and_all_errors_are_reported() {
        let file =
            MapSource::from_toml("listen_addr = \"127.0.0.1:1\"\nworkers = 3\n").expect("toml");
        let env = MapSource::from_pairs([("workers", "x"), ("budget_ms", "-")]);
        let layered = Layered(vec![Box::new(file), Box::new(env)]);
        let mut r = Reader::new(&layered);
        let addr: SocketAddr = r.parse("listen_addr", "0.0.0.0:0".parse().expect("addr"));
        let _workers: u32 = r.parse("workers", 1);
        let _budget: u64 = r.parse("budget_ms", 5);
        let _token = r.required_secret("edge_token");
        assert_eq!(addr.port(), 1);
        let errors = r.finish().expect_err("three problems").0;
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("TOLLGATE_WORKERS"), "{errors:?}");
        assert!(
            errors[2].contains("TOLLGATE_EDGE_TOKEN is required"),
            "{errors:?}"
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let file = MapSource::from_toml("listen_addr = \"x\"\nlisten_adr = \"y\"\n").expect("toml");
        let layered = Layered(vec![Box::new(file), Box::new(EnvSource)]);
        let mut r = Reader::new(&layered);
        let _ = r.string("listen_addr", "");
        let errors = r.finish().expect_err("typo").0;
        assert_eq!(
            errors,
            vec!["config file: unknown key `listen_adr`".to_owned()]
        );
    }

    #[test]
    fn toml_rejects_nested_tables() {
        assert!(MapSource::from_toml("[a]\nb = 1\n").is_err());
    }
}
