//! `minirag-agent artifacts bundle|verify` through the real binary: the bundle of the
//! repository's artifacts verifies, is reproducible to the byte, and a tampered or
//! incomplete bundle is refused naming the file.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minirag-agent"))
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Bundles the repository into `dir`, returning the archive's path.
fn bundle(dir: &Path) -> PathBuf {
    let o = agent(&[
        "artifacts",
        "bundle",
        "--root",
        root().to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "bundle: {}", text(&o));
    let path = dir.join(format!("minirag-observability-{VERSION}.tar.gz"));
    assert!(text(&o).contains(path.to_str().unwrap()), "{}", text(&o));
    path
}

fn verify(path: &Path) -> Output {
    agent(&["artifacts", "verify", path.to_str().unwrap()])
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(tar: &[u8], path: &Path) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(tar).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

/// (path, header offset, data size) of every tar entry, walked independently of the
/// agent's reader.
fn tar_entries(tar: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 512 <= tar.len() && tar[off..off + 512].iter().any(|&b| b != 0) {
        let h = &tar[off..off + 512];
        let cstr = |f: &[u8]| {
            let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
            String::from_utf8(f[..end].to_vec()).unwrap()
        };
        let prefix = cstr(&h[345..500]);
        let name = cstr(&h[..100]);
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size = usize::from_str_radix(cstr(&h[124..136]).trim(), 8).unwrap();
        out.push((path, off, size));
        off += 512 + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn the_bundle_round_trips_through_verify_and_holds_every_artifact() {
    let dir = common::temp_dir("bundle-ok");
    let path = bundle(&dir);
    let o = verify(&path);
    assert!(o.status.success(), "verify: {}", text(&o));
    assert!(
        text(&o).contains(&format!("OK: version {VERSION}")),
        "{}",
        text(&o)
    );

    let tar = gunzip(&path);
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    let top = format!("minirag-observability-{VERSION}/");
    assert!(names.iter().all(|n| n.starts_with(&top)), "{names:?}");
    let mut expected = vec![
        "CHANGELOG.md".to_string(),
        "SHA256SUMS".into(),
        "alerts/alertmanager/alertmanager.yml".into(),
        "alerts/k8s/prometheusrule.yaml".into(),
        "config/k8s/base/rules-configmap.yaml".into(),
        "dashboards/k8s/configmap.yaml".into(),
        "dashboards/provisioning/dashboards/minirag.yaml".into(),
        "dashboards/provisioning/datasources/minirag.yaml".into(),
    ];
    // Every rule file, rule test, template and dashboard in the tree, whatever their
    // number: the bundle follows the repository, not a list in this test.
    for (dir, ext) in [
        ("alerts", ".yaml"),
        ("alerts/tests", ".yaml"),
        ("alerts/alertmanager/templates", ".tmpl"),
        ("dashboards", ".json"),
    ] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(ext) {
                expected.push(format!("{dir}/{name}"));
            }
        }
    }
    for e in expected {
        assert!(
            names.contains(&format!("{top}{e}")),
            "{e} missing from {names:?}"
        );
    }
    // The sums agree with the real files, in sha256sum's format.
    let (_, off, size) = tar_entries(&tar)
        .into_iter()
        .find(|e| e.0 == format!("{top}SHA256SUMS"))
        .unwrap();
    let sums = String::from_utf8(tar[off + 512..off + 512 + size].to_vec()).unwrap();
    let line = sums
        .lines()
        .find(|l| l.ends_with("  CHANGELOG.md"))
        .expect("CHANGELOG.md in SHA256SUMS");
    let changelog = std::fs::read(root().join("CHANGELOG.md")).unwrap();
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(&changelog)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(line, format!("{digest}  CHANGELOG.md"));
    // Fixed ownership, modes and times: nothing of the build machine leaks in.
    for (name, off, _) in tar_entries(&tar) {
        let h = &tar[off..off + 512];
        assert_eq!(&h[108..115], b"0000000", "{name} uid");
        assert_eq!(&h[116..123], b"0000000", "{name} gid");
        let mode = if name.ends_with('/') {
            b"0000755"
        } else {
            b"0000644"
        };
        assert_eq!(&h[100..107], mode, "{name} mode");
    }

    // GNU tar, when present, reads the archive and sha256sum agrees with SHA256SUMS.
    let extract = common::temp_dir("bundle-extract");
    let tar_ok = Command::new("tar")
        .arg("-xzf")
        .arg(&path)
        .arg("-C")
        .arg(&extract)
        .status();
    match tar_ok {
        Ok(s) => {
            assert!(s.success(), "tar -xzf failed");
            let check = Command::new("sha256sum")
                .args(["-c", "--quiet", "SHA256SUMS"])
                .current_dir(extract.join(top.trim_end_matches('/')))
                .output();
            if let Ok(o) = check {
                assert!(o.status.success(), "sha256sum -c: {}", text(&o));
            }
        }
        Err(e) => eprintln!("skipping the tar(1) cross-check: {e}"),
    }
}

#[test]
fn two_bundles_are_byte_identical() {
    let a = std::fs::read(bundle(&common::temp_dir("bundle-a"))).unwrap();
    let b = std::fs::read(bundle(&common::temp_dir("bundle-b"))).unwrap();
    assert!(a == b, "two runs differ ({} vs {} bytes)", a.len(), b.len());
}

#[test]
fn a_tampered_bundle_fails_naming_the_file() {
    let path = bundle(&common::temp_dir("bundle-tamper"));
    let mut tar = gunzip(&path);
    let target = format!("minirag-observability-{VERSION}/dashboards/minirag-agent.json");
    let (_, off, size) = tar_entries(&tar)
        .into_iter()
        .find(|e| e.0 == target)
        .unwrap();
    assert!(size > 10);
    // One byte of the content; the tar header (and its checksum) stay valid, so only the
    // SHA-256 can catch it.
    tar[off + 512 + size / 2] ^= 0x01;
    let bad = common::temp_dir("bundle-tampered").join(path.file_name().unwrap());
    gzip(&tar, &bad);
    let o = verify(&bad);
    assert!(
        !o.status.success(),
        "tampered bundle verified: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("dashboards/minirag-agent.json: SHA-256 does not match SHA256SUMS"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_missing_or_unlisted_file_fails() {
    let path = bundle(&common::temp_dir("bundle-missing"));
    let tar = gunzip(&path);
    let target = format!("minirag-observability-{VERSION}/alerts/k8s/prometheusrule.yaml");
    let (_, off, size) = tar_entries(&tar)
        .into_iter()
        .find(|e| e.0 == target)
        .unwrap();
    let mut cut = tar[..off].to_vec();
    cut.extend_from_slice(&tar[off + 512 + size.div_ceil(512) * 512..]);
    let bad = common::temp_dir("bundle-cut").join(path.file_name().unwrap());
    gzip(&cut, &bad);
    let o = verify(&bad);
    assert!(!o.status.success());
    assert!(
        text(&o).contains(
            "alerts/k8s/prometheusrule.yaml: listed in SHA256SUMS but missing from the bundle"
        ),
        "{}",
        text(&o)
    );

    // The other way round: a file slipped in that SHA256SUMS does not list. The entry
    // is a copy of CHANGELOG.md's, renamed (its header checksum fixed up).
    let (_, off, size) = tar_entries(&tar)
        .into_iter()
        .find(|e| e.0.ends_with("/CHANGELOG.md"))
        .unwrap();
    let mut extra = tar[off..off + 512 + size.div_ceil(512) * 512].to_vec();
    let name = format!("minirag-observability-{VERSION}/EXTRA.md");
    extra[..100].fill(0);
    extra[..name.len()].copy_from_slice(name.as_bytes());
    extra[148..156].fill(b' ');
    let sum: u32 = extra[..512].iter().map(|&b| u32::from(b)).sum();
    extra[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut added = tar[..off].to_vec();
    added.extend_from_slice(&extra);
    added.extend_from_slice(&tar[off..]);
    let bad = common::temp_dir("bundle-extra").join(path.file_name().unwrap());
    gzip(&added, &bad);
    let o = verify(&bad);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("EXTRA.md: not listed in SHA256SUMS"),
        "{}",
        text(&o)
    );
}

#[test]
fn unsafe_paths_wrong_versions_and_garbage_are_refused() {
    let path = bundle(&common::temp_dir("bundle-unsafe"));
    let tar = gunzip(&path);
    let rename = |from: &str, to: &str| {
        let (_, off, _) = tar_entries(&tar)
            .into_iter()
            .find(|e| e.0.ends_with(from))
            .unwrap();
        let mut t = tar.clone();
        let h = &mut t[off..off + 512];
        h[..100].fill(0);
        h[345..500].fill(0);
        h[..to.len()].copy_from_slice(to.as_bytes());
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        t
    };
    for (to, message) in [
        (
            "/etc/CHANGELOG.md".to_string(),
            "/etc/CHANGELOG.md: absolute path",
        ),
        (
            format!("minirag-observability-{VERSION}/../CHANGELOG.md"),
            "'..' component",
        ),
        ("elsewhere/CHANGELOG.md".into(), "outside the top directory"),
    ] {
        let bad = common::temp_dir("bundle-path").join(path.file_name().unwrap());
        gzip(&rename("/CHANGELOG.md", &to), &bad);
        let o = verify(&bad);
        assert!(!o.status.success(), "{to} accepted");
        assert!(text(&o).contains(message), "{to}: {}", text(&o));
    }

    // A bundle whose name announces another version than its top directory holds.
    let other = common::temp_dir("bundle-version").join("minirag-observability-9.9.9.tar.gz");
    std::fs::copy(&path, &other).unwrap();
    let o = verify(&other);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("outside the top directory minirag-observability-9.9.9/"),
        "{}",
        text(&o)
    );

    let junk = common::temp_dir("bundle-junk").join(path.file_name().unwrap());
    std::fs::write(&junk, b"not a gzip file").unwrap();
    let o = verify(&junk);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not a readable gzip file"),
        "{}",
        text(&o)
    );
}

#[test]
fn bundling_outside_the_repository_names_what_is_missing() {
    let empty = common::temp_dir("bundle-notroot");
    std::fs::write(empty.join("CHANGELOG.md"), "# Changelog\n").unwrap();
    let o = agent(&[
        "artifacts",
        "bundle",
        "--root",
        empty.to_str().unwrap(),
        "--out",
        empty.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("is not the Mini-RAG repository root"), "{t}");
    assert!(
        t.contains("alerts/*.yaml") && t.contains("dashboards/k8s/"),
        "{t}"
    );
    assert!(!t.contains("missing CHANGELOG.md"), "{t}");
    assert!(
        std::fs::read_dir(&empty).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".gz")),
        "nothing written"
    );
}
