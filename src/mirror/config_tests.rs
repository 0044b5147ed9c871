//! Tests of the config: the issue's example, and each class of error
//! naming its key and line.

use super::*;

/// The issue's example, as written.
pub(crate) const EXAMPLE: &str = r#"defaults:
  platforms: [linux/amd64, linux/arm64]   # or: all
  filters: [normalize-timestamps]         # optional, as with -f
  compression: gzip
  referrers: true                         # signatures, SBOMs, attestations
mirrors:
  - from: registry://SRC/library          # a registry plus a namespace
    to: registry://DST/hub
    repositories: [debian, "py*"]         # names or globs (listed via /v2/_catalog)
    tags:
      include: ['^bookworm', '^3\.1[2-9]-slim$', latest]   # regexes
      exclude: ['-rc']
      semver: '>=3.12'                    # optional
      newest: 5                           # optional: the 5 newest matching tags
    immutable: ['^v?[0-9]+\.[0-9]+\.[0-9]+$']   # copied once, never re-checked
  - from: registry://SRC/team/*           # a glob over the catalog
    to: registry://DST/mirror/team/{repo} # name mapping
    prune: false                          # true: delete destination tags the source dropped
"#;

fn err(text: &str) -> String {
    match Config::parse(text, "m.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            assert!(e.is_usage(), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn the_issue_example_parses() {
    let c = Config::parse(EXAMPLE, "m.yaml").unwrap();
    assert_eq!(c.entries.len(), 2);
    assert_eq!(
        c.defaults.platforms,
        Selection::parse_platforms("linux/amd64,linux/arm64").unwrap()
    );
    assert_eq!(c.defaults.filters, ["normalize-timestamps"]);
    assert!(c.defaults.referrers);
    let a = &c.entries[0];
    assert_eq!((a.index, a.line), (0, 7));
    assert_eq!(a.source.host, "SRC");
    assert_eq!(a.destination.host, "DST");
    assert!(!a.source.insecure);
    assert!(a.needs_catalog());
    assert_eq!(a.tags.include.len(), 3);
    assert_eq!(a.tags.newest, Some(5));
    assert!(a.is_immutable("v1.2.3") && !a.is_immutable("latest"));
    assert_eq!(a.options, c.defaults);
    let b = &c.entries[1];
    assert_eq!(b.line, 16);
    assert!(matches!(&b.repositories, Repositories::Glob { namespace, .. } if namespace == "team"));
    assert!(b.tags.include.is_empty() && !b.prune);
}

#[test]
fn defaults_and_overrides() {
    let c = Config::parse(
        "mirrors:\n\
         - from: registry://src:5000/a?insecure=true\n  to: registry://dst/b\n\
         \x20 platforms: [linux/amd64]\n  compression: zstd\n  referrers: true\n",
        "m.yaml",
    )
    .unwrap();
    assert_eq!(c.defaults, ImageOptions::default());
    let e = &c.entries[0];
    assert!(e.source.insecure && !e.destination.insecure);
    assert_eq!(e.source.host, "src:5000");
    assert!(matches!(&e.repositories, Repositories::Single { repository } if repository == "a"));
    assert!(!e.needs_catalog());
    assert_eq!(e.options.compression, Encoding::Zstd);
    assert!(e.options.referrers);
    assert!(matches!(e.options.platforms, Selection::Platforms(ref p) if p.len() == 1));
    let all = Config::parse(
        "defaults: {platforms: all}\nmirrors: [{from: 'registry://s/a', to: 'registry://d/a'}]",
        "m.yaml",
    )
    .unwrap();
    assert_eq!(all.defaults.platforms, Selection::All);
}

#[test]
fn unknown_keys_name_the_key_and_line() {
    let e = err(
        "mirrors:\n  - from: registry://s/a\n    to: registry://d/a\n    tags:\n      inclde: [x]\n",
    );
    assert!(e.starts_with("m.yaml: line 5: "), "{e}");
    assert!(e.contains("inclde") && e.contains("mirrors[0].tags"), "{e}");
    let e = err("defaults:\n  platform: all\nmirrors: []\n");
    assert!(e.contains("line 2") && e.contains("platform"), "{e}");
    let e = err("mirror: []\n");
    assert!(e.contains("line 1") && e.contains("mirror"), "{e}");
    let e =
        err("mirrors:\n  - from: registry://s/a\n    to: registry://d/a\n    compression: lz4\n");
    assert!(e.contains("line 4") && e.contains("lz4"), "{e}");
    let e = err("mirrors:\n  - from: registry://s/a\n");
    assert!(e.contains("line 2") && e.contains("`to`"), "{e}");
}

#[test]
fn bad_regexes_name_the_key_and_line() {
    let text = "mirrors:\n  - from: registry://s/a\n    to: registry://d/a\n    tags:\n      include:\n        - ok\n        - '(unclosed'\n";
    let e = err(text);
    assert!(
        e.starts_with("m.yaml: line 7: mirrors[0].tags.include[1]: "),
        "{e}"
    );
    assert!(
        e.contains("(unclosed") && e.contains("not a valid regex"),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
    let e = err(
        "mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags: {exclude: ['[z-a]']}\n",
    );
    assert!(e.contains("line 4: mirrors[0].tags.exclude[0]"), "{e}");
    let e = err(
        "mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  immutable:\n  - 'a{99999999}'\n",
    );
    assert!(e.contains("line 5: mirrors[0].immutable[0]"), "{e}");
}

#[test]
fn bad_semver_and_newest() {
    let e = err(
        "mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags:\n    semver: '>=banana'\n",
    );
    assert!(
        e.contains("line 5: mirrors[0].tags.semver") && e.contains("semver range"),
        "{e}"
    );
    let e = err("mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags:\n    newest: 0\n");
    assert!(e.contains("line 5: mirrors[0].tags.newest"), "{e}");
    let e =
        err("mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags:\n    newest: -3\n");
    assert!(e.contains("line 5"), "{e}");
}

#[test]
fn a_glob_needs_repo_in_to() {
    let text = "mirrors:\n  - from: registry://s/a\n    to: registry://d/a\n  - from: registry://s/team/*\n    to: registry://d/mirror\n";
    let e = err(text);
    assert!(e.starts_with("m.yaml: line 5: mirrors[1].to: "), "{e}");
    assert!(e.contains("{repo}"), "{e}");
    let e = err(
        "mirrors:\n- from: registry://s/team/*\n  to: registry://d/{repo}\n  repositories: [a]\n",
    );
    assert!(e.contains("line 4: mirrors[0].repositories"), "{e}");
    let e = err("mirrors:\n- from: registry://s/team/[\n  to: registry://d/{repo}\n");
    assert!(
        e.contains("line 2: mirrors[0].from") && e.contains("glob"),
        "{e}"
    );
    let e = err("mirrors:\n- from: registry://s/{repo}\n  to: registry://d/{repo}\n");
    assert!(e.contains("mirrors[0].from"), "{e}");
    let e = err("mirrors:\n- from: registry://s/a/*\n  to: registry://d/{name}\n");
    assert!(
        e.contains("line 3: mirrors[0].to") && e.contains("placeholder"),
        "{e}"
    );
}

#[test]
fn two_entries_on_one_destination() {
    let text = "mirrors:\n\
                \x20 - from: registry://s/library\n    to: registry://d/hub\n    repositories: [debian]\n\
                \x20 - from: registry://t/library/debian\n    to: registry://d/hub/debian\n";
    let e = err(text);
    assert!(e.starts_with("m.yaml: line 6: mirrors[1].to: "), "{e}");
    assert!(
        e.contains("d/hub/debian") && e.contains("mirrors[0] (line 2"),
        "{e}"
    );
    // The same template twice, with globs: a clash as soon as both list one name.
    let e = err(
        "mirrors:\n- from: registry://s/a/*\n  to: registry://d/m/{repo}\n- from: registry://t/b/*\n  to: registry://d/m/{repo}\n",
    );
    assert!(e.contains("line 5: mirrors[1].to"), "{e}");
    // Other destination registries, or other names: fine.
    Config::parse(
        "mirrors:\n- from: registry://s/a\n  to: registry://d/x\n- from: registry://s/a\n  to: registry://e/x\n- from: registry://s/b\n  to: registry://d/y\n",
        "m.yaml",
    )
    .unwrap();
}

#[test]
fn uris_and_credentials() {
    let e = err("mirrors:\n- from: registry://bob:hunter2@s/a\n  to: registry://d/a\n");
    assert!(
        e.contains("line 2: mirrors[0].from") && e.contains("credentials"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = err("mirrors:\n- from: registry://s/a\n  to: tar:///tmp/x.tar\n");
    assert!(
        e.contains("line 3: mirrors[0].to") && e.contains("registry://"),
        "{e}"
    );
    let e = err("mirrors:\n- from: registry://s/a:v1\n  to: registry://d/a\n");
    assert!(e.contains("line 2") && e.contains("tags"), "{e}");
    let e = err("mirrors:\n- from: registry://s/a?tls=off\n  to: registry://d/a\n");
    assert!(e.contains("line 2") && e.contains("tls"), "{e}");
    let e = err("mirrors:\n- from: registry://s/Upper\n  to: registry://d/a\n");
    assert!(e.contains("line 2") && e.contains("repository"), "{e}");
    let e = err("mirrors:\n- from: registry://s\n  to: registry://d\n");
    assert!(
        e.contains("line 2") && e.contains("names no repository"),
        "{e}"
    );
    let e = err("mirrors:\n- from: registry://s/a\n  to: registry://d/../x\n");
    assert!(e.contains("line 3"), "{e}");
}

#[test]
fn other_option_errors() {
    let e = err(
        "defaults:\n  filters: [no-such-filter]\nmirrors:\n- from: registry://s/a\n  to: registry://d/a\n",
    );
    assert!(
        e.contains("line 2: defaults.filters[0]") && e.contains("no-such-filter"),
        "{e}"
    );
    let e = err(
        "mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  platforms: [linux/amd64, windows]\n",
    );
    assert!(e.contains("line 4: mirrors[0].platforms[1]"), "{e}");
    let e = err("mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  platforms: some\n");
    assert!(e.contains("line 4") && e.contains("all"), "{e}");
    let e = err("mirrors: []\n");
    assert!(
        e.contains("line 1: mirrors") && e.contains("no mirror"),
        "{e}"
    );
    let e = err("mirrors:\n- from: registry://s/a\n  to: registry://d/a\n  tags: {include: []}\n");
    assert!(e.contains("line 4: mirrors[0].tags.include"), "{e}");
    let e = err(
        "mirrors:\n- from: registry://s/ns\n  to: registry://d/a\n  repositories: [ok, 'Bad Name']\n",
    );
    assert!(e.contains("line 4: mirrors[0].repositories[1]"), "{e}");
    let e = err("mirrors: [\n");
    assert!(e.starts_with("m.yaml: line "), "{e}");
    let e = err("");
    assert!(e.starts_with("m.yaml"), "{e}");
}

#[test]
fn locate_finds_flow_and_block_nodes() {
    let text = "a:\n  b: [x, {c: 1, d: [p, q]}]\n  e:\n    - f\n    - g\n";
    let at = |p: &[Seg]| locate(text, p);
    assert_eq!(at(&[Seg::Key("a")]), Some(2));
    assert_eq!(
        at(&[Seg::Key("a"), Seg::Key("b"), Seg::Index(1), Seg::Key("d")]),
        Some(2)
    );
    assert_eq!(at(&[Seg::Key("a"), Seg::Key("e"), Seg::Index(1)]), Some(5));
    assert_eq!(at(&[Seg::Key("a"), Seg::Key("zz")]), None);
    assert_eq!(at(&[Seg::Key("a"), Seg::Key("e"), Seg::Index(9)]), None);
}

#[test]
fn huge_or_hostile_files() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_FILE + 1]).unwrap();
    assert!(
        Config::load(&big)
            .unwrap_err()
            .to_string()
            .contains("more than")
    );
    let missing = Config::load(&dir.path().join("none.yaml")).unwrap_err();
    assert!(missing.to_string().contains("none.yaml"));
    // Aliases that expand without end are refused by the parser.
    let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
    for i in 0..12 {
        let prev = if i == 0 {
            "a".to_string()
        } else {
            format!("b{}", i - 1)
        };
        bomb.push_str(&format!(
            "b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        ));
    }
    bomb.push_str("mirrors: []\n");
    err(&bomb);
}
