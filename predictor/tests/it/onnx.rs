//! The ONNX sequence model through real ONNX Runtime: the same numbers as
//! Python's ONNX Runtime, clear errors for bad model files, and predictions
//! on the demo traces.

use std::path::{Path, PathBuf};

use augur_predictor::eval::{EvalSettings, evaluate};
use augur_predictor::onnx::{ModelError, OnnxModel};
use augur_predictor::{Learner, Settings, trace};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// ONNX Runtime: `ORT_DYLIB_PATH`, else the copy `scripts/setup` fetches.
fn runtime() {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache/onnxruntime/libonnxruntime.so.1.32.0"));
    assert!(
        path.is_file(),
        "no ONNX Runtime at {}: run scripts/setup",
        path.display()
    );
    augur_predictor::onnx::use_runtime(&path);
}

/// The committed models, trained by `predictor/train/train.py`: the LSTM
/// and the Transformer on the demo traces (the call history only), and on
/// the suite's `combined` class (`augur suite --contexts 600`, the first
/// half), each reading fields of the context beside the history.
const MODELS: [&str; 4] = [
    "demo",
    "demo-transformer",
    "combined-lstm",
    "combined-transformer",
];

fn demo_model(name: &str) -> OnnxModel {
    runtime();
    OnnxModel::load(&root().join(format!("predictor/models/{name}.onnx"))).unwrap()
}

#[test]
fn rust_and_python_onnx_runtime_agree_to_1e5() {
    for name in MODELS {
        agrees_with_python(name);
    }
}

fn agrees_with_python(name: &str) {
    let model = demo_model(name);
    let check: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join(format!("predictor/models/{name}.check.json"))).unwrap(),
    )
    .unwrap();
    let tokens = check["tokens"].as_array().unwrap();
    assert!(tokens.len() >= 10);
    for (i, window) in tokens.iter().enumerate() {
        let window: Vec<i64> = window
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect();
        // A model that reads fields of the context has them beside each window.
        let features: Vec<f32> = check["features"][i]
            .as_array()
            .map(|f| f.iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .unwrap_or_default();
        assert_eq!(features.len(), model.inputs().len(), "{name}");
        let (probs, log_latency) = model.run(&window, &features).unwrap();
        let expected: Vec<f64> = check["probs"][i]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), expected.len());
        for (got, want) in probs.iter().zip(&expected) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-5,
                "{name} window {i}: {got} vs {want}"
            );
        }
        let want = check["log_latency"][i][0].as_f64().unwrap();
        assert!(
            (f64::from(log_latency) - want).abs() <= 1e-5,
            "{name} window {i}: {log_latency} vs {want}"
        );
    }
}

#[test]
fn bad_model_files_are_clear_errors() {
    runtime();
    let fixtures = root().join("predictor/tests/fixtures");
    type IsKind = fn(&ModelError) -> bool;
    let cases: [(&str, IsKind, &str); 5] = [
        (
            "missing.onnx",
            |e| matches!(e, ModelError::Read { .. }),
            "cannot read model",
        ),
        (
            "corrupt.onnx",
            |e| matches!(e, ModelError::Invalid { .. }),
            "is not a valid ONNX model",
        ),
        (
            "no-vocab.onnx",
            |e| matches!(e, ModelError::Invalid { .. }),
            "no augur.vocab",
        ),
        (
            "wrong-vocab.onnx",
            |e| matches!(e, ModelError::Shape { .. }),
            "wrong shape",
        ),
        (
            "features-without-input.onnx",
            |e| matches!(e, ModelError::Shape { .. }),
            "augur.features lists 1 fields but it has no input named \"features\"",
        ),
    ];
    for (file, kind, text) in cases {
        let err = OnnxModel::load(&fixtures.join(file)).expect_err(file);
        assert!(kind(&err), "{file}: {err:?}");
        assert!(err.to_string().contains(text), "{file}: {err}");
        assert!(err.to_string().contains(file), "{file}: {err}");
    }
}

#[test]
fn the_onnx_models_predict_the_demo_traces() {
    for name in &MODELS[..2] {
        predicts_the_demo_traces(name);
    }
}

fn predicts_the_demo_traces(name: &str) {
    let model = demo_model(name);
    let (records, errors) = trace::read_path(&root().join("loadtests/traces/demo.jsonl")).unwrap();
    assert!(errors.is_empty());
    let contexts: Vec<_> = records.into_iter().map(|r| r.context).collect();
    let mut learner = Learner::with_model(Settings::default(), Box::new(model));
    let settings = EvalSettings {
        confidence: 0.8,
        horizon_us: 200_000,
        learn_online: false,
        train: contexts.len() / 2,
    };
    let report = evaluate(&mut learner, "onnx", &contexts, &settings);
    assert_eq!(
        report.measured_contexts,
        contexts.len() - contexts.len() / 2
    );
    assert!(report.next_call_top1 > 0.99, "{name}: {report:#?}");
    assert!(report.speculation_precision > 0.99, "{name}: {report:#?}");
    assert!(report.speculation_recall > 0.99, "{name}: {report:#?}");
}

/// A call made when two responses together say so (premium and a cart
/// not empty): the online model and the gates, which test one field at a
/// time, leave it to chance; a network that reads both fields speculates it.
#[test]
fn networks_reading_fields_speculate_a_call_two_responses_decide() {
    use augur_predictor::suite::{Class, generate};
    let contexts = generate(Class::Combined, 600, 1);
    let train = contexts.len() / 2;
    let replay = |learner: &mut Learner, model: &str, learn_online: bool| {
        let settings = EvalSettings {
            confidence: 0.8,
            horizon_us: 200_000,
            learn_online,
            train,
        };
        evaluate(learner, model, &contexts, &settings)
    };
    let online = replay(&mut Learner::new(Settings::default()), "online", true);
    for name in ["combined-lstm", "combined-transformer"] {
        let model = demo_model(name);
        let fields = format!("{:?}", model.inputs());
        assert!(
            fields.contains("premium") && fields.contains("/items"),
            "{name}: {fields}"
        );
        let mut learner = Learner::with_model(Settings::default(), Box::new(model));
        let network = replay(&mut learner, name, false);
        assert!(
            network.speculation_precision >= 0.97,
            "{name}: {network:#?}"
        );
        assert!(
            network.speculation_recall >= online.speculation_recall + 0.05,
            "{name} against online: {network:#?} {online:#?}"
        );
        assert!(network.next_call_top1 >= online.next_call_top1 + 0.05);
    }
}
