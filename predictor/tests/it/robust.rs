//! Trace reading and evaluation never panic, whatever the bytes.

use augur_predictor::eval::{EvalSettings, evaluate};
use augur_predictor::trace;
use augur_predictor::{Learner, Settings};
use proptest::prelude::*;

use crate::flows::{Rng, profile, search};

fn valid_lines() -> Vec<u8> {
    let mut rng = Rng::new(1);
    let mut text = Vec::new();
    for i in 0..6 {
        let ctx = if i % 2 == 0 {
            profile(&mut rng)
        } else {
            search(&mut rng)
        };
        text.extend_from_slice(trace::Record::new(None, 200, 10, ctx).to_line().as_bytes());
        text.push(b'\n');
    }
    text
}

/// Reads, learns from and replays whatever parses.
fn exercise(bytes: &[u8]) {
    let (records, errors) = trace::read(bytes).unwrap();
    for e in &errors {
        assert!(e.line >= 1);
    }
    let contexts: Vec<_> = records.into_iter().map(|r| r.context).collect();
    let mut learner = Learner::new(Settings::default());
    let settings = EvalSettings {
        confidence: 0.5,
        horizon_us: u64::MAX,
        learn_online: true,
        train: 0,
    };
    let _ = evaluate(&mut learner, "online", &contexts, &settings);
    let _ = evaluate(&mut learner, "online", &contexts, &settings);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        exercise(&bytes);
    }

    #[test]
    fn mutated_traces_never_panic(
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 1..20)
    ) {
        let mut bytes = valid_lines();
        for (at, byte, op) in cuts {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => { bytes.truncate(i); }
                2 => bytes.insert(i, byte),
                _ => { let tail = bytes[i..].to_vec(); bytes.extend_from_slice(&tail); }
            }
        }
        exercise(&bytes);
    }
}

#[test]
fn huge_values_and_deep_nesting_are_errors_not_panics() {
    let deep = format!(
        "{{\"version\":1,\"route\":\"r\",\"inbound\":{{\"method\":\"GET\",\"path\":\"/\",\"body\":{}{}}},\"calls\":[]}}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge_numbers = "{\"version\":1,\"route\":\"r\",\"inbound\":{\"method\":\"GET\",\"path\":\"/\"},\"calls\":[{\"dependency\":\"d\",\"request\":{\"method\":\"GET\",\"path\":\"/\"},\"status\":200,\"start_us\":18446744073709551615,\"duration_us\":18446744073709551615,\"response\":{\"n\":1e308}}]}\n";
    let (records, errors) = trace::read(format!("{deep}{huge_numbers}").as_bytes()).unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].line, 1);
    assert_eq!(records.len(), 1);
    exercise(huge_numbers.as_bytes());
}
