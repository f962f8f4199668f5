//! The budgets file (`--budgets FILE`): monthly USD per team label, service,
//! namespace or API key id, in TOML.
//!
//! ```toml
//! [[budget]]
//! name = "search-team"     # unique; the `budget` label of the metrics
//! monthly_usd = 5000
//! scope = "team"           # team | service | namespace | api_key_id
//! value = "search"         # labels['team'] = 'search'
//! ```
//!
//! A file that does not parse or validate is refused whole: at start the
//! collector does not start; on a reload the budgets already loaded stay and
//! the error is logged and counted ([`crate::track`]).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Budgets in one file, at most (each is a few series and a group in a query).
pub const MAX_BUDGETS: usize = 500;
/// Longest name or scope value, in bytes.
const MAX_TEXT: usize = 256;

/// What a budget's spend is: the calls whose column (or team label) equals `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// `labels['team']` of the records (the agent's `--label team=...` or a pod label).
    Team,
    Service,
    Namespace,
    /// The keyed fingerprint of the credential (`api_key_id`).
    ApiKeyId,
}

impl Scope {
    pub const ALL: [Scope; 4] = [Scope::Team, Scope::Service, Scope::Namespace, Scope::ApiKeyId];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Team => "team",
            Scope::Service => "service",
            Scope::Namespace => "namespace",
            Scope::ApiKeyId => "api_key_id",
        }
    }

    /// The expression the scope's value is read from, and whether the hourly
    /// rollup has it (else the raw `llm_calls` rows are read).
    pub fn column(self) -> (&'static str, bool) {
        match self {
            Scope::Team => ("labels['team']", false),
            Scope::Service => ("service", true),
            Scope::Namespace => ("namespace", true),
            Scope::ApiKeyId => ("ifNull(api_key_id, '')", false),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub name: String,
    pub monthly_usd: f64,
    pub scope: Scope,
    pub value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    budget: Vec<Budget>,
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("reading budgets file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("budgets file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("budgets file {path}: budget #{index} ({name:?}): {what}")]
    Invalid { path: PathBuf, index: usize, name: String, what: &'static str },
    #[error("budgets file {path}: two budgets are named {name:?}")]
    Duplicate { path: PathBuf, name: String },
    #[error("budgets file {path}: {n} budgets, at most {MAX_BUDGETS}")]
    TooMany { path: PathBuf, n: usize },
}

/// Parse and check a budgets file's text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<Budget>, BudgetError> {
    let file: File = toml::from_str(text).map_err(|e| BudgetError::Parse { path: path.into(), source: Box::new(e) })?;
    if file.budget.len() > MAX_BUDGETS {
        return Err(BudgetError::TooMany { path: path.into(), n: file.budget.len() });
    }
    let mut names = HashSet::new();
    for (i, b) in file.budget.iter().enumerate() {
        let invalid = |what| BudgetError::Invalid { path: path.into(), index: i + 1, name: b.name.clone(), what };
        if b.name.trim().is_empty() || b.name.len() > MAX_TEXT {
            return Err(invalid("name must be 1 to 256 bytes"));
        }
        if !(b.monthly_usd.is_finite() && b.monthly_usd > 0.0) {
            return Err(invalid("monthly_usd must be a number above 0"));
        }
        if b.value.is_empty() || b.value.len() > MAX_TEXT {
            return Err(invalid("value must be 1 to 256 bytes"));
        }
        if !names.insert(b.name.as_str()) {
            return Err(BudgetError::Duplicate { path: path.into(), name: b.name.clone() });
        }
    }
    Ok(file.budget)
}

/// Read and check a budgets file.
pub fn load(path: &Path) -> Result<(Vec<Budget>, String), BudgetError> {
    let text = std::fs::read_to_string(path).map_err(|source| BudgetError::Read { path: path.into(), source })?;
    Ok((parse(path, &text)?, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<Budget>, String> {
        parse(Path::new("b.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn every_scope_parses() {
        let b = p(r#"
[[budget]]
name = "search"
monthly_usd = 5000
scope = "team"
value = "search"

[[budget]]
name = "checkout"
monthly_usd = 12.5
scope = "service"
value = "checkout"

[[budget]]
name = "payments-ns"
monthly_usd = 100
scope = "namespace"
value = "payments"

[[budget]]
name = "ci-key"
monthly_usd = 1
scope = "api_key_id"
value = "k-1f2e"
"#)
        .unwrap();
        let scopes: Vec<Scope> = b.iter().map(|b| b.scope).collect();
        assert_eq!(scopes, Scope::ALL);
        assert_eq!(b[1].monthly_usd, 12.5);
        assert!(p("").unwrap().is_empty(), "no budgets is a valid file");
        // The Helm chart's one-line form (values.yaml: collector.budgets).
        assert!(p("budget = []").unwrap().is_empty());
        let one = p(r#"budget = [{name = "search", monthly_usd = 5000, scope = "team", value = "search"}]"#).unwrap();
        assert_eq!(one[0].scope, Scope::Team);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let one = |body: &str| p(&format!("[[budget]]\n{body}")).unwrap_err();
        let e = one("name = \"a\"\nmonthly_usd = 0\nscope = \"team\"\nvalue = \"x\"");
        assert!(e.contains("budget #1 (\"a\"): monthly_usd must be a number above 0"), "{e}");
        let e = one("name = \"a\"\nmonthly_usd = -3\nscope = \"team\"\nvalue = \"x\"");
        assert!(e.contains("monthly_usd"), "{e}");
        let e = one("name = \"a\"\nmonthly_usd = 5\nscope = \"pod\"\nvalue = \"x\"");
        assert!(e.contains("unknown variant `pod`"), "{e}");
        let e = one("name = \"a\"\nmonthly_usd = 5\nscope = \"team\"");
        assert!(e.contains("missing field `value`"), "{e}");
        let e = one("name = \"a\"\nmonthly_usd = 5\nscope = \"team\"\nvalue = \"x\"\nteam = \"y\"");
        assert!(e.contains("unknown field `team`"), "{e}");
        let e = one("name = \"\"\nmonthly_usd = 5\nscope = \"team\"\nvalue = \"x\"");
        assert!(e.contains("name must be"), "{e}");
        let e = one("name = \"a\"\nmonthly_usd = 5\nscope = \"team\"\nvalue = \"\"");
        assert!(e.contains("value must be"), "{e}");
        let two = "[[budget]]\nname = \"a\"\nmonthly_usd = 5\nscope = \"team\"\nvalue = \"x\"\n".repeat(2);
        assert!(p(&two).unwrap_err().contains("two budgets are named \"a\""));
        assert!(p("budget = 3").unwrap_err().contains("b.toml"));
        let many = "[[budget]]\nname = \"a{}\"\nmonthly_usd = 5\nscope = \"team\"\nvalue = \"x\"\n";
        let text: String = (0..=MAX_BUDGETS).map(|i| many.replace("{}", &i.to_string())).collect();
        assert!(p(&text).unwrap_err().contains("at most 500"));
        let e = load(Path::new("/nonexistent/budgets.toml")).unwrap_err().to_string();
        assert!(e.contains("reading budgets file /nonexistent/budgets.toml"), "{e}");
    }
}
