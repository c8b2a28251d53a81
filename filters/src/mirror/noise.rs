//! The noise baseline: with a second instance of the primary configured (`baseline:`), each
//! copy also goes to it, and primary-vs-baseline differences measure the noise (fields that
//! differ between two healthy instances of the same code: hostnames, nonces, cache ages). A
//! candidate difference then counts only when it is above that noise: it is noise when the
//! same field also differed from the baseline on the same request, or when the field's
//! candidate difference rate is not more than `margin` above its noise rate on the route.
//! A field never seen differing from the baseline is never noise. Rates are per route and per
//! field (indexes generalised), kept across reloads with the report, and start over with `DELETE /shadow/report`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde_json::{json, Value};

use super::compare::{generalise, Difference};

/// Fields followed per route; differences on others are never taken for noise.
const MAX_FIELDS: usize = 500;

#[derive(Default)]
struct FieldRates {
    /// Requests where the candidate differed on this field.
    candidate: u64,
    /// Requests where the baseline differed on this field.
    noise: u64,
}

#[derive(Default)]
struct RouteNoise {
    /// Requests both the candidate and the baseline answered.
    compared: u64,
    baseline_ok: u64,
    baseline_error: u64,
    baseline_timeout: u64,
    fields: HashMap<String, FieldRates>,
}

/// The learned noise of every route (a part of the mirror's `Report`, shared like it).
#[derive(Default)]
pub struct Noise {
    routes: Mutex<BTreeMap<String, RouteNoise>>,
}

impl Noise {
    /// A baseline request's outcome: `ok`, `error` or `timeout`.
    pub fn record_baseline(&self, route: &str, status: &str) {
        let mut all = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = all.entry(route.to_string()).or_default();
        match status {
            "ok" => r.baseline_ok += 1,
            "error" => r.baseline_error += 1,
            _ => r.baseline_timeout += 1,
        }
    }

    /// The candidate's differences split into (real, noise). `baseline` is the primary-vs-baseline
    /// differences of the same request, `None` when the baseline was not asked or did not answer
    /// (then only the rates learned so far decide, and nothing is learned).
    pub fn separate(
        &self,
        route: &str,
        candidate: Vec<Difference>,
        baseline: Option<&[Difference]>,
        margin: f64,
    ) -> (Vec<Difference>, Vec<Difference>) {
        let mut all = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = all.entry(route.to_string()).or_default();
        let noisy_now: HashSet<String> = baseline
            .unwrap_or_default()
            .iter()
            .map(|d| generalise(&d.field))
            .collect();
        if baseline.is_some() {
            r.compared += 1;
            let differing: HashSet<String> =
                candidate.iter().map(|d| generalise(&d.field)).collect();
            for (field, from_candidate) in differing
                .iter()
                .map(|f| (f, true))
                .chain(noisy_now.iter().map(|f| (f, false)))
            {
                let known = r.fields.len() < MAX_FIELDS || r.fields.contains_key(field);
                if !known {
                    continue;
                }
                let rates = r.fields.entry(field.clone()).or_default();
                if from_candidate {
                    rates.candidate += 1;
                } else {
                    rates.noise += 1;
                }
            }
        }
        let compared = r.compared.max(1) as f64;
        candidate.into_iter().partition(|d| {
            let field = generalise(&d.field);
            if noisy_now.contains(&field) {
                return false;
            }
            match r.fields.get(&field) {
                Some(rates) if rates.noise > 0 => {
                    let excess = (rates.candidate as f64 - rates.noise as f64) / compared;
                    excess > margin
                }
                _ => true,
            }
        })
    }

    /// Per route: baseline outcomes and the noisy fields with both rates, noisiest first.
    pub fn snapshot(&self) -> BTreeMap<String, Value> {
        let all = self
            .routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.iter()
            .map(|(route, r)| {
                let compared = r.compared.max(1) as f64;
                let mut noisy: Vec<(&String, &FieldRates)> =
                    r.fields.iter().filter(|(_, f)| f.noise > 0).collect();
                noisy.sort_by(|a, b| b.1.noise.cmp(&a.1.noise).then(a.0.cmp(b.0)));
                let fields: Vec<Value> = noisy
                    .iter()
                    .take(10)
                    .map(|(field, f)| {
                        json!({
                            "field": field,
                            "noise_rate": f.noise as f64 / compared,
                            "candidate_rate": f.candidate as f64 / compared,
                        })
                    })
                    .collect();
                (
                    route.clone(),
                    json!({
                        "baseline": {"ok": r.baseline_ok, "error": r.baseline_error,
                            "timeout": r.baseline_timeout},
                        "compared": r.compared,
                        "noisy_fields": fields,
                    }),
                )
            })
            .collect()
    }

    /// Forget everything learned.
    pub fn reset(&self) {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(field: &str) -> Difference {
        Difference {
            field: field.into(),
            primary: "a".into(),
            candidate: "b".into(),
        }
    }

    fn fields(v: &[Difference]) -> Vec<&str> {
        v.iter().map(|d| d.field.as_str()).collect()
    }

    #[test]
    fn noise_of_the_same_request_and_of_the_route_is_set_apart() {
        let noise = Noise::default();
        let route = "noise-unit";
        // The baseline differs on `$.host` every time; the candidate on `$.host` and `$.name`.
        let (real, noisy) = noise.separate(
            route,
            vec![diff("$.host"), diff("$.name")],
            Some(&[diff("$.host")]),
            0.05,
        );
        assert_eq!(
            (fields(&real), fields(&noisy)),
            (vec!["$.name"], vec!["$.host"])
        );
        // Without a baseline answer, the learned rates still say `$.host` is noise.
        let (real, noisy) = noise.separate(route, vec![diff("$.host"), diff("$.name")], None, 0.05);
        assert_eq!(
            (fields(&real), fields(&noisy)),
            (vec!["$.name"], vec!["$.host"])
        );
        // Indexes are generalised: `$.items[3].etag` is noisy when `$.items[0].etag` was.
        noise.separate(route, vec![], Some(&[diff("$.items[0].etag")]), 0.05);
        let (real, _) = noise.separate(route, vec![diff("$.items[3].etag")], None, 0.05);
        assert!(real.is_empty());
    }

    #[test]
    fn a_field_differing_far_more_often_than_its_noise_is_real() {
        let noise = Noise::default();
        let route = "noise-unit-rates";
        // `$.count` differs from the baseline once in ten requests…
        for i in 0..10 {
            let baseline: Vec<Difference> = if i == 0 {
                vec![diff("$.count")]
            } else {
                vec![]
            };
            noise.separate(route, vec![diff("$.count")], Some(&baseline), 0.05);
        }
        // …and from the candidate every time: 100% is far above 10%.
        let (real, _) = noise.separate(route, vec![diff("$.count")], Some(&[]), 0.05);
        assert_eq!(fields(&real), vec!["$.count"]);
        // A field the baseline never differed on is real however rare.
        let (real, _) = noise.separate(route, vec![diff("$.other")], Some(&[]), 0.5);
        assert_eq!(fields(&real), vec!["$.other"]);
    }
}
