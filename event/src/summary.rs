//! A plain-text spend summary of records: calls, tokens and cost per provider
//! and model, most expensive first. Used by the demo; the assessment report
//! builds on it.
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::LlmCall;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_input_tokens: u64,
    /// Calls without a price (unknown model or no usage).
    pub unpriced_calls: u64,
    pub cost_usd: f64,
}

impl Line {
    fn add(&mut self, r: &LlmCall) {
        self.calls += 1;
        self.input_tokens += r.input_tokens.unwrap_or(0);
        self.output_tokens += r.output_tokens.unwrap_or(0);
        self.cached_input_tokens += r.cached_input_tokens.unwrap_or(0);
        match r.cost_usd {
            Some(c) => self.cost_usd += c,
            None => self.unpriced_calls += 1,
        }
    }
}

/// (provider, model).
pub type Key = (String, String);

/// Per (provider, model) lines and the total.
pub fn summarize(records: &[LlmCall]) -> (Vec<(Key, Line)>, Line) {
    let mut by: BTreeMap<Key, Line> = BTreeMap::new();
    let mut total = Line::default();
    for r in records {
        let model = r.response_model.clone().or_else(|| r.request_model.clone()).unwrap_or_else(|| "(unknown)".into());
        by.entry((r.provider.clone(), model)).or_default().add(r);
        total.add(r);
    }
    (rank(by), total)
}

/// Lines most expensive first (then most calls, then by key).
pub fn rank<K: Ord>(by: BTreeMap<K, Line>) -> Vec<(K, Line)> {
    let mut lines: Vec<_> = by.into_iter().collect();
    lines.sort_by(|a, b| b.1.cost_usd.total_cmp(&a.1.cost_usd).then(b.1.calls.cmp(&a.1.calls)));
    lines
}

impl Line {
    /// The sum of two lines.
    pub fn plus(&self, o: &Line) -> Line {
        Line {
            calls: self.calls + o.calls,
            input_tokens: self.input_tokens + o.input_tokens,
            output_tokens: self.output_tokens + o.output_tokens,
            cached_input_tokens: self.cached_input_tokens + o.cached_input_tokens,
            unpriced_calls: self.unpriced_calls + o.unpriced_calls,
            cost_usd: self.cost_usd + o.cost_usd,
        }
    }
}

/// Per-service spend, most expensive first (`service` null -> "(unattributed)").
pub fn by_service(records: &[LlmCall]) -> Vec<(String, Line)> {
    let mut by: BTreeMap<String, Line> = BTreeMap::new();
    for r in records {
        by.entry(r.service.clone().unwrap_or_else(|| "(unattributed)".into())).or_default().add(r);
    }
    rank(by)
}

pub fn render(records: &[LlmCall]) -> String {
    let (lines, total) = summarize(records);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<22} {:<32} {:>6} {:>12} {:>10} {:>10} {:>12}",
        "provider", "model", "calls", "input", "cached", "output", "cost_usd"
    );
    for ((provider, model), l) in &lines {
        let _ = writeln!(
            s,
            "{:<22} {:<32} {:>6} {:>12} {:>10} {:>10} {:>12.6}{}",
            provider,
            model,
            l.calls,
            l.input_tokens,
            l.cached_input_tokens,
            l.output_tokens,
            l.cost_usd,
            if l.unpriced_calls > 0 { format!("  ({} unpriced)", l.unpriced_calls) } else { String::new() }
        );
    }
    let _ = writeln!(
        s,
        "{:<22} {:<32} {:>6} {:>12} {:>10} {:>10} {:>12.6}",
        "total", "", total.calls, total.input_tokens, total.cached_input_tokens, total.output_tokens, total.cost_usd
    );
    let _ = writeln!(s, "\n{:<55} {:>6} {:>12} {:>10} {:>12}", "service", "calls", "input", "output", "cost_usd");
    for (service, l) in by_service(records) {
        let _ = writeln!(
            s,
            "{:<55} {:>6} {:>12} {:>10} {:>12.6}",
            service, l.calls, l.input_tokens, l.output_tokens, l.cost_usd
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(provider: &str, model: &str, input: u64, output: u64, cost: Option<f64>) -> LlmCall {
        LlmCall {
            provider: provider.into(),
            response_model: Some(model.into()),
            input_tokens: Some(input),
            output_tokens: Some(output),
            cost_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn groups_sorts_and_totals() {
        let rs = vec![
            rec("openai", "gpt-4o-mini", 10, 5, Some(0.001)),
            rec("anthropic", "claude", 100, 50, Some(0.5)),
            rec("openai", "gpt-4o-mini", 20, 5, Some(0.002)),
            rec("openai", "mystery", 1, 1, None),
        ];
        let (lines, total) = summarize(&rs);
        assert_eq!(lines[0].0, ("anthropic".to_string(), "claude".to_string()));
        let mini = &lines.iter().find(|l| l.0 .1 == "gpt-4o-mini").unwrap().1;
        assert_eq!((mini.calls, mini.input_tokens, mini.output_tokens), (2, 30, 10));
        assert!((total.cost_usd - 0.503).abs() < 1e-12);
        assert_eq!(total.unpriced_calls, 1);
        let text = render(&rs);
        assert!(text.contains("(1 unpriced)"));
        assert!(text.contains("(unattributed)"));
        assert_eq!(text.lines().count(), 8);
        let mut svc = rs.clone();
        svc[1].service = Some("search".into());
        let by = by_service(&svc);
        assert_eq!(by[0].0, "search");
        assert_eq!(by[1].1.calls, 3);
    }
}
