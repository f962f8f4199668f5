//! A baseline file read back (`Baseline::from_json`: a user's file or a
//! ClickHouse row) and compared with records: parsing never panics, and a
//! baseline that parses — whatever its numbers, scopes or roadmap say — is
//! compared and rendered without panicking and with a split that adds up.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tokentap_event::baseline::Baseline;
use tokentap_event::{compare, compare_report, LlmCall, PriceTable, PromptFeatures};

fn records() -> Vec<LlmCall> {
    (0..8)
        .map(|i| {
            let mut r = LlmCall {
                ts: format!("2026-11-23T10:00:0{i}Z"),
                provider: "openai".into(),
                request_model: Some(if i % 2 == 0 { "gpt-4o" } else { "gpt-4o-mini" }.into()),
                status: Some(200),
                input_tokens: Some(1000 + i),
                output_tokens: Some(i),
                features: Some(PromptFeatures {
                    prompt_hash: Some(format!("p{}", i % 3)),
                    prefix_hash: Some("sys".into()),
                    prefix_tokens: Some(1024),
                    conversation_hash: Some("c".into()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            r.apply_cost(&PriceTable::shipped());
            r
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(base) = Baseline::from_json(text) else { return };
    let now = records();
    let c = compare::compare(&base, &now, &[], &compare::Thresholds::default());
    let s = &c.spend;
    let parts = s.volume_usd + s.mix_usd + s.unit_cost_usd;
    if parts.is_finite() && s.change_usd.is_finite() && s.baseline_monthly_usd.abs() < 1e12 {
        assert!((parts - s.change_usd).abs() <= 1e-6 * (1.0 + s.baseline_monthly_usd.abs() + s.now_monthly_usd.abs()));
    }
    let _ = compare_report::markdown(&c);
    let _ = compare_report::html(&c);
});
