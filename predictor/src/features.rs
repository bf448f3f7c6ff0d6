//! Features for a network: the gates' candidate fields (see [`gate`]),
//! narrowed to a short fixed list chosen from training data, each read
//! from a live context as one number. `augur export-sequences` chooses the
//! list and writes each step's numbers for `predictor/train/train.py`; the
//! list travels in the ONNX model's metadata (`augur.features`), and the
//! runtime reads the same numbers from a live context with [`encode`], the
//! function that wrote the training data.
//!
//! Fields name shapes by their index in the model's vocabulary, not by a
//! learner's shape ids, which mean nothing outside one process.
//!
//! [`gate`]: crate::gate

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::gate::Feature;
use crate::provenance::{Available, Source};
use crate::secret;
use crate::shapes::ShapeId;

/// A field of a context, with shapes named by vocabulary index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    InboundPath(usize),
    InboundQuery(String),
    InboundHeader(String),
    InboundBody(String),
    Response {
        shape: usize,
        occurrence: u32,
        pointer: String,
    },
    Status {
        shape: usize,
        occurrence: u32,
    },
    Length {
        shape: usize,
        occurrence: u32,
        pointer: String,
    },
    Any {
        shape: usize,
        occurrence: u32,
        array: String,
        key: String,
        value: String,
    },
}

impl Field {
    /// The field of a gate's feature, naming its shape by `index`; `None`
    /// for what a network does not take (computed sources, unknown shapes).
    pub fn of(feature: &Feature, index: impl Fn(ShapeId) -> Option<usize>) -> Option<Field> {
        Some(match feature.clone() {
            Feature::Value(Source::InboundPath(i)) => Field::InboundPath(i),
            Feature::Value(Source::InboundQuery(k)) => Field::InboundQuery(k),
            Feature::Value(Source::InboundHeader(h)) => Field::InboundHeader(h),
            Feature::Value(Source::InboundBody(p)) => Field::InboundBody(p),
            Feature::Value(Source::Response {
                shape,
                occurrence,
                pointer,
                join: None,
            }) => Field::Response {
                shape: index(shape)?,
                occurrence,
                pointer,
            },
            Feature::Value(_) => return None,
            Feature::Status { shape, occurrence } => Field::Status {
                shape: index(shape)?,
                occurrence,
            },
            Feature::Length {
                shape,
                occurrence,
                pointer,
            } => Field::Length {
                shape: index(shape)?,
                occurrence,
                pointer,
            },
            Feature::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            } => Field::Any {
                shape: index(shape)?,
                occurrence,
                array,
                key,
                value,
            },
        })
    }

    /// The gate's feature this field names, with `id` giving the shape id
    /// of a vocabulary index; `None` while that shape has no id.
    pub fn feature(&self, id: impl Fn(usize) -> Option<ShapeId>) -> Option<Feature> {
        Some(match self.clone() {
            Field::InboundPath(i) => Feature::Value(Source::InboundPath(i)),
            Field::InboundQuery(k) => Feature::Value(Source::InboundQuery(k)),
            Field::InboundHeader(h) => Feature::Value(Source::InboundHeader(h)),
            Field::InboundBody(p) => Feature::Value(Source::InboundBody(p)),
            Field::Response {
                shape,
                occurrence,
                pointer,
            } => Feature::Value(Source::Response {
                shape: id(shape)?,
                occurrence,
                pointer,
                join: None,
            }),
            Field::Status { shape, occurrence } => Feature::Status {
                shape: id(shape)?,
                occurrence,
            },
            Field::Length {
                shape,
                occurrence,
                pointer,
            } => Feature::Length {
                shape: id(shape)?,
                occurrence,
                pointer,
            },
            Field::Any {
                shape,
                occurrence,
                array,
                key,
                value,
            } => Feature::Any {
                shape: id(shape)?,
                occurrence,
                array,
                key,
                value,
            },
        })
    }
}

/// How a field becomes a number: each is 1 or 0, so that the few
/// combinations a route's contexts take keep the model's distributions
/// cached (a raw number would make every context new).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Test {
    /// 1 when the field has this value.
    Equals(String),
    /// 1 when the field is a number above this one.
    Above(f64),
    /// 1 when the field has a value.
    Known,
}

/// One input of a network: a field and how it is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub field: Field,
    pub test: Test,
}

impl Test {
    /// The number for a field's value (`None`: unknown or absent).
    pub fn read(&self, value: Option<&str>) -> f32 {
        match (self, value) {
            (Test::Equals(want), Some(v)) => f32::from(u8::from(v == want)),
            (Test::Above(t), Some(v)) => {
                f32::from(u8::from(v.parse::<f64>().is_ok_and(|x| x > *t)))
            }
            (Test::Known, Some(_)) => 1.0,
            (_, None) => 0.0,
        }
    }
}

/// The numbers of `inputs` in `given`; an input whose feature is `None`
/// (its shape has no id yet) reads as unknown.
pub fn encode(inputs: &[(Option<Feature>, Test)], given: &Available<'_>) -> Vec<f32> {
    inputs
        .iter()
        .map(|(feature, test)| {
            let value = feature.as_ref().and_then(|f| f.read(given)).flatten();
            test.read(value.as_deref())
        })
        .collect()
}

/// One step of the training data: what was known, and what came next.
#[derive(Debug)]
pub struct Step {
    /// The history the step follows, as a small number (the route and the
    /// last call): a field's worth is what it adds beyond that.
    pub group: u32,
    /// What came next (a shape index, or one past the last for the end).
    pub label: u32,
    pub values: Vec<(Field, Option<String>)>,
}

/// Values longer than this are not tested for equality.
const MAX_VALUE: usize = 32;
/// A field with more distinct values than this is not tested for
/// equality (a number among many is read by a threshold instead).
const MAX_VALUES: usize = 16;
/// Thresholds tried per numeric field at most (every value, if fewer).
const THRESHOLDS: usize = 128;
/// Bits a test must add about the next call, beyond the history, to be
/// an input.
const MIN_GAIN: f64 = 0.005;

/// The `k` inputs that tell most about what comes next beyond the route
/// and the last call (information gain over the steps): equality tests of
/// few-valued fields; for numeric fields, whether they are known, and their
/// best threshold where the value tells more than its presence. Credential
/// hashes, long values and tests true or false almost everywhere are left
/// out.
pub fn select(steps: &[Step], k: usize) -> Vec<Input> {
    if k == 0 || steps.is_empty() {
        return Vec::new();
    }
    let n = steps.len();
    let min_support = (n / 100).max(5);
    // Which steps each (field, value) holds in, and each field's numbers.
    let mut equals: HashMap<(&Field, &str), Vec<usize>> = HashMap::new();
    let mut numbers: HashMap<&Field, Vec<(usize, f64)>> = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        for (field, value) in &step.values {
            let Some(v) = value else { continue };
            if v.starts_with(secret::PREFIX) {
                continue;
            }
            if v.len() <= MAX_VALUE {
                equals.entry((field, v.as_str())).or_default().push(i);
            }
            if let Ok(x) = v.parse::<f64>() {
                if x.is_finite() {
                    numbers.entry(field).or_default().push((i, x));
                }
            }
        }
    }
    let mut distinct_values: HashMap<&Field, usize> = HashMap::new();
    for (field, _) in equals.keys() {
        *distinct_values.entry(field).or_default() += 1;
    }
    let base = Counts::of(steps, |_| false).entropy();
    let gain = |holds: &dyn Fn(usize) -> bool| base - Counts::of(steps, holds).entropy();
    let mut scored: Vec<(f64, Input)> = Vec::new();
    for ((field, value), at) in &equals {
        if at.len() < min_support
            || at.len() + min_support > n
            || distinct_values[field] > MAX_VALUES
        {
            continue;
        }
        let g = gain(&|i| at.binary_search(&i).is_ok());
        scored.push((
            g,
            Input {
                field: (*field).clone(),
                test: Test::Equals((*value).to_string()),
            },
        ));
    }
    for (field, values) in &numbers {
        let mut distinct: Vec<f64> = values.iter().map(|(_, x)| *x).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        // Few values are equality tests already.
        if distinct.len() < 3 || values.len() < min_support {
            continue;
        }
        let by_step: HashMap<usize, f64> = values.iter().copied().collect();
        let known = gain(&|i| by_step.contains_key(&i));
        let tried = THRESHOLDS.min(distinct.len() - 1);
        let (t, best) = (0..tried)
            .map(|q| distinct[q * (distinct.len() - 1) / tried])
            .map(|t| (t, gain(&|i| by_step.get(&i).is_some_and(|x| *x > t))))
            .fold((f64::NAN, 0.0), |a, b| if b.1 > a.1 { b } else { a });
        let field = (*field).clone();
        if best > known + MIN_GAIN {
            let test = Test::Above(t);
            let input = Input {
                field: field.clone(),
                test,
            };
            scored.push((best, input));
        }
        scored.push((
            known,
            Input {
                field,
                test: Test::Known,
            },
        ));
    }
    // Highest gain first; ties in a stable order.
    scored.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| format!("{:?}", a.1).cmp(&format!("{:?}", b.1)))
    });
    scored
        .into_iter()
        .filter(|(g, _)| *g >= MIN_GAIN)
        .take(k)
        .map(|(_, input)| input)
        .collect()
}

/// Counts of next calls by (group, whether a test held), for the
/// conditional entropy of the next call.
struct Counts(HashMap<(u32, bool), HashMap<u32, u32>>);

impl Counts {
    fn of(steps: &[Step], holds: impl Fn(usize) -> bool) -> Self {
        let mut counts: HashMap<(u32, bool), HashMap<u32, u32>> = HashMap::new();
        for (i, step) in steps.iter().enumerate() {
            *counts
                .entry((step.group, holds(i)))
                .or_default()
                .entry(step.label)
                .or_default() += 1;
        }
        Self(counts)
    }

    /// H(next | group, test), in bits.
    fn entropy(&self) -> f64 {
        let all: u32 = self.0.values().flat_map(|c| c.values()).sum();
        let mut h = 0.0;
        for labels in self.0.values() {
            let n: u32 = labels.values().sum();
            for &c in labels.values() {
                let p = f64::from(c) / f64::from(n);
                h -= f64::from(n) / f64::from(all) * p * p.log2();
            }
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(name: &str) -> Field {
        Field::InboundQuery(name.to_string())
    }

    /// Steps after one call, the next call made when `a` and `b` are both
    /// set (label 1) and not otherwise (label 0); `noise` decides nothing.
    fn conjunction(n: u32) -> Vec<Step> {
        (0..n)
            .map(|i| {
                let (a, b, noise) = (i % 2 == 0, i % 3 == 0, i % 5 == 0);
                Step {
                    group: 0,
                    label: u32::from(a && b),
                    values: vec![
                        (flag("a"), Some(a.to_string())),
                        (flag("b"), Some(b.to_string())),
                        (flag("noise"), Some(noise.to_string())),
                        (flag("id"), Some(i.to_string())),
                    ],
                }
            })
            .collect()
    }

    #[test]
    fn the_fields_that_decide_are_chosen_and_the_rest_left_out() {
        let inputs = select(&conjunction(600), 32);
        let fields: Vec<&Field> = inputs.iter().map(|i| &i.field).collect();
        assert!(fields.contains(&&flag("a")), "{inputs:?}");
        assert!(fields.contains(&&flag("b")), "{inputs:?}");
        assert!(!fields.contains(&&flag("noise")), "{inputs:?}");
        // Each id is seen once: no equality test of it; as a number it
        // tells nothing either.
        assert!(
            !inputs
                .iter()
                .any(|i| i.field == flag("id") && matches!(i.test, Test::Equals(_))),
            "{inputs:?}"
        );
        assert!(select(&conjunction(600), 0).is_empty());
        assert!(select(&[], 4).is_empty());
    }

    #[test]
    fn a_number_is_read_by_the_threshold_that_decides() {
        // The call is made when the score is above 60; scores 0..100.
        let steps: Vec<Step> = (0..500)
            .map(|i| {
                let score = (i * 37) % 100;
                Step {
                    group: 0,
                    label: u32::from(score > 60),
                    values: vec![(flag("score"), Some(score.to_string()))],
                }
            })
            .collect();
        let inputs = select(&steps, 4);
        let above: Vec<f64> = inputs
            .iter()
            .filter_map(|i| match i.test {
                Test::Above(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(above.len(), 1, "{inputs:?}");
        assert!((55.0..=61.0).contains(&above[0]), "{inputs:?}");
    }

    #[test]
    fn what_the_history_already_says_is_not_an_input() {
        // The flag is set exactly when the group says what comes next.
        let steps: Vec<Step> = (0..400)
            .map(|i| Step {
                group: i % 2,
                label: i % 2,
                values: vec![(flag("f"), Some((i % 2 == 0).to_string()))],
            })
            .collect();
        assert!(select(&steps, 8).is_empty());
    }

    #[test]
    fn tests_read_values_as_numbers() {
        assert_eq!(Test::Equals("true".into()).read(Some("true")), 1.0);
        assert_eq!(Test::Equals("true".into()).read(Some("false")), 0.0);
        assert_eq!(Test::Equals("true".into()).read(None), 0.0);
        assert_eq!(Test::Known.read(Some("x")), 1.0);
        assert_eq!(Test::Known.read(None), 0.0);
        assert_eq!(Test::Above(2.5).read(Some("3")), 1.0);
        assert_eq!(Test::Above(2.5).read(Some("-99")), 0.0);
        assert_eq!(Test::Above(2.5).read(Some("abc")), 0.0);
        assert_eq!(Test::Above(2.5).read(Some("NaN")), 0.0);
    }

    #[test]
    fn a_field_names_the_same_feature_across_shape_ids() {
        let feature = Feature::Any {
            shape: 7,
            occurrence: 0,
            array: "/items".into(),
            key: "featured".into(),
            value: "true".into(),
        };
        let field = Field::of(&feature, |id| (id == 7).then_some(2)).unwrap();
        let json = serde_json::to_string(&field).unwrap();
        let back: Field = serde_json::from_str(&json).unwrap();
        assert_eq!(back.feature(|i| (i == 2).then_some(7)), Some(feature));
        assert_eq!(back.feature(|_| None), None);
    }
}
