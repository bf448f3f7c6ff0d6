//! The trace suite, replayed through the online model: every class that
//! content decides is speculated with the precision and recall issue 14
//! asks of the best model.

use augur_predictor::eval::evaluate;
use augur_predictor::suite::{Class, generate};
use augur_predictor::{Learner, Settings};

use super::online;

#[test]
fn content_decided_classes_are_speculated_precisely() {
    let mut failures = Vec::new();
    for class in Class::ALL {
        let contexts = generate(class, 600, 1);
        let mut learner = Learner::new(Settings::default());
        let r = evaluate(&mut learner, "online", &contexts, &online());
        println!(
            "{:12} top1 {:.3} precision {:.3} recall {:.3} hidden {:.3} spec {} predict p50 {:.1}us",
            class.name(),
            r.next_call_top1,
            r.speculation_precision,
            r.speculation_recall,
            r.hidden_latency_fraction,
            r.speculations,
            r.predict_us_p50
        );
        if class.content_decided() && (r.speculation_precision < 0.97 || r.speculation_recall < 0.8)
        {
            failures.push(format!(
                "{}: precision {:.3}, recall {:.3}",
                class.name(),
                r.speculation_precision,
                r.speculation_recall
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
