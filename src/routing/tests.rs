use tokio::time::Instant;

use super::*;

fn healthy(weight: f64) -> Inputs {
    Inputs {
        weight,
        health: 1.0,
        latency_ms: Some(1.0),
        in_flight: 0,
        admission: Admission::Pass,
        ramp: 1.0,
        local: None,
        posterior: Posterior::prior(weight),
        latency_age_s: 0.0,
    }
}

/// First-choice counts over `n` seeded picks of the score policy.
fn shares(candidates: &[Inputs], explore: f64, n: usize) -> Vec<f64> {
    let router = Router::new(RoutingSettings {
        policy: PolicyKind::Score,
        explore,
        seed: Some(7),
        ..Default::default()
    });
    let mut counts = vec![0usize; candidates.len()];
    for _ in 0..n {
        counts[router.plan(candidates, None).order[0]] += 1;
    }
    counts.iter().map(|&c| c as f64 / n as f64).collect()
}

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

#[test]
fn local_evidence_outweighs_the_peers() {
    // Nothing seen here: the peers' verdict (0 of 20) stands.
    assert!(folded_health(0.0, 0.0, 0.0, 20.0) < 0.1);
    // Half the evidence needed: half the weight.
    let h = folded_health(5.0, 5.0, 0.0, 20.0);
    assert!((0.3..0.4).contains(&h), "{h}");
    // Enough of its own: the local view alone.
    assert_eq!(folded_health(10.0, 10.0, 0.0, 20.0), 1.0);
}

#[test]
fn equal_agents_split_the_traffic() {
    let s = shares(&[healthy(0.7), healthy(0.7)], 0.05, 10_000);
    assert!((0.45..=0.55).contains(&s[0]), "{s:?}");
}

#[test]
fn a_clearly_better_agent_takes_most_and_a_near_equal_one_shares() {
    let s = shares(&[healthy(1.0), healthy(0.5)], 0.0, 10_000);
    assert!(s[0] > 0.9, "{s:?}");
    let s = shares(&[healthy(1.0), healthy(0.9)], 0.0, 10_000);
    assert!((0.3..0.5).contains(&s[1]), "{s:?}");
}

#[test]
fn the_exploration_floor_holds_over_ten_thousand_picks() {
    // A candidate whose score is a thousandth of the best still gets its floor.
    let mut weak = healthy(1.0);
    weak.health = 0.03;
    let s = shares(&[healthy(1.0), weak, healthy(0.001)], 0.06, 10_000);
    for share in &s[1..] {
        assert!(*share >= 0.015, "{s:?}");
    }
    assert!(s[0] > 0.9, "{s:?}");
    // With the floor off, the weak ones vanish.
    let s = shares(&[healthy(1.0), weak, healthy(0.001)], 0.0, 10_000);
    assert!(s[1] + s[2] < 0.001, "{s:?}");
}

#[test]
fn a_sick_agent_loses_its_first_pick_even_with_the_higher_weight() {
    let t0 = Instant::now();
    let mut sig = Signals::new(t0, true);
    // 40 % failures at 50 calls/s for 5 s.
    for i in 0..250u64 {
        sig.observe(at(t0, i * 20), i % 5 < 2, Duration::from_millis(1));
    }
    let now = at(t0, 5_000);
    let h = sig.health(now);
    assert!((0.55..0.65).contains(&h), "health {h}");
    let sick = Inputs {
        health: h,
        ..healthy(1.0)
    };
    let s = shares(&[sick, healthy(0.9)], 0.05, 10_000);
    assert!(s[0] < 0.1, "{s:?}");
}

#[test]
fn health_means_the_same_at_one_and_a_thousand_calls_per_second() {
    let t0 = Instant::now();
    let (mut slow, mut fast) = (Signals::new(t0, true), Signals::new(t0, true));
    for i in 0..60u64 {
        slow.observe(at(t0, i * 1_000), i % 4 == 0, Duration::ZERO);
    }
    for i in 0..60_000u64 {
        fast.observe(at(t0, i), i % 4 == 0, Duration::ZERO);
    }
    let now = at(t0, 60_000);
    let (hs, hf) = (slow.health(now), fast.health(now));
    assert!((hf - 0.75).abs() < 0.01, "{hf}");
    // At 1/s the window holds about five calls, and the prior's one success shows.
    assert!((hs - hf).abs() < 0.12, "1/s {hs} vs 1000/s {hf}");
}

#[test]
fn health_recovers_with_time_and_one_failure_is_not_a_verdict() {
    let t0 = Instant::now();
    let mut sig = Signals::new(t0, true);
    sig.observe(t0, true, Duration::ZERO);
    assert_eq!(sig.health(t0), 0.5);
    for i in 0..100u64 {
        sig.observe(at(t0, i * 10), true, Duration::ZERO);
    }
    assert!(sig.health(at(t0, 1_000)) < 0.05);
    assert!(
        sig.health(at(t0, 30_000)) > 0.7,
        "mostly forgotten after 6 τ"
    );
    assert!(sig.health(at(t0, 60_000)) > 0.99, "forgotten after 12 τ");
}

#[test]
fn a_fast_failure_does_not_make_an_agent_look_fast() {
    let t0 = Instant::now();
    let mut sig = Signals::new(t0, true);
    sig.observe(t0, false, Duration::from_millis(300));
    for i in 1..50u64 {
        sig.observe(at(t0, i * 10), true, Duration::from_micros(50));
    }
    assert_eq!(sig.latency_ms(), Some(300.0));
}

#[test]
fn a_slow_or_loaded_agent_loses_to_a_fast_one() {
    let slow = Inputs {
        latency_ms: Some(300.0),
        in_flight: 1,
        ..healthy(1.0)
    };
    let s = shares(&[slow, healthy(0.9)], 0.05, 10_000);
    assert!(s[0] < 0.05, "{s:?}");
    let busy = Inputs {
        latency_ms: Some(20.0),
        in_flight: 20,
        ..healthy(1.0)
    };
    assert!(busy.score() < 0.2 * healthy(1.0).score());
}

#[test]
fn slow_start_ramps_the_share_of_a_returning_agent() {
    let t0 = Instant::now();
    let mut sig = Signals::new(t0, true);
    let window = Duration::from_secs(10);
    assert!((sig.ramp(t0, window) - 0.1).abs() < 1e-9);
    assert!((sig.ramp(at(t0, 5_000), window) - 0.55).abs() < 1e-9);
    assert_eq!(sig.ramp(at(t0, 10_000), window), 1.0);
    sig.restart_ramp(at(t0, 20_000));
    assert!((sig.ramp(at(t0, 20_000), window) - 0.1).abs() < 1e-9);
    assert_eq!(sig.ramp(t0, Duration::ZERO), 1.0);
    assert_eq!(
        Signals::new(t0, false).ramp(t0, window),
        1.0,
        "known at start-up"
    );

    let mut shares_over_time = Vec::new();
    for ramp in [0.1, 0.55, 1.0] {
        let returning = Inputs {
            ramp,
            ..healthy(1.0)
        };
        shares_over_time.push(shares(&[returning, healthy(1.0)], 0.0, 10_000)[0]);
    }
    assert!(shares_over_time[0] < 0.12, "{shares_over_time:?}");
    assert!(shares_over_time[0] < shares_over_time[1]);
    assert!(shares_over_time[1] < shares_over_time[2]);
    assert!((0.45..0.55).contains(&shares_over_time[2]));
    let plan = plan(
        &[
            Inputs {
                ramp: 0.5,
                ..healthy(1.0)
            },
            healthy(0.0),
        ],
        0.0,
        Draws {
            explore: 1.0,
            pick: 0.0,
        },
    );
    assert_eq!(plan.reason, Reason::SlowStart);
}

#[test]
fn an_open_breaker_is_never_first_and_a_probe_is() {
    let open = Inputs {
        admission: Admission::Refused,
        ..healthy(1.0)
    };
    for e in [0.0, 0.5] {
        let s = shares(&[open, healthy(0.1)], e, 2_000);
        assert_eq!(s[0], 0.0);
    }
    let p = plan(
        &[open, healthy(0.1)],
        0.05,
        Draws {
            explore: 0.9,
            pick: 0.1,
        },
    );
    assert_eq!(p.order, vec![1, 0], "the open one is tried last");
    let probe = Inputs {
        admission: Admission::Probe,
        ..healthy(0.2)
    };
    let p = plan(
        &[healthy(1.0), probe],
        0.05,
        Draws {
            explore: 0.9,
            pick: 0.1,
        },
    );
    assert_eq!((p.order.clone(), p.reason), (vec![1, 0], Reason::Probe));
    let p = plan(
        &[open, open],
        0.05,
        Draws {
            explore: 0.0,
            pick: 0.0,
        },
    );
    assert_eq!(p.order, vec![0, 1]);
}

#[test]
fn failover_follows_the_score_and_a_seed_pins_every_choice() {
    let c = [healthy(0.3), healthy(0.9), healthy(0.6)];
    let p = plan(
        &c,
        0.0,
        Draws {
            explore: 1.0,
            pick: 0.0,
        },
    );
    assert_eq!((p.order, p.reason), (vec![1, 2, 0], Reason::BestScore));
    let run = || {
        let r = Router::new(RoutingSettings {
            seed: Some(42),
            ..Default::default()
        });
        (0..100).map(|_| r.plan(&c, None).order).collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
    let sticky = Router::new(RoutingSettings::default());
    let draws = || Some(Draws::of_task("lamp", "define", &serde_json::json!({})));
    let first = sticky.plan(&c, draws()).order;
    for _ in 0..20 {
        assert_eq!(sticky.plan(&c, draws()).order, first);
    }
}

#[test]
fn a_tasks_draws_are_those_of_its_key_text() {
    // The draws of a cacheable task are those its key text drew when the key was built as
    // text: the same agent keeps the same tasks across the change (and across replicas).
    for (concept, intent, args) in [
        ("lamp", "define", serde_json::json!({})),
        ("", "", serde_json::Value::Null),
        (
            "café \u{0}",
            "x\"y",
            serde_json::json!({"b": [1, 2.5, "é\n"], "a": {"z": null, "\u{1}": true}}),
        ),
    ] {
        let text = format!("{concept}\u{0}{intent}\u{0}{args}");
        let (of_task, from_key) = (
            Draws::of_task(concept, intent, &args),
            Draws::from_key(&text),
        );
        assert_eq!(
            (of_task.explore, of_task.pick),
            (from_key.explore, from_key.pick),
            "{text}"
        );
    }
}

#[test]
fn the_weight_policy_keeps_the_graph_order() {
    let r = Router::new(RoutingSettings {
        policy: PolicyKind::Weight,
        ..Default::default()
    });
    let open = Inputs {
        admission: Admission::Refused,
        ..healthy(1.0)
    };
    let p = r.plan(&[open, healthy(0.1)], None);
    assert_eq!((p.order, p.reason), (vec![0, 1], Reason::BestRanked));
}

#[test]
fn this_regions_agents_come_first_at_equal_health_and_the_others_are_the_failover() {
    let here = |health: f64, weight: f64| Inputs {
        health,
        local: Some(true),
        ..healthy(weight)
    };
    let there = |health: f64, weight: f64| Inputs {
        health,
        local: Some(false),
        ..healthy(weight)
    };
    let draws = Draws {
        explore: 0.5,
        pick: 0.5,
    };
    // Local and a little less healthy, lighter, still first on every draw.
    for pick in [0.0, 0.5, 0.99] {
        let p = plan(
            &[there(1.0, 1.0), here(0.95, 0.5)],
            0.0,
            Draws { explore: 0.5, pick },
        );
        assert_eq!((p.order, p.reason), (vec![1, 0], Reason::LocalRegion));
    }
    // Local but clearly sicker: the other region serves.
    let p = plan(&[there(1.0, 1.0), here(0.6, 1.0)], 0.0, draws);
    assert_eq!((p.order[0], p.reason), (0, Reason::RegionFailover));
    // Local breaker open: the other region serves; the local one is tried last.
    let open = Inputs {
        admission: Admission::Refused,
        ..here(1.0, 1.0)
    };
    let p = plan(&[open, there(1.0, 0.2)], 0.0, draws);
    assert_eq!((p.order, p.reason), (vec![1, 0], Reason::RegionFailover));
    // Exploration stays inside the region.
    let p = plan(
        &[there(1.0, 1.0), here(1.0, 1.0), here(1.0, 1.0)],
        1.0,
        Draws {
            explore: 0.0,
            pick: 0.0,
        },
    );
    assert_eq!((p.order[0], p.reason), (1, Reason::Explore));
    assert_eq!(p.order[2], 0, "elsewhere comes after the region");
    // Without REGION nothing changes.
    let p = plan(&[healthy(1.0), healthy(0.5)], 0.0, draws);
    assert_eq!((p.order, p.reason), (vec![0, 1], Reason::BestScore));
    assert_eq!(rank(&[there(1.0, 1.0), here(0.95, 0.5)]), vec![1, 0]);
}

#[test]
fn share_counts_first_picks_over_the_window() {
    let t0 = Instant::now();
    let mut sig = Signals::new(t0, true);
    assert_eq!(sig.share(t0), None);
    for i in 0..10u64 {
        sig.offered(at(t0, i * 100), i % 2 == 0);
    }
    assert_eq!(sig.share(at(t0, 1_000)), Some(0.5));
    assert_eq!(
        sig.share(at(t0, 15_000)),
        Some(0.5),
        "previous bucket still counts"
    );
    assert_eq!(
        sig.share(at(t0, 25_000)),
        None,
        "forgotten after two windows"
    );
}
