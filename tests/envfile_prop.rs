//! Property: editing any generated .env changes nothing but the key (checked with our compose-compatible parser).

use audsync::sink::env::{checked_edit, parse, set_key};
use proptest::prelude::*;

const KEY: &str = "CLOUDFLARE_AUD_TAG";

fn line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just(KEY.to_string()),
        Just(format!("{KEY}_OLD")),
        Just(format!("MY_{KEY}")),
        "[A-Z][A-Z0-9_]{0,8}",
    ];
    let value = prop_oneof![
        "[a-zA-Z0-9_./:-]{0,12}",
        "[a-zA-Z0-9 ]{0,8}".prop_map(|v| format!("\"{v}\"")),
        "[a-zA-Z0-9 ]{0,8}".prop_map(|v| format!("'{v}'")),
        "[a-z]{1,6}".prop_map(|v| format!("\"{v}\nsecond {KEY}=x line\"")),
    ];
    let comment = prop_oneof![Just(String::new()), Just(" # note".to_string())];
    prop_oneof![
        4 => (prop::bool::ANY, key, value, comment).prop_map(|(exp, k, v, c)| format!("{}{k}={v}{c}", if exp { "export " } else { "" })),
        1 => Just(String::new()),
        1 => Just(format!("# {KEY}=commented")),
        1 => "# [a-z ]{0,10}".prop_map(|s| s),
    ]
}

fn file() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(line(), 0..12),
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(lines, crlf, bom, final_nl)| {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut s = if bom {
                "\u{feff}".to_string()
            } else {
                String::new()
            };
            s.push_str(&lines.join(nl));
            if final_nl && !lines.is_empty() {
                s.push_str(nl);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn only_the_key_changes(content in file(), value in "[0-9a-f]{64}") {
        let Ok(before) = parse(&content) else { return Ok(()) };
        let edited = checked_edit(&content, KEY, &value).expect("a parseable file is always editable");
        let after = parse(&edited).unwrap();
        prop_assert_eq!(after.get(KEY), Some(&value));
        for (k, v) in &before {
            if k != KEY {
                prop_assert_eq!(after.get(k), Some(v), "key {} changed", k);
            }
        }
        prop_assert_eq!(before.len() + usize::from(!before.contains_key(KEY)), after.len());
        // Lines that do not mention KEY stay byte-for-byte, in order (CRLF is checked in unit tests:
        // appending to a file without a final newline adds the file's own line ending).
        let strip = |s: &str| s.trim_start_matches('\u{feff}').split('\n').map(|l| l.trim_end_matches('\r')).filter(|l| !l.contains(KEY) && !l.is_empty()).map(str::to_string).collect::<Vec<_>>();
        prop_assert_eq!(strip(&content), strip(&edited));
        // Idempotent: a second edit with the same value changes nothing.
        prop_assert_eq!(set_key(&edited, KEY, &value).unwrap(), edited.clone());
        prop_assert_eq!(edited.starts_with('\u{feff}'), content.starts_with('\u{feff}'));
    }
}
