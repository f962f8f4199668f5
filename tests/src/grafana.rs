//! Grafana's ClickHouse macros and template variables, expanded as the
//! grafana-clickhouse-datasource plugin does, so dashboards' panel SQL runs on
//! the schema (tests/tests/dashboards*.rs, and `cargo xtask bench`).
use std::collections::BTreeMap;

/// `sql` with `$__timeFilter(col)`, `$__timeInterval(col)`, `$__fromTime`,
/// `$__toTime` and `$__interval_s` expanded for the range `from`..`to` (SQL
/// time expressions such as `toDateTime('2026-11-20 00:00:00')`) and a panel
/// interval of `interval_s` seconds, then the variables (`${name}` and
/// `${name:singlequote}`). Err: a macro or variable Grafana would have
/// replaced is left.
pub fn expand(
    sql: &str,
    from: &str,
    to: &str,
    interval_s: u64,
    vars: &BTreeMap<String, Vec<String>>,
) -> Result<String, String> {
    let mut out =
        sql.replace("$__fromTime", from).replace("$__toTime", to).replace("$__interval_s", &interval_s.to_string());
    let filter = |c: &str| format!("{c} >= {from} AND {c} <= {to}");
    let interval = |c: &str| format!("toStartOfInterval(toDateTime({c}), INTERVAL {interval_s} second)");
    for (name, f) in [("$__timeFilter(", &filter as &dyn Fn(&str) -> String), ("$__timeInterval(", &interval)] {
        while let Some(start) = out.find(name) {
            let arg_start = start + name.len();
            let end =
                arg_start + out[arg_start..].find(')').ok_or_else(|| format!("{name} does not close in {sql}"))?;
            let arg = out[arg_start..end].trim().to_owned();
            out.replace_range(start..=end, &f(&arg));
        }
    }
    for (name, values) in vars {
        let quoted: Vec<String> = values.iter().map(|v| format!("'{}'", v.replace('\'', "\\'"))).collect();
        out = out.replace(&format!("${{{name}:singlequote}}"), &quoted.join(","));
        out = out.replace(&format!("${{{name}}}"), &values.join(","));
    }
    // A `$` still followed by a name is a macro or variable Grafana would have
    // replaced (`$` before `|` or `)` in a regex is not).
    let b = out.as_bytes();
    if b.windows(2).any(|w| w[0] == b'$' && (w[1] == b'_' || w[1] == b'{' || w[1].is_ascii_alphabetic())) {
        return Err(format!("unexpanded macro or variable in: {out}"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macros_and_variables_expand_and_leftovers_are_errors() {
        let vars = BTreeMap::from([("service".to_owned(), vec!["a".to_owned(), "b'c".to_owned()])]);
        let sql =
            "SELECT $__timeInterval(ts) AS time FROM t WHERE $__timeFilter(ts) AND s IN (${service:singlequote}) \
                   AND x < $__interval_s AND match(m, '^a$')";
        let out = expand(sql, "toDateTime(10)", "toDateTime(20)", 60, &vars).unwrap();
        assert_eq!(
            out,
            "SELECT toStartOfInterval(toDateTime(ts), INTERVAL 60 second) AS time FROM t WHERE ts >= toDateTime(10) \
             AND ts <= toDateTime(20) AND s IN ('a','b\\'c') AND x < 60 AND match(m, '^a$')"
        );
        assert!(expand("SELECT ${cluster}", "a", "b", 60, &vars).is_err());
        assert!(expand("SELECT $__timeFilter(ts", "a", "b", 60, &vars).is_err());
    }
}
