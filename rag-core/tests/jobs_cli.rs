//! `rag-core ingest` (bulk ingest CLI) and `rag-core bench-jobs`, run as real processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn ingest(data_dir: &Path, env: &[(&str, &str)], paths: &[&Path]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(["ingest", "--batch", "3", "--data-dir"])
        .arg(data_dir)
        .args(paths)
        .env_remove("RAG_CORE_CONFIG")
        .env_remove("BACKGROUND_JOBS_ENABLED");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run rag-core ingest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn count(summary: &str, label: &str) -> u64 {
    let at = summary
        .find(&format!("{label}: "))
        .unwrap_or_else(|| panic!("{label} missing in {summary}"));
    summary[at + label.len() + 2..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn corpus(root: &Path) {
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(root.join(".hidden")).unwrap();
    for i in 0..7 {
        std::fs::write(
            root.join(format!("note{i}.md")),
            format!("# Note {i}\n\nThe heron number {i} waits by the river {i}."),
        )
        .unwrap();
    }
    std::fs::write(root.join("sub/deeper/page.html"), "<html><head><title>Page</title></head><body><p>Swifts sleep while flying.</p></body></html>").unwrap();
    std::fs::write(root.join("sub/empty.txt"), "   \n").unwrap();
    std::fs::write(root.join("sub/data.bin"), [0u8, 1, 2]).unwrap();
    std::fs::write(root.join(".hidden/secret.txt"), "not ingested").unwrap();
}

fn run_modes(jobs: bool) {
    let dir = temp_dir(if jobs { "cli-queued" } else { "cli-direct" });
    let b = bootstrap(&dir);
    let root = dir.join("corpus");
    corpus(&root);
    let env: Vec<(&str, &str)> = if jobs {
        vec![("BACKGROUND_JOBS_ENABLED", "true")]
    } else {
        vec![]
    };

    let (ok, out, err) = ingest(&dir, &env, &[&root]);
    assert!(!ok, "failed files give a non-zero exit: {out} {err}");
    assert_eq!(count(&out, "files"), 10, "{out}");
    assert_eq!(count(&out, "ingested"), 8, "{out}\n{err}");
    assert_eq!(count(&out, "failed"), 2, "{out}");
    assert!(
        out.contains("empty.txt") && out.contains("data.bin"),
        "{out}"
    );
    assert!(!out.contains("secret"), "{out}");
    assert!(
        err.contains("progress: files 10/10"),
        "plain progress lines off a TTY: {err}"
    );
    if jobs {
        assert!(out.contains("jobs: "), "{out}");
    }

    // Re-run: everything unchanged is skipped without parsing.
    let (_, out, _) = ingest(&dir, &env, &[&root]);
    assert_eq!(count(&out, "ingested"), 0, "{out}");
    assert_eq!(count(&out, "unchanged)"), 8, "{out}");

    // One changed file, one new file: only those go in.
    std::fs::write(
        root.join("note3.md"),
        "# Note 3\n\nChanged: kingfishers dive.",
    )
    .unwrap();
    std::fs::write(root.join("sub/new.txt"), "Owls hunt at night.").unwrap();
    let (_, out, _) = ingest(&dir, &env, &[&root]);
    assert_eq!(count(&out, "ingested"), 2, "{out}");
    assert_eq!(count(&out, "unchanged)"), 7, "{out}");

    // The store serves what the command wrote: 8 + the changed note (new content; the
    // old version stays until deleted) + the new file.
    let s = Server::start(&dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (st, v) = rt.block_on(json(
        client()
            .get(s.url("/api/v1/sources?limit=1"))
            .bearer_auth(&b.api_key),
    ));
    assert_eq!(st, 200);
    assert_eq!(v["total"], 10, "{v}");
}

#[test]
fn bulk_ingest_direct_is_incremental() {
    run_modes(false);
}

#[test]
fn bulk_ingest_through_the_queue_is_incremental() {
    run_modes(true);
}

#[test]
fn bench_jobs_reports_throughput_and_progress() {
    let out = Command::new(bin())
        .args(["bench-jobs", "--jobs", "500", "--documents", "2000"])
        .output()
        .expect("run bench-jobs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ran 500 trivial jobs"), "{text}");
    assert!(
        text.contains("ingest job succeeded: 2000 documents"),
        "{text}"
    );
    assert!(text.contains(r#""ingested":2000"#), "{text}");
}
