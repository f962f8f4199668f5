//! Synthetic calls for the dashboard bench, generated inside the ClickHouse
//! engine (`INSERT ... SELECT FROM numbers()`): no rows cross HTTP, and the
//! inserts go through `llm_calls` so the materialized rollups fill as they do
//! in production.
//!
//! Each row's values come from hashes of its number, so a size is the same
//! data on every run. Shape (chosen so the rollups' cardinality is realistic,
//! which is what decides how much they save): 48 services, log-uniformly
//! skewed (the busiest ~20x the quietest); a service lives in one of 16
//! namespaces and one of 3 clusters and mostly calls its two models out of 24
//! (8 providers, two of them unpriced); 45% streamed (with a time to first
//! token); ~2.7% errors (most of them 429s); 40% with an end user; prompt
//! features with repeated prompts, shared prefixes, multi-turn conversations,
//! tool loops, embeddings sent one at a time. One traffic row per 20 calls.
//! Kept small for disk (100 M rows must fit well under 15 GB), where no panel
//! reads the values: response and request ids and container ids stay null,
//! prompt features carry no SimHash (so the report finds no near-duplicates),
//! durations are whole milliseconds, a service has 16 pids, and event ids are
//! the row numbers (unique, but compressible where random UUIDs cost 11 bytes a
//! row). What is left is ~85 bytes a call on disk, most of it the features.
//! The columns a live collector fills as calls arrive (repeats, conversation
//! turns: collector/src/repeats.rs) are drawn to match those shapes (a tenth
//! of the chat calls repeat a prompt; turns 1-6; growing from turn 4), not
//! computed over the history: they only decide which rollup rows exist.
use std::time::{Duration, Instant};

use serde_json::Value;
use tokentap_e2e::ClickHouse;

/// Days of data, ending at the bench's `end` (unix seconds).
pub const DAYS: u64 = 30;

/// A table with `llm_calls`' columns and the Null engine, feeding copies of
/// the rollups' views: calls that reach the rollups without raw rows on disk.
pub const ROLLUP_ONLY: &str = "llm_calls_rollup_only";

/// Calls per traffic row.
const CALLS_PER_TRAFFIC_ROW: u64 = 20;

/// A uniform number in [0, 1) from the row's number and a salt.
fn u(salt: u32) -> String {
    format!("(cityHash64(n, {salt}) % 1000000) / 1000000.")
}

/// `h_` + 24 hex digits, as the agent's keyed hashes look, of an expression.
fn hash(expr: &str) -> String {
    format!("concat('h_', lower(hex(cityHash64({expr}))), substring(lower(hex(cityHash64({expr}, 1))), 1, 8))")
}

const MODELS: &str = "['gpt-4o', 'gpt-4o-mini', 'gpt-4.1', 'gpt-4.1-mini', 'gpt-5', 'gpt-5-mini', 'o3', \
    'text-embedding-3-small', 'claude-sonnet-4-5', 'claude-opus-4-1', 'claude-3-5-haiku-20241022', \
    'claude-haiku-4-5', 'gemini-2.5-pro', 'gemini-2.5-flash', 'gemini-2.0-flash-lite', 'text-embedding-004', \
    'anthropic.claude-3-5-sonnet-20241022-v2:0', 'amazon.nova-pro-v1:0', 'gpt-4o-2024-08-06', \
    'mistral-large-latest', 'llama-3.3-70b-versatile', 'deepseek-chat', 'llama3.2', 'qwen2.5-coder']";
const PROVIDERS: &str = "['openai', 'openai', 'openai', 'openai', 'openai', 'openai', 'openai', 'openai', \
    'anthropic', 'anthropic', 'anthropic', 'anthropic', 'google', 'google', 'google', 'google', 'bedrock', \
    'bedrock', 'azure_openai', 'mistral', 'groq', 'deepseek', 'ollama', 'openai_compatible']";
const HOSTS: &str = "['api.openai.com', 'api.openai.com', 'api.openai.com', 'api.openai.com', 'api.openai.com', \
    'api.openai.com', 'api.openai.com', 'api.openai.com', 'api.anthropic.com', 'api.anthropic.com', \
    'api.anthropic.com', 'api.anthropic.com', 'generativelanguage.googleapis.com', \
    'generativelanguage.googleapis.com', 'generativelanguage.googleapis.com', 'generativelanguage.googleapis.com', \
    'bedrock-runtime.us-east-1.amazonaws.com', 'bedrock-runtime.us-east-1.amazonaws.com', \
    'corp.openai.azure.com', 'api.mistral.ai', 'api.groq.com', 'api.deepseek.com', 'localhost', 'llm.internal']";
/// USD per million input and output tokens; negative: no price (cost null).
const PRICE_IN: &str = "[2.5, 0.15, 2, 0.4, 1.25, 0.25, 2, 0.02, 3, 15, 0.8, 1, 1.25, 0.3, 0.075, 0.1, 3, 0.8, 2.5, \
    2, 0.59, 0.27, -1, -1]";
const PRICE_OUT: &str = "[10, 0.6, 8, 1.6, 10, 2, 8, 0, 15, 75, 4, 5, 10, 2.5, 0.3, 0, 15, 3.2, 10, 6, 0.79, 1.1, \
    -1, -1]";
const NAMESPACES: &str = "['payments', 'search', 'support', 'checkout', 'ml-platform', 'growth', 'risk', 'docs', \
    'mobile-api', 'analytics', 'ops', 'legal', 'marketing', 'data', 'platform', 'sandbox']";

/// The per-row dimensions every insert shares: service `s` (0..47, log-uniform),
/// model index `m` (0..23) and the strings that follow from them.
fn dims(first: u64, count: u64, day_start: u64) -> String {
    format!(
        "SELECT *, {MODELS}[m + 1] AS model_name, {PROVIDERS}[m + 1] AS provider_name, {HOSTS}[m + 1] AS host, \
           m IN (7, 15) AS embedding, {NAMESPACES}[s % 16 + 1] AS ns, concat('svc-', leftPad(toString(s), 2, '0')) AS svc, \
           ['prod-eu', 'prod-us', 'staging'][s % 3 + 1] AS cl, ['python3', 'node', 'java', 'api-server', 'worker', 'bun', \
           'ruby', 'app'][s % 8 + 1] AS comm_name \
         FROM (SELECT number AS n, least(toUInt32(floor(pow(48, {us}))) - 1, 47) AS s, \
           toUInt32(multiIf({um} < 0.7, (s * 5) % 24, {um} < 0.9, (s * 11 + 7) % 24, floor({um2} * 24))) AS m, \
           toDateTime64({day_start}, 6, 'UTC') + toIntervalMicrosecond(toUInt64({ut} * 86400e6)) AS at \
           FROM numbers({first}, {count}))",
        us = u(1),
        um = u(2),
        um2 = u(3),
        ut = u(4),
    )
}

/// The INSERT of `count` calls numbered from `first`, their `ts` within the day
/// starting at `day_start` (one partition per insert, as a live collector's
/// inserts are), into `table`: `llm_calls`, or `ROLLUP_ONLY` where the raw rows
/// would not fit on the disk (then without the prompt features, which only
/// raw rows keep).
pub fn calls_insert(table: &str, first: u64, count: u64, day_start: u64) -> String {
    let stream = format!("(NOT embedding AND {} < 0.45)", u(5));
    let status =
        format!("multiIf({s} < 0.015, 429, {s} < 0.022, 500, {s} < 0.025, 400, {s} < 0.027, 529, 200)", s = u(7));
    let input = format!("if(st >= 400, NULL, toUInt64(20 + floor(pow({}, 2) * 30000)))", u(8));
    let output = format!("if(st >= 400, NULL, if(embedding, 0, toUInt64(1 + floor(pow({}, 3) * 4000))))", u(9));
    let cached = format!("if(st >= 400, NULL, if({} < 0.3, toUInt64(floor(inp * 0.6)), 0))", u(10));
    // A tenth of the prompts repeat within their service (response caching);
    // conversations are runs of 6 consecutive calls; 5% of chat calls loop on a tool.
    let prompt =
        format!("if({} < 0.1, concat('d', toString(s), '-', toString(cityHash64(n, 16) % 500)), toString(n))", u(15));
    // As the collector numbers them: 1 and up for the repeated ones.
    let repeat = format!("if(NOT embedding AND {} < 0.1, 1 + cityHash64(n, 31) % 20, 0)", u(15));
    let features = if table == ROLLUP_ONLY { "''".to_owned() } else { features(&prompt) };
    format!(
        "INSERT INTO {table} (event_id, ts, duration_ms, ttft_ms, provider, operation, request_model, response_model, \
           model, stream, status, input_tokens, output_tokens, cached_input_tokens, usage_source, cost_usd, server, path, \
           http_version, tls_library, pid, comm, exe, pod, namespace, workload, service, end_user, api_key_id, feature, \
           labels, cluster, features, workload_kind, inserted_at, prompt_repeat, conversation_turn, \
           conversation_first_input, conversation_growing) \
         SELECT reinterpretAsUUID(reverse(unhex(leftPad(hex(n), 32, '0')))), at, if({dnull} < 0.005, NULL, round(if(embedding, 50 + 200 * {d}, 300 + pow({d}, 3) * 60000))), \
           if({stream}, round(100 + pow({tt}, 2) * 3000), NULL), provider_name, \
           multiIf(embedding, 'embeddings', provider_name = 'anthropic', 'messages', provider_name = 'google', \
             'generate_content', provider_name = 'bedrock', 'converse', 'chat'), \
           model_name, if(st >= 400, NULL, model_name), model_name, {stream}, st, inp, outp, {cached}, \
           if(st >= 400, NULL, multiIf({us} < 0.9, 'reported', {us} < 0.98, 'estimated', 'headers')), \
           if({PRICE_IN}[m + 1] < 0 OR st >= 400, NULL, \
             (ifNull(inp, 0) * {PRICE_IN}[m + 1] + ifNull(outp, 0) * {PRICE_OUT}[m + 1]) / 1e6), \
           host, if(embedding, '/v1/embeddings', '/v1/chat/completions'), if(s % 2 = 0, 'h2', '1.1'), \
           ['openssl', 'go_tls', 'boringssl', 'rustls', 'jsse', NULL][s % 6 + 1], toUInt32(1000 + s * 16 + n % 16), \
           comm_name, concat('/usr/bin/', comm_name), concat(svc, '-', toString(cityHash64(n, 12) % 8)), \
           ns, svc, svc, if({eu} < 0.4, concat('user-', toString(cityHash64(n, 13) % 20000)), NULL), \
           concat('k_', toString(s % 20)), ['chat', 'search', 'summarize', 'classify', 'extract', NULL][cityHash64(n, 14) % 6 + 1], \
           map('team', ns, 'cost-center', concat('cc-', toString(s % 7))), cl, {features}, 'Deployment', \
           toDateTime(at) + 1 + n % 3, {repeat}, turn, first_input, \
           if(turn >= 4 AND ifNull(inp, 0) > 2 * first_input, if(turn = 4, 2, 1), 0) \
         FROM (SELECT *, {status} AS st, {input} AS inp, {output} AS outp, if(embedding, 0, 1 + n % 6) AS turn, \
           if(embedding, 0, toUInt64(20 + floor(pow({fi}, 2) * 8000))) AS first_input FROM ({dims}))",
        dnull = u(26),
        d = u(6),
        tt = u(27),
        us = u(28),
        eu = u(29),
        fi = u(30),
        dims = dims(first, count, day_start),
    )
}

/// The record's `features` JSON: repeated prompts, shared prefixes, multi-turn
/// conversations, tool loops, embeddings sent one at a time.
fn features(prompt: &str) -> String {
    format!(
        "if(embedding, \
           concat('{{\"prompt_hash\":\"', {ph}, '\",\"embedding_inputs\":', if({e} < 0.6, '1', toString(1 + cityHash64(n, 17) % 64)), \
             ',\"message_count\":0,\"tool_calls\":[],\"json_share\":0,\"whitespace_share\":0,\"duplicate_chunk_share\":0}}'), \
           concat('{{\"prompt_hash\":\"', {ph}, '\",\"prefix_hash\":\"', {pre}, '\",\"prefix_tokens\":', \
             toString([0, 200, 1500, 4000][cityHash64(n, 18) % 4 + 1]), ',\"conversation_hash\":\"', {conv}, \
             '\",\"message_count\":', toString(1 + 2 * (n % 6)), \
             ',\"tool_calls\":', multiIf({t} < 0.05, '[{{\"name\":\"search\",\"args_hash\":\"a1\"}},{{\"name\":\"search\",\"args_hash\":\"a1\"}}]', \
               {t} < 0.15, '[{{\"name\":\"lookup\",\"args_hash\":\"b1\"}}]', '[]'), \
             ',\"json_share\":', toString(round({j}, 2)), ',\"whitespace_share\":0.1,\"minify_saved_tokens\":', \
             if({j} < 0.3, toString(cityHash64(n, 20) % 400), 'null'), ',\"max_tokens\":', \
             if({mt} < 0.4, toString([16, 256, 1024, 4096][cityHash64(n, 21) % 4 + 1]), 'null'), \
             ',\"duplicate_chunk_share\":0}}'))",
        ph = hash(prompt),
        pre = hash("s, n % 4"),
        conv = hash("intDiv(n, 6)"),
        e = u(22),
        t = u(23),
        j = u(24),
        mt = u(25),
    )
}

/// The INSERT of the traffic rows of `calls` calls numbered from `first` (one
/// row per 20 calls: per agent interval, process and host; 8% not decoded).
pub fn traffic_insert(first: u64, calls: u64, day_start: u64) -> String {
    let rows = calls.div_ceil(CALLS_PER_TRAFFIC_ROW);
    let first = first / CALLS_PER_TRAFFIC_ROW;
    format!(
        "INSERT INTO llm_traffic (row_id, ts, first_seen, last_seen, provider_host, provider, decoded, capture, reason, \
           connections, bytes_sent, bytes_received, pid, comm, namespace, workload, service, cluster, inserted_at) \
         SELECT generateUUIDv4(n), at, at - toIntervalSecond(10), at, host, provider_name, dec, \
           if(dec, ['openssl', 'go_tls', 'boringssl', 'rustls', 'jsse', 'socket'][s % 6 + 1], ''), \
           if(dec, '', ['no_plaintext_seen', 'unsupported_tls_library', 'quic'][cityHash64(n, 31) % 3 + 1]), \
           1 + cityHash64(n, 32) % 5, 2000 + cityHash64(n, 33) % 200000, 8000 + cityHash64(n, 34) % 800000, \
           toUInt32(1000 + s * 16 + n % 16), comm_name, ns, svc, svc, cl, toDateTime(at) + 2 \
         FROM (SELECT *, {dec} >= 0.08 AS dec FROM ({dims}))",
        dec = u(30),
        dims = dims(first, rows, day_start),
    )
}

/// Wait (up to a few minutes) for the engine's background merges, so that each
/// size is timed on parts as a live table has them, not on hundreds of fresh ones.
pub fn settle(ch: &ClickHouse) {
    for t in ["llm_calls_1m", "llm_calls_1h", "llm_traffic"] {
        ch.query(&format!("OPTIMIZE TABLE {t} FINAL"));
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(300) && ch.count("SELECT count() FROM system.merges") > 0 {
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn table_stats(ch: &ClickHouse) -> String {
    let rows = ch.query(&format!(
        "SELECT table, sum(rows) AS rows, count() AS parts, round(sum(bytes_on_disk) / 1048576) AS mib FROM system.parts \
         WHERE database = '{}' AND active AND table LIKE 'llm\\_%' \
         GROUP BY table ORDER BY table",
        ch.database
    ));
    let num = |v: &Value| v.as_u64().or_else(|| v.as_str()?.parse().ok()).or_else(|| v.as_f64().map(|f| f as u64));
    let mut s = String::from("| table | rows | parts | on disk |\n|---|--:|--:|--:|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} MiB |\n",
            r["table"].as_str().unwrap_or("?"),
            num(&r["rows"]).unwrap_or(0),
            num(&r["parts"]).unwrap_or(0),
            num(&r["mib"]).unwrap_or(0)
        ));
    }
    s
}

/// `ROLLUP_ONLY` and copies of the rollups' views reading it (their
/// definitions as the migrations made them, the source table swapped).
pub fn rollup_only_path(ch: &ClickHouse) {
    let db = &ch.database;
    let t = ROLLUP_ONLY;
    ch.query(&format!("CREATE TABLE IF NOT EXISTS {db}.{t} AS {db}.llm_calls ENGINE = Null"));
    // Every view fed by llm_calls (the rollups', whatever migrations made them).
    let views = ch.query(&format!(
        "SELECT name, create_table_query AS q FROM system.tables WHERE database = '{db}' AND \
         engine = 'MaterializedView' AND position(create_table_query, 'FROM {db}.llm_calls ') > 0 AND \
         NOT endsWith(name, '_rollup_only')"
    ));
    for v in &views {
        let (mv, q) = (v["name"].as_str().expect("view name"), v["q"].as_str().expect("view definition"));
        let copy = q
            .replacen(&format!("{db}.{mv}"), &format!("{db}.{mv}_rollup_only"), 1)
            .replace(&format!("FROM {db}.llm_calls"), &format!("FROM {db}.{t}"))
            .replacen("CREATE MATERIALIZED VIEW", "CREATE MATERIALIZED VIEW IF NOT EXISTS", 1);
        ch.query(&copy);
    }
}

/// Grow the database from `from` calls to `to`, one insert per day, into
/// `table` (`llm_calls`, or `ROLLUP_ONLY`).
pub fn grow(ch: &ClickHouse, table: &str, from: u64, to: u64, end: u64) {
    let days = DAYS;
    let per_day = (to - from).div_ceil(days);
    let mut first = from;
    for d in 0..days {
        let count = per_day.min(to - first);
        if count == 0 {
            break;
        }
        let day_start = end - (days - d) * 86400;
        ch.query(&calls_insert(table, first, count, day_start));
        ch.query(&traffic_insert(first, count, day_start));
        first += count;
    }
}

pub fn on_disk(ch: &ClickHouse, tables: &str) -> f64 {
    ch.count(&format!(
        "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{}' AND active AND table IN ({tables})",
        ch.database
    )) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_name_every_column_once_and_balance_their_brackets() {
        for sql in [calls_insert("llm_calls", 0, 10, 0), calls_insert(ROLLUP_ONLY, 0, 10, 0), traffic_insert(0, 100, 0)]
        {
            let depth = sql.chars().fold(0i32, |d, c| match c {
                '(' | '[' => d + 1,
                ')' | ']' => d - 1,
                _ => d,
            });
            assert_eq!(depth, 0, "{sql}");
            let cols = &sql[sql.find('(').unwrap() + 1..sql.find(')').unwrap()];
            let names: Vec<&str> = cols.split(',').map(str::trim).collect();
            let unique: std::collections::HashSet<_> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{cols}");
        }
    }
}
