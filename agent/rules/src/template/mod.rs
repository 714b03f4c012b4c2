//! The subset of Go's `text/template` that Prometheus alert labels and annotations use.
//!
//! Supported: text and `{{ }}` actions with `{{-`/`-}}` trimming and `{{/* */}}` comments;
//! variables (`$labels`, `$value`, `$externalLabels`, `$externalURL`, `$x := …`, `$x = …`);
//! fields (`.Labels.x`, `.Value`, `$labels.x`); string, raw-string, number and boolean
//! literals; pipelines and parenthesised pipelines; `if`/`else if`/`else`/`end`,
//! `with`, and `range` over label maps; Go's `printf`, `print`, `len`, `index`, `eq`,
//! `ne`, `lt`, `le`, `gt`, `ge`, `and`, `or`, `not`; Prometheus's `humanize`,
//! `humanize1024`, `humanizeDuration`, `humanizePercentage`, `humanizeTimestamp`,
//! `toUpper`, `toLower`, `title`, `reReplaceAll`, `match`, `externalURL`, `pathPrefix`.
//! With a [`QueryFn`]: `query`, `first`, `label`, `value`, `strvalue`, `sortByLabel`,
//! and `range`/`with` over query results, evaluated at the rule's evaluation time.
//! Also `graphLink`, `tableLink`, `safeHtml`. Not supported: `define`/`template`/`block`.
//!
//! Like Prometheus, a missing map key expands to the empty string (`missingkey=zero`) and
//! a failed expansion becomes the text `<error expanding template: …>`, never a panic.
//! Error texts carry Go's `NAME:LINE:COL` and `at <command>`; an error inside a
//! parenthesised sub-pipeline is located at its enclosing command, where Go names the
//! inner one. `tests/testdata/templates.test.yaml` holds promtool's own expansions.

mod exec;
pub mod format;
mod parse;

use std::collections::BTreeMap;

pub use parse::Template;

/// One element of a `query` result as templates see it (Prometheus's `sample`).
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Runs a PromQL instant query for the `query` template function.
pub type QueryFn<'a> = dyn Fn(&str) -> Result<Vec<QuerySample>, String> + 'a;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// What `.` holds when an alert's labels and annotations are expanded.
#[derive(Debug, Clone, Default)]
pub struct AlertData {
    pub labels: BTreeMap<String, String>,
    pub external_labels: BTreeMap<String, String>,
    pub external_url: String,
    pub value: f64,
}

impl Template {
    /// Parses `text`; `name` appears in error messages as Go's template name does.
    pub fn new(name: &str, text: &str) -> Result<Template, TemplateError> {
        parse::parse(name, text)
    }

    /// Expands the template; `t_ms` is the evaluation time (for functions that need it).
    pub fn execute(&self, data: &AlertData) -> Result<String, TemplateError> {
        exec::execute(self, data, None, 0)
    }

    /// Like [`Template::execute`], with `query` available to the template.
    pub fn execute_with_query(
        &self,
        data: &AlertData,
        query: &QueryFn<'_>,
    ) -> Result<String, TemplateError> {
        exec::execute(self, data, Some(query), 0)
    }
}

/// Length of the variable definitions Prometheus prepends to every alert template
/// (`{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL :=
/// .ExternalURL}}{{$value := .Value}}`), which shifts Go's error columns on line 1.
const ALERT_PREFIX_LEN: usize = 112;

/// Checks the syntax of a label or annotation template at load time.
pub fn check(name: &str, text: &str) -> Result<(), TemplateError> {
    Template::new(name, text).map(|_| ())
}

/// Expands `text` the way Prometheus expands an alert's label or annotation values:
/// errors become the text Prometheus writes in their place.
pub fn expand_alert_text(
    rule_name: &str,
    text: &str,
    data: &AlertData,
    query: Option<&QueryFn<'_>>,
) -> String {
    let name = format!("__alert_{rule_name}");
    let parsed = Template::new(&name, text)
        .map_err(|e| TemplateError(format!("error parsing template {name}: {e}")));
    let result = parsed.and_then(|t| {
        exec::execute(&t, data, query, ALERT_PREFIX_LEN)
            .map_err(|e| TemplateError(format!("error executing template {name}: {e}")))
    });
    match result {
        Ok(s) => s,
        Err(e) => format!("<error expanding template: {e}>"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> AlertData {
        AlertData {
            labels: BTreeMap::from([
                ("instance".to_string(), "host:9100".to_string()),
                ("job".to_string(), "node".to_string()),
                ("workspace_id".to_string(), "ws-1".to_string()),
            ]),
            external_labels: BTreeMap::from([("cluster".to_string(), "eu1".to_string())]),
            external_url: "http://prom.example:9090".to_string(),
            value: 0.123456,
        }
    }

    fn x(t: &str) -> String {
        expand_alert_text("T", t, &data(), None)
    }

    #[test]
    fn variables_and_fields() {
        assert_eq!(x("{{ $labels.instance }} down"), "host:9100 down");
        assert_eq!(x("{{ .Labels.job }}/{{.Value}}"), "node/0.123456");
        assert_eq!(x("{{ $value }}"), "0.123456");
        assert_eq!(x("{{ $externalLabels.cluster }}"), "eu1");
        assert_eq!(x("{{ $externalURL }}"), "http://prom.example:9090");
        assert_eq!(x("[{{ $labels.missing }}]"), "[]");
        assert_eq!(x("no actions"), "no actions");
    }

    #[test]
    fn functions_and_pipelines() {
        assert_eq!(x("{{ $value | humanizePercentage }}"), "12.35%");
        assert_eq!(x("{{ printf \"%.2f\" $value }}"), "0.12");
        assert_eq!(x("{{ $value | printf \"%.1f\" }}"), "0.1");
        assert_eq!(x("{{ humanize 1234567 }}"), "1.235M");
        assert_eq!(x("{{ humanize 0.001234 }}"), "1.234m");
        assert_eq!(x("{{ humanize 0 }}"), "0");
        assert_eq!(x("{{ humanize1024 1048576 }}"), "1Mi");
        assert_eq!(x("{{ humanizeDuration 3725 }}"), "1h 2m 5s");
        assert_eq!(x("{{ humanizeDuration 90061 }}"), "1d 1h 1m 1s");
        assert_eq!(x("{{ humanizeDuration 1.5 }}"), "1.5s");
        assert_eq!(x("{{ humanizeDuration 0.25 }}"), "250ms");
        assert_eq!(
            x("{{ humanizeTimestamp 1 }}"),
            "1970-01-01 00:00:01 +0000 UTC"
        );
        assert_eq!(
            x("{{ humanizeTimestamp 93784.5678 }}"),
            "1970-01-02 02:03:04.567 +0000 UTC"
        );
        assert!(x("{{ humanizeTimestamp 1e22 }}").contains("overflows int64"));
        assert_eq!(
            x("{{ humanizeDuration 1e22 }}"),
            "-106751991167300d -15h -30m -8s"
        );
        assert_eq!(x("{{ \"abc\" | toUpper }}"), "ABC");
        assert_eq!(x("{{ toLower \"ABC\" }}"), "abc");
        assert_eq!(x("{{ title \"hello big-world\" }}"), "Hello Big-World");
        assert_eq!(
            x("{{ reReplaceAll \":.*\" \"\" $labels.instance }}"),
            "host"
        );
        assert_eq!(
            x("{{ reReplaceAll \"(.*):(.*)\" \"$2\" $labels.instance }}"),
            "9100"
        );
        assert_eq!(x("{{ match \"^ws-\" $labels.workspace_id }}"), "true");
        assert_eq!(x("{{ humanize \"2048\" }}"), "2.048k");
        assert_eq!(x("{{ len $labels }}"), "3");
        assert_eq!(x("{{ index $labels \"job\" }}"), "node");
        assert_eq!(
            x("{{ printf \"%s=%d %q %v%%\" \"a\" 3 \"b\" 1.5 }}"),
            "a=3 \"b\" 1.5%"
        );
    }

    #[test]
    fn control_flow() {
        assert_eq!(
            x("{{ if gt $value 0.1 }}high{{ else }}low{{ end }}"),
            "high"
        );
        assert_eq!(
            x("{{ if eq $labels.job \"x\" }}x{{ else if eq $labels.job \"node\" }}n{{ end }}"),
            "n"
        );
        assert_eq!(x("{{ if $labels.missing }}y{{ else }}n{{ end }}"), "n");
        assert_eq!(x("a  {{- \" b \" -}}  c"), "a b c");
        assert_eq!(x("{{/* comment */}}ok"), "ok");
        assert_eq!(x("{{ $v := 2 }}{{ $v }}"), "2");
        assert_eq!(x("{{ with $labels.job }}{{ . }}{{ end }}"), "node");
        assert_eq!(
            x("{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}"),
            "instance=host:9100;job=node;workspace_id=ws-1;"
        );
        assert_eq!(x("{{ if and true (not false) }}y{{ end }}"), "y");
        assert_eq!(x("{{ (printf \"%s\" \"p\") | toUpper }}"), "P");
    }

    #[test]
    fn query_results_are_usable() {
        let q = |expr: &str| -> Result<Vec<QuerySample>, String> {
            match expr {
                "up" => Ok(vec![
                    QuerySample {
                        labels: BTreeMap::from([("instance".into(), "b".into())]),
                        value: 0.0,
                    },
                    QuerySample {
                        labels: BTreeMap::from([("instance".into(), "a".into())]),
                        value: 1234.5,
                    },
                ]),
                "none" => Ok(vec![]),
                _ => Err("bad query".into()),
            }
        };
        let x = |t: &str| expand_alert_text("T", t, &data(), Some(&q));
        assert_eq!(x("{{ query \"up\" | first | value | humanize }}"), "0");
        assert_eq!(
            x(
                "{{ range query \"up\" | sortByLabel \"instance\" }}{{ .Labels.instance }}={{ .Value }} {{ end }}"
            ),
            "a=1234.5 b=0 "
        );
        assert_eq!(
            x("{{ with query \"up\" }}{{ . | first | label \"instance\" }}{{ end }}"),
            "b"
        );
        assert_eq!(
            x("{{ with query \"none\" }}some{{ else }}none{{ end }}"),
            "none"
        );
        assert!(
            x("{{ query \"none\" | first }}").contains("first() called on vector with no elements")
        );
        assert!(x("{{ query \"x\" }}").contains("bad query"));
        assert_eq!(
            x("{{ tableLink \"up > 0\" }}"),
            "/graph?g0.expr=up+%3E+0&g0.tab=1"
        );
        // Without a query function (e.g. `rules check`), query is an execution error.
        assert!(
            expand_alert_text("T", "{{ query \"up\" }}", &data(), None)
                .starts_with("<error expanding template: ")
        );
    }

    #[test]
    fn errors_become_text_and_syntax_is_checked() {
        assert!(x("{{ $labels.job").starts_with("<error expanding template: "));
        assert!(x("{{ nosuchfunc 1 }}").contains("function \"nosuchfunc\" not defined"));
        assert!(x("{{ $undefined }}").contains("undefined variable"));
        assert!(x("{{ if true }}x").contains("unexpected EOF"));
        assert!(
            x("{{ humanize \"abc\" }}").starts_with("<error expanding template: error executing")
        );
        assert!(x("{{ reReplaceAll \"(\" \"\" \"a\" }}").starts_with("<error expanding template:"));
        assert!(check("t", "{{ end }}").is_err());
        assert!(check("t", "{{ $labels.x }} {{ humanize $value }}").is_ok());
    }
}
